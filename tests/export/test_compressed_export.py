"""compressed-tensors export of tiny models: loaded by transformers (with compressed-tensors)
or decompressed by the library's own compressors, the weights and logits are the ones lowbit
evaluated; fused layers must share a scheme; plans it cannot hold are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lowbit import api
from lowbit.algorithms import ActOrder, GPTQConfig
from lowbit.errors import ExportError, OutputPathError
from lowbit.models.compressed_source import is_compressed_tensors_dir, load_compressed_tensors
from lowbit.plan import Plan, Rule, uniform_plan
from tests.export.shared import logits_of, mixed_plan, quantized, spec
from tests.helpers.tiny import make_tiny_model


def _export(qm, model, out: Path, **kw):
    return api.export(qm, model, "compressed-tensors", out, **kw)


def _load_transformers(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("family", ["llama", "qwen3", "opt"])
def test_symmetric_export_loads_in_transformers_with_identical_logits(tiny_root, tmp_path, family):
    qm, model, ref = quantized(make_tiny_model(tiny_root, family), uniform_plan(spec(4)))
    report = _export(qm, model, tmp_path / "ct")
    assert report.max_weight_error == 0.0
    assert torch.equal(logits_of(_load_transformers(tmp_path / "ct")), ref)
    assert torch.equal(logits_of(load_compressed_tensors(tmp_path / "ct")), ref)


@pytest.mark.parametrize(
    "plan_spec", [spec(4, sym=False, group=16), spec(8, sym=False, group=None)]
)
def test_asymmetric_export_decompresses_to_identical_logits(tiny_llama, tmp_path, plan_spec):
    """transformers (with compressed-tensors 0.20) cannot load packed asymmetric zero points;
    the library's own decompressor, which lowbit's import uses, reads them exactly."""
    qm, model, ref = quantized(tiny_llama, uniform_plan(plan_spec))
    _export(qm, model, tmp_path / "ct")
    loaded = load_compressed_tensors(tmp_path / "ct")
    for name, qw in qm.weights.items():
        assert torch.equal(loaded.get_submodule(name).weight, qw.dequantize()), name
    assert torch.equal(logits_of(loaded), ref)


def test_mixed_plan_writes_one_config_group_per_scheme(tiny_llama, tmp_path):
    qm, model, ref = quantized(tiny_llama, mixed_plan())
    report = _export(qm, model, tmp_path / "ct")
    qcfg = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert qcfg["quant_method"] == "compressed-tensors" and qcfg["format"] == "pack-quantized"
    groups = {g["weights"]["num_bits"]: g["targets"] for g in qcfg["config_groups"].values()}
    assert sorted(groups) == [4, 8]
    assert "model.layers.1.self_attn.k_proj" in groups[8]
    assert "model.layers.0.mlp.down_proj" in qcfg["ignore"]
    assert report.layers["model.layers.0.mlp.down_proj"] == "kept in full precision"
    assert torch.equal(logits_of(_load_transformers(tmp_path / "ct")), ref)


def test_per_tensor_and_per_channel_schemes(tiny_llama, tmp_path):
    from lowbit.formats import IntFormat, PerTensor
    from lowbit.plan import LayerSpec

    tensor = LayerSpec(IntFormat(8), PerTensor(), spec(8).algorithm)
    plan = Plan(spec(4, group=None), (Rule("re:.*mlp\\..*", tensor),))
    qm, model, ref = quantized(tiny_llama, plan)
    _export(qm, model, tmp_path / "ct")
    assert torch.equal(logits_of(_load_transformers(tmp_path / "ct")), ref)


def test_unfused_plans_are_refused_unless_asked(tiny_llama, tmp_path):
    plan = Plan(spec(4), (Rule("model.layers.1.self_attn.k_proj", spec(8)),))
    qm, model, _ = quantized(tiny_llama, plan)
    with pytest.raises(ExportError, match="model.layers.1: q_proj W4 g32 sym, k_proj W8") as err:
        _export(qm, model, tmp_path / "ct")
    assert "--allow-unfused" in str(err.value) and not (tmp_path / "ct").exists()
    report = _export(qm, model, tmp_path / "ct", allow_unfused=True)
    assert any("model.layers.1" in n for n in report.notes)
    assert "model.layers.1" in (tmp_path / "ct" / "README.md").read_text()


def test_kept_member_of_a_fused_group_is_a_mismatch(tiny_llama, tmp_path):
    plan = Plan(spec(4), (Rule("model.layers.0.mlp.up_proj", None),))
    qm, model, _ = quantized(tiny_llama, plan)
    with pytest.raises(ExportError, match="up_proj kept in full precision"):
        _export(qm, model, tmp_path / "ct")


@pytest.mark.parametrize(
    ("plan_spec", "why"),
    [
        (spec(4, group=48), "does not divide its 64 input columns"),
        (spec(4, algorithm=GPTQConfig(act_order=ActOrder.GROUP)), "permutation"),
    ],
)
def test_unrepresentable_layers_are_refused(tiny_llama, tmp_path, plan_spec, why):
    calib = torch.randint(0, 318, (4, 32), generator=torch.Generator().manual_seed(1))
    qm, model, _ = quantized(tiny_llama, uniform_plan(plan_spec), calib)
    with pytest.raises(ExportError, match=why):
        _export(qm, model, tmp_path / "ct")
    assert list(tmp_path.iterdir()) == []


def test_half_precision_storage_keeps_quantized_weights_exact(tiny_llama, tmp_path):
    qm, model, _ = quantized(tiny_llama, uniform_plan(spec(4)))
    report = _export(qm, model, tmp_path / "ct", dtype="float16")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ct" / "model.safetensors"), "pt") as f:
        assert f.get_slice("model.embed_tokens.weight").get_dtype() == "F16"
        assert f.get_slice("model.layers.0.mlp.up_proj.weight_scale").get_dtype() == "F16"
    loaded = load_compressed_tensors(tmp_path / "ct")
    for name, qw in qm.weights.items():
        assert torch.equal(loaded.get_submodule(name).weight, qw.dequantize()), name
    assert report.size_bytes < report.predicted_bytes + 60_000
    assert 0 < report.kept_max_error < 1e-3 and report.max_weight_error == 0.0


def test_directory_has_tokenizer_card_and_predicted_size(tiny_llama, tmp_path):
    qm, model, _ = quantized(tiny_llama, uniform_plan(spec(4)))
    report = _export(qm, model, tmp_path / "ct", figures={"perplexity": 12.5})
    names = set(report.files)
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    card = (tmp_path / "ct" / "README.md").read_text()
    assert "W4 g32 sym | 14" in card and "12.5" in card and "lowbit" in card
    weights = report.files["model.safetensors"]
    assert 0 <= weights - report.predicted_bytes < 16_000  # header and weight_shape tensors
    assert is_compressed_tensors_dir(tmp_path / "ct")


def test_model_sources_read_an_export(tiny_llama, tmp_path):
    qm, model, ref = quantized(tiny_llama, uniform_plan(spec(4, sym=False)))
    _export(qm, model, tmp_path / "ct")
    handle = api.load(str(tmp_path / "ct"))
    assert torch.equal(logits_of(handle.load_model()), ref)
    assert handle.load_tokenizer()("def f(): pass")["input_ids"]


def test_full_disk_leaves_no_directory(tiny_llama, tmp_path, monkeypatch):
    import errno

    from compressed_tensors.compressors import ModelCompressor

    qm, model, _ = quantized(tiny_llama, uniform_plan(spec(4)))

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ModelCompressor, "update_config", full)
    with pytest.raises(OutputPathError, match=r"no space left on the device of .*ct\b"):
        _export(qm, model, tmp_path / "ct")
    assert list(tmp_path.iterdir()) == []


def test_naive_quantized_checkpoints_are_decompressed(tiny_llama, tmp_path):
    """Formats that keep the codes under ``weight`` (naive/int-quantized) are dequantized on
    import, not read as dense weights."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config

    from lowbit.export.compressed import quantization_config

    qm, model, ref = quantized(tiny_llama, uniform_plan(spec(8, group=None)))
    apply_quantization_config(model, quantization_config(qm))
    with torch.no_grad():
        for name, qw in qm.weights.items():
            m = model.get_submodule(name)
            m.weight_scale.data = qw.scale.reshape(m.weight_scale.shape).to(torch.float16)
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="int-quantized")
    compressor.compress_model(model)
    model.save_pretrained(tmp_path / "naive")
    compressor.update_config(str(tmp_path / "naive"))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "naive" / "model.safetensors"), "pt") as f:
        assert f.get_slice("model.layers.0.mlp.up_proj.weight").get_dtype() == "I8"
    assert torch.equal(logits_of(load_compressed_tensors(tmp_path / "naive")), ref)


