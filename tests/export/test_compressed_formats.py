"""compressed-tensors export of the non-integer formats and of W8A8: FP8 E4M3 weights per
channel and per group, MXFP4, NVFP4 with one global scale per fused group, INT8 / FP8 weights
with dynamic or static activation scales. Each export is read back from its files by the
library's own config parser and decompressors and compared with the weights lowbit evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lowbit import api
from lowbit.algorithms import GPTQConfig, RTNConfig
from lowbit.algorithms.activation_specs import ActivationSpec
from lowbit.errors import ConfigError, ExportError
from lowbit.export.ct_writers import NVFP4_RELATIVE_BOUND
from lowbit.formats import FORMATS, IntFormat, PerChannel, PerGroup, PerTensor
from lowbit.models.compressed_source import load_compressed_tensors
from lowbit.models.nvfp4_fused import fused_groups, share_fused_nvfp4_scales
from lowbit.plan import LayerSpec, Plan, uniform_plan
from tests.export.shared import logits_of

FP8 = FORMATS.get("fp8_e4m3")()
CALIB = torch.randint(0, 318, (4, 32), generator=torch.Generator().manual_seed(1))


def _rtn(name: str, gran) -> LayerSpec:
    return LayerSpec(FORMATS.get(name)(), gran, RTNConfig())


def _quantize(model_dir: Path, plan: Plan, calib=None, share: bool = False):
    handle = api.load(str(model_dir))
    qm = api.quantize(handle, plan, None if calib is None else api.Windows(calib, {}))
    if share:
        qm = share_fused_nvfp4_scales(qm)
    return qm, api.fake_quant_model(handle, qm)


def _qcfg(out: Path):
    from compressed_tensors.quantization import QuantizationConfig

    raw = json.loads((out / "config.json").read_text())["quantization_config"]
    return raw, QuantizationConfig.model_validate(raw)


@pytest.mark.parametrize(
    ("spec", "fmt"),
    [
        (LayerSpec(FP8, PerChannel(), RTNConfig()), "float-quantized"),
        (LayerSpec(FP8, PerGroup(32), RTNConfig()), "float-quantized"),
        (LayerSpec(FP8, PerTensor(), RTNConfig()), "float-quantized"),
        (_rtn("mxfp4", PerGroup(32)), "mxfp4-pack-quantized"),
    ],
)
def test_exact_formats_read_back_bit_exact(tiny_llama, tmp_path, spec, fmt):
    qm, model = _quantize(tiny_llama, uniform_plan(spec))
    ref = logits_of(model)
    report = api.export(qm, model, "compressed-tensors", tmp_path / "ct")
    assert report.max_weight_error == 0.0
    fp8_groups = isinstance(spec.fmt, type(FP8)) and isinstance(spec.granularity, PerGroup)
    assert any("(1×G)" in note for note in report.notes) == fp8_groups
    raw, parsed = _qcfg(tmp_path / "ct")
    assert raw["format"] == fmt and {g.format for g in parsed.config_groups.values()} == {fmt}
    loaded = load_compressed_tensors(tmp_path / "ct")
    for name, qw in qm.weights.items():
        assert torch.equal(loaded.get_submodule(name).weight, qw.dequantize()), name
    assert torch.equal(logits_of(loaded), ref)


def test_nvfp4_reads_back_within_its_bound_with_one_global_scale_per_fused_group(
    tiny_llama, tmp_path
):
    from safetensors import safe_open

    qm, model = _quantize(tiny_llama, uniform_plan(_rtn("nvfp4", PerGroup(16))), share=True)
    report = api.export(qm, model, "compressed-tensors", tmp_path / "ct")
    raw, parsed = _qcfg(tmp_path / "ct")
    assert raw["format"] == "nvfp4-pack-quantized"
    (args,) = [g.weights for g in parsed.config_groups.values()]
    assert (args.strategy, args.group_size, args.type) == ("tensor_group", 16, "float")
    loaded = load_compressed_tensors(tmp_path / "ct")
    worst = 0.0
    for name, qw in qm.weights.items():
        want = qw.dequantize()
        diff = (loaded.get_submodule(name).weight - want).abs()
        assert bool((diff <= want.abs() * NVFP4_RELATIVE_BOUND).all()), name
        worst = max(worst, float(diff.detach().max()))
    assert 0.0 < report.max_weight_error == pytest.approx(worst, abs=1e-6)
    with safe_open(str(tmp_path / "ct" / "model.safetensors"), "pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys() if k.endswith("weight_global_scale")}
        assert f.get_slice("model.layers.0.mlp.up_proj.weight_scale").get_dtype() == "F8_E4M3"
    for members in fused_groups(qm):
        scales = [stored[f"{m}.weight_global_scale"] for m in members]
        assert all(torch.equal(scales[0], s) for s in scales), members
        W = torch.cat(
            [
                qm.handle.weights().read([f"{m}.weight"], torch.device("cpu"))[f"{m}.weight"]
                for m in members
            ]
        )
        assert float(scales[0]) == pytest.approx(448 * 6 / float(W.float().abs().max()), rel=1e-6)


def test_sharing_keeps_the_largest_member_and_other_layers_exact(tiny_llama):
    """The member holding the group's absmax keeps its RTN encoding bit for bit (same scale),
    layers outside fused groups are untouched, the others get the group's scale."""
    handle = api.load(str(tiny_llama))
    qm = api.quantize(handle, uniform_plan(_rtn("nvfp4", PerGroup(16))), None)
    shared = share_fused_nvfp4_scales(qm)
    for members in fused_groups(qm):
        top = max(members, key=lambda m: float(qm.weights[m].tensor_scale))
        assert torch.equal(shared.weights[top].codes, qm.weights[top].codes)
        assert all(
            torch.equal(shared.weights[m].tensor_scale, shared.weights[top].tensor_scale)
            for m in members
        )
    for name in ("model.layers.0.self_attn.o_proj", "model.layers.1.mlp.down_proj"):
        assert torch.equal(shared.weights[name].codes, qm.weights[name].codes)


