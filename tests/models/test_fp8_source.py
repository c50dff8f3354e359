"""FP8 checkpoints with block, per-tensor or per-row scales are read as the dense model they
encode: each weight equals an independent per-block dequantization exactly, and the model's
perplexity equals that of a dense model holding those weights."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lowbit import api
from lowbit.errors import ModelSourceError
from lowbit.models.fp8_source import dequantize_fp8
from lowbit.models.sources import resolve_model
from lowbit.runtime import RuntimeConfig, resolve_runtime
from tests.helpers.foreign import (
    fp8_dequantize_loop,
    fp8_quantize,
    is_linear,
    make_dense_twin,
    make_fp8_copy,
)

# [24, 40]: the tiny model's widths (32, 64, 96) leave partial edge blocks in both directions
LAYOUTS = [(24, 40), (16, 16), "tensor", "row"]
CPU32 = resolve_runtime(RuntimeConfig(device="cpu", dtype="float32"))


def _block(layout):
    return layout if isinstance(layout, tuple) else None


@pytest.fixture(scope="module", params=LAYOUTS, ids=str)
def fp8_pair(request, tiny_llama, tmp_path_factory):
    """An FP8 copy of the tiny Llama and the dense model of its reference dequantization."""
    root = tmp_path_factory.mktemp("fp8")
    fp8 = make_fp8_copy(tiny_llama, root / "fp8", request.param)
    return request.param, fp8, make_dense_twin(fp8, root / "dense", request.param)


@pytest.mark.parametrize("shape", [(64, 64), (96, 64), (32, 96), (50, 70), (3, 40, 56)])
@pytest.mark.parametrize("block", [(24, 40), (16, 16), (128, 128)])
def test_dequantization_equals_transformers_and_a_block_loop(shape, block):
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight

    torch.manual_seed(0)
    W = torch.randn(shape)
    parts = [fp8_quantize(w, block) for w in W.reshape(-1, *shape[-2:])]
    q = torch.stack([p[0] for p in parts]).reshape(shape)
    s = torch.stack([p[1] for p in parts]).reshape(*shape[:-2], *parts[0][1].shape)
    ours = dequantize_fp8(q, s, block)
    loop = torch.stack([fp8_dequantize_loop(a, b, block) for a, b in parts])
    assert ours.dtype == torch.float32
    assert torch.equal(ours, loop.reshape(shape))
    assert torch.equal(ours, _dequantize_fp8_weight(q, s, list(block), torch.float32))
    # FP8 keeps 3 mantissa bits: the dequantized weight is within one step of the original
    assert (ours - W).abs().max() <= W.abs().max() / 448 * 32


@pytest.mark.parametrize("layout", ["tensor", "row"])
def test_per_tensor_and_per_row_scales(layout):
    torch.manual_seed(1)
    W = torch.randn(40, 56)
    q, s = fp8_quantize(W, layout)
    assert torch.equal(dequantize_fp8(q, s, None), fp8_dequantize_loop(q, s, layout))
    assert torch.equal(dequantize_fp8(q, s.reshape(-1), None), fp8_dequantize_loop(q, s, layout))


def test_a_scale_of_the_wrong_grid_is_refused():
    q = torch.zeros(50, 70, dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match=r"\(3, 3\).*expected \(4, 4\)"):
        dequantize_fp8(q, torch.ones(3, 3), (16, 20))


def test_weights_read_equal_the_reference_dequantization(fp8_pair):
    layout, fp8, dense = fp8_pair
    handle = resolve_model(str(fp8))
    weights = handle.weights()
    assert not any(k.endswith("_scale_inv") for k in weights.keys())
    assert weights.keys() == resolve_model(str(dense)).weights().keys()
    ours = weights.read(sorted(weights.keys()), torch.device("cpu"))
    want = resolve_model(str(dense)).weights().read(sorted(weights.keys()), torch.device("cpu"))
    assert any(is_linear(k) for k in ours)
    for key, value in ours.items():
        assert torch.equal(value.float(), want[key]), key
    source = handle.describe()["dequantized_from"]
    assert source["quant_method"] == "fp8"
    assert source["weight_block_size"] == (list(layout) if isinstance(layout, tuple) else None)
    assert source["fp8_tensors"] == 2 * 7


def test_the_skeleton_has_plain_linears_in_the_compute_dtype(fp8_pair):
    _, fp8, _ = fp8_pair
    handle = resolve_model(str(fp8))
    assert not hasattr(handle.config, "quantization_config")
    assert "quantization_config" in json.loads((fp8 / "config.json").read_text())
    lazy = handle.lazy(resolve_runtime(RuntimeConfig(device="cpu", dtype="bfloat16")))
    block = lazy.materialize("model.layers.0")
    proj = block.self_attn.q_proj
    assert type(proj) is nn.Linear and proj.weight.dtype == torch.bfloat16


def test_load_model_equals_the_dense_twin(fp8_pair):
    _, fp8, dense = fp8_pair
    ours = resolve_model(str(fp8)).load_model(CPU32)
    want = resolve_model(str(dense)).load_model(CPU32)
    for (n, a), (_, b) in zip(ours.named_parameters(), want.named_parameters(), strict=True):
        assert torch.equal(a, b), n


def test_perplexity_equals_the_dense_twin(fp8_pair):
    _, fp8, dense = fp8_pair
    torch.manual_seed(7)
    ids = torch.randint(0, 320, (3, 40))
    windows = api.Windows(ids, {"fingerprint": "random-3-40", "selection": "test"})
    ours = api.perplexity(api.model_view(resolve_model(str(fp8))), windows, CPU32)
    want = api.perplexity(api.model_view(resolve_model(str(dense))), windows, CPU32)
    assert ours.perplexity == pytest.approx(want.perplexity, rel=1e-6)


def _edit(fp8, tmp_path, change):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    for f in fp8.iterdir():
        if f.suffix != ".safetensors":
            (bad / f.name).write_bytes(f.read_bytes())
    tensors = load_file(str(fp8 / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(bad / "model.safetensors"))
    return bad


def test_a_scale_grid_that_does_not_match_the_config_is_named(tiny_llama, tmp_path):
    fp8 = make_fp8_copy(tiny_llama, tmp_path / "fp8", (24, 40))
    key = "model.layers.1.mlp.up_proj.weight"
    bad = _edit(fp8, tmp_path, lambda t: t.update({key + "_scale_inv": torch.ones(3, 3)}))
    with pytest.raises(ModelSourceError, match=rf"config.json.*{key}.*\(3, 3\).*\(4, 2\)"):
        resolve_model(str(bad))


def test_an_fp8_weight_without_its_scale_is_named(tiny_llama, tmp_path):
    fp8 = make_fp8_copy(tiny_llama, tmp_path / "fp8", (16, 16))
    key = "model.layers.0.self_attn.k_proj.weight"
    bad = _edit(fp8, tmp_path, lambda t: t.pop(key + "_scale_inv"))
    with pytest.raises(ModelSourceError, match=rf"{key}.*F8_E4M3.*no .*_scale_inv"):
        resolve_model(str(bad))


def test_static_activation_scales_are_hidden(fp8_pair, tmp_path):
    _, fp8, dense = fp8_pair
    key = "model.layers.0.mlp.down_proj.activation_scale"
    bad = _edit(fp8, tmp_path, lambda t: t.update({key: torch.tensor([0.5])}))
    weights = resolve_model(str(bad)).weights()
    assert key not in weights.keys()
    assert weights.keys() == resolve_model(str(dense)).weights().keys()