def test_scale_dtypes_get_their_own_config_groups(tiny_llama, tmp_path):
    from lowbit.export.compressed import quantization_config
    from lowbit.formats import IntFormat, PerGroup
    from lowbit.plan import LayerSpec

    bf16 = LayerSpec(IntFormat(4, True, "bfloat16"), PerGroup(32), spec(4).algorithm)
    plan = Plan(spec(4), (Rule("re:.*mlp\\..*", bf16),))
    qm, _, _ = quantized(tiny_llama, plan)
    groups = quantization_config(qm).config_groups.values()
    dtypes = sorted(str(g.weights.scale_dtype) for g in groups)
    assert dtypes == ["torch.bfloat16", "torch.float16"]


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("fp4_e2m1", "stores FP8 E4M3 .float8_e4m3fn. only"),
        ("nf4", "has no compressed-tensors writer"),
    ],
)
def test_formats_without_a_writer_are_refused(tiny_llama, tmp_path, name, why):
    """A 4-bit float or codebook must never be written as another format."""
    from lowbit.algorithms import RTNConfig
    from lowbit.formats import FORMATS, PerGroup
    from lowbit.plan import LayerSpec

    plan = uniform_plan(LayerSpec(FORMATS.get(name)(), PerGroup(32), RTNConfig()))
    qm, model, _ = quantized(tiny_llama, plan)
    with pytest.raises(ExportError, match=f"format {name}.*{why}"):
        _export(qm, model, tmp_path / "ct")
    assert list(tmp_path.iterdir()) == []


def test_runtime_plan_parts_are_refused_not_dropped(tiny_llama, tmp_path):
    """KV-cache quantization and a quantized embedding cannot be carried by the export
    (activations can: W8A8): refused by name, nothing written."""
    from lowbit import api
    from lowbit.algorithms import RTNConfig
    from lowbit.algorithms.activation_specs import KVCacheSpec
    from lowbit.formats import IntFormat, PerChannel
    from lowbit.plan import LayerSpec, Plan

    handle = api.load(str(tiny_llama))
    w8 = LayerSpec(IntFormat(8), PerChannel(), RTNConfig())
    plan = Plan(w8, kv_cache=KVCacheSpec(IntFormat(8)))
    qm = api.quantize(handle, plan, None)
    with pytest.raises(ExportError, match="also sets kv_cache"):
        api.export(qm, api.fake_quant_model(handle, qm), "compressed-tensors", tmp_path / "ct")
    assert not (tmp_path / "ct").exists()