def test_unshared_nvfp4_fused_groups_are_refused(tiny_llama, tmp_path):
    qm, model = _quantize(tiny_llama, uniform_plan(_rtn("nvfp4", PerGroup(16))))
    with pytest.raises(ExportError, match="(?s)different global .tensor. scales.*q_proj"):
        api.export(qm, model, "compressed-tensors", tmp_path / "ct")
    assert list(tmp_path.iterdir()) == []


def test_sharing_refuses_layers_it_cannot_redo(tiny_llama):
    spec = LayerSpec(FORMATS.get("nvfp4")(), PerGroup(16), GPTQConfig())
    qm, _ = _quantize(tiny_llama, uniform_plan(spec), CALIB)
    with pytest.raises(ConfigError, match="quantized with gptq"):
        share_fused_nvfp4_scales(qm)


@pytest.mark.parametrize(
    ("weights", "acts", "fmt"),
    [
        (IntFormat(8), ActivationSpec(IntFormat(8), "per_token", True), "int-quantized"),
        (FP8, ActivationSpec(FP8, "per_token", True), "float-quantized"),
        (FP8, ActivationSpec(FP8, "per_tensor", False), "float-quantized"),
        (IntFormat(8), ActivationSpec(IntFormat(8), "per_tensor", False), "int-quantized"),
    ],
)
def test_w8a8_writes_input_activations(tiny_llama, tmp_path, weights, acts, fmt):
    from safetensors import safe_open

    from lowbit.formats.activation import symmetric_scale

    plan = Plan(LayerSpec(weights, PerChannel(), RTNConfig()), activations=acts)
    qm, model = _quantize(tiny_llama, plan, None if acts.dynamic else CALIB)
    assert api.export(qm, model, "compressed-tensors", tmp_path / "ct").max_weight_error == 0.0
    raw, parsed = _qcfg(tmp_path / "ct")
    (group,) = parsed.config_groups.values()
    assert raw["format"] == fmt and group.input_activations.dynamic == acts.dynamic
    assert group.input_activations.strategy == ("token" if acts.dynamic else "tensor")
    assert group.input_activations.type == ("int" if isinstance(acts.fmt, IntFormat) else "float")
    loaded = load_compressed_tensors(tmp_path / "ct")
    for name, qw in qm.weights.items():
        assert torch.equal(loaded.get_submodule(name).weight, qw.dequantize()), name
    with safe_open(str(tmp_path / "ct" / "model.safetensors"), "pt") as f:
        scales = {k: f.get_tensor(k) for k in f.keys() if k.endswith("input_scale")}
    if acts.dynamic:
        assert scales == {}
    else:
        for name, t in qm.activation_ranges.items():
            want = symmetric_scale(torch.tensor(t), acts.fmt)
            assert torch.equal(scales[f"{name}.input_scale"], want.reshape(1)), name


@pytest.mark.parametrize(
    ("spec", "acts", "why"),
    [
        (
            _rtn("nf4", PerGroup(32)),
            None,
            "format nf4 has no compressed-tensors writer .supported: int",
        ),
        (_rtn("fp8_e5m2", PerChannel()), None, "E4M3 .float8_e4m3fn. only"),
        (_rtn("mxfp8", PerGroup(32)), None, "take MXFP4 only"),
        (
            LayerSpec(IntFormat(8), PerChannel(), RTNConfig()),
            ActivationSpec(IntFormat(4), "per_token", True),
            "activation format int4",
        ),
        (
            _rtn("mxfp4", PerGroup(32)),
            ActivationSpec(IntFormat(8), "per_token", True),
            "mxfp4 are written weight-only",
        ),
    ],
)
def test_unsupported_formats_name_the_format_and_what_is_supported(
    tiny_llama, tmp_path, spec, acts, why
):
    qm, model = _quantize(tiny_llama, Plan(spec, activations=acts))
    with pytest.raises(ExportError, match=why):
        api.export(qm, model, "compressed-tensors", tmp_path / "ct")
    assert list(tmp_path.iterdir()) == []
