"""Checkpoints quantized by other tools: refused by name before any work (the message names the
file, the method and the way out; nothing is written to the cache), or read dense end to end
(quantize, save, reload, footprint) when lowbit can dequantize them."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from lowbit.algorithms import RTNConfig
from lowbit.errors import ModelSourceError
from lowbit.formats import IntFormat, PerGroup
from lowbit.models.footprint import footprint
from lowbit.models.foreign import HANDLERS
from lowbit.models.quantize import quantize_model
from lowbit.models.saving import load_quantized, save_quantized
from lowbit.models.sources import resolve_model
from lowbit.plan import LayerSpec, uniform_plan
from tests.helpers.foreign import make_fp8_copy, with_quantization_config

REFUSED = {
    "gptq": ({"quant_method": "gptq", "bits": 4, "group_size": 128}, "GPTQ.*not supported yet"),
    "awq": ({"quant_method": "awq", "bits": 4, "version": "gemm"}, "AWQ.*not supported yet"),
    "bitsandbytes": (
        {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"},
        "bitsandbytes",
    ),
    "hqq": ({"quant_method": "hqq", "nbits": 4}, "lowbit reads only fp8 and compressed-tensors"),
}


def _cache_files() -> list[Path]:
    root = Path(os.environ["LOWBIT_CACHE"])
    return sorted(root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize("method", REFUSED)
def test_other_methods_are_refused_by_name_and_nothing_is_cached(method, tiny_llama, tmp_path):
    qcfg, why = REFUSED[method]
    path = with_quantization_config(tiny_llama, tmp_path / method, qcfg)
    before = _cache_files()
    with pytest.raises(ModelSourceError) as err:
        resolve_model(str(path))
    message = str(err.value)
    assert str(path / "config.json") in message
    assert f"quant_method {method!r}" in message
    assert "give the original (unquantized) checkpoint" in message
    assert re.search(why, message), message
    assert _cache_files() == before


def test_a_bin_only_gptq_checkpoint_is_refused_before_any_conversion(tiny_llama, tmp_path):
    path = tmp_path / "gptq-bin"
    path.mkdir()
    cfg = json.loads((tiny_llama / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "pytorch_model.bin").write_bytes(b"never read")
    before = _cache_files()
    with pytest.raises(ModelSourceError, match="'gptq'.*not supported yet"):
        resolve_model(str(path), allow_pickle=True)
    assert _cache_files() == before


def _rewrite(src: Path, out: Path, change) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, out)
    tensors = load_file(str(out / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(out / "model.safetensors"))
    return out


@pytest.mark.parametrize(
    ("suffix", "value", "match"),
    [
        (".weight", torch.zeros(64, 8, dtype=torch.int32), "stored as I32 .integer-packed"),
        (".weight", torch.zeros(64, 32, dtype=torch.uint8), "stored as U8 .integer-packed"),
        (".qweight", torch.zeros(8, 64, dtype=torch.int32), "packed quantized tensor"),
        (".weight", torch.zeros(64, 64, dtype=torch.float8_e4m3fn), 'F8_E4M3.*"quant_method"'),
    ],
)
def test_quantized_tensors_without_a_config_are_refused_by_name(
    suffix, value, match, tiny_llama, tmp_path
):
    name = "model.layers.0.self_attn.q_proj"

    def change(tensors):
        del tensors[f"{name}.weight"]
        tensors[name + suffix] = value

    bad = _rewrite(tiny_llama, tmp_path / "bad", change)
    with pytest.raises(ModelSourceError, match=rf"{bad}: tensor '{name}{suffix}'.*{match}"):
        resolve_model(str(bad))


def test_the_registry_names_its_methods():
    assert {"fp8", "compressed-tensors", "gptq", "awq", "bitsandbytes"} <= set(HANDLERS.names())


def test_an_fp8_source_quantizes_saves_and_reloads_dense(tiny_llama, tmp_path):
    fp8 = make_fp8_copy(tiny_llama, tmp_path / "fp8", (24, 40))
    handle = resolve_model(str(fp8))
    torch.manual_seed(0)
    ids = torch.randint(0, handle.config.vocab_size, (2, 24))
    plan = uniform_plan(LayerSpec(IntFormat(4), PerGroup(32), RTNConfig()))
    qm = quantize_model(handle, plan, ids)
    out = save_quantized(qm, tmp_path / "q", {})
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    manifest = json.loads((out / "lowbit.json").read_text())
    assert manifest["source"]["dequantized_from"]["quant_method"] == "fp8"
    model, _, _ = load_quantized(out)
    assert all(p.dtype.is_floating_point for p in model.parameters())
    from safetensors import safe_open

    for file in out.glob("rest-*.safetensors"):
        with safe_open(str(file), framework="pt") as reader:
            assert not any(k.endswith("_scale_inv") for k in reader.keys())
    # the original's stored bits count each FP8 weight's scales; a quantized weight's do not
    original, quantized = footprint(handle, None), footprint(handle, qm)
    assert 8 < original.bits_per_weight_linear < 8.2
    assert not any(
        k.endswith("_scale_inv") for k in original.full_precision + quantized.full_precision
    )
    assert quantized.bits_per_weight_linear == pytest.approx(4 + 16 / 32, rel=0.02)
