"""Activation quantization in a model: the hook computes the hand-made per-token quantization,
static thresholds are calibrated by every method, saved models reproduce their logits, and bad
activations are named by layer."""

from __future__ import annotations

import json

import pytest
import torch

from lowbit import api
from lowbit.algorithms import RTNConfig
from lowbit.algorithms.activation_ranges import KLRange, MinMaxRange, MSERange, PercentileRange
from lowbit.algorithms.activation_specs import ActivationSpec
from lowbit.errors import ArtefactError, DataError
from lowbit.formats import FP8_E4M3, IntFormat, PerChannel
from lowbit.models.activations import attach_activation_quant, calibrate_activations
from lowbit.models.views import original_view
from lowbit.plan import LayerSpec, Plan

Q_PROJ = "model.layers.0.self_attn.q_proj"
DOWN = "model.layers.1.mlp.down_proj"


def _ids(handle, n: int = 3, ctx: int = 32) -> torch.Tensor:
    return torch.randint(
        0, handle.config.vocab_size, (n, ctx), generator=torch.Generator().manual_seed(0)
    )


def _capture(model, name, ids):
    seen = {}
    h = model.get_submodule(name).register_forward_hook(
        lambda m, args, out: seen.update(x=args[0].clone(), y=out.clone())
    )
    with torch.inference_mode():
        model(input_ids=ids, use_cache=False)
    h.remove()
    return seen["x"], seen["y"]


def test_w8a8_hook_equals_hand_computed_per_token(tiny_llama):
    handle = api.load(str(tiny_llama))
    model = handle.load_model()
    ids = _ids(handle, 1)
    x, _ = _capture(model, Q_PROJ, ids)  # the unquantized input, unchanged upstream
    attach_activation_quant(model, [Q_PROJ], ActivationSpec(IntFormat(8)))
    _, y = _capture(model, Q_PROJ, ids)
    s = x.abs().amax(-1, keepdim=True) / 127
    x_hat = torch.clamp(torch.round(x / s), -128, 127) * s
    W = model.get_submodule(Q_PROJ).weight
    torch.testing.assert_close(y, torch.nn.functional.linear(x_hat, W), rtol=0, atol=1e-6)
    assert not torch.equal(x_hat, x)


@pytest.mark.parametrize(
    "calibration", [MinMaxRange(), PercentileRange(99.9), MSERange(), KLRange(stride=8)]
)
def test_fp8_static_thresholds_by_each_method(tiny_llama, calibration):
    handle = api.load(str(tiny_llama))
    model = handle.load_model()
    ids = _ids(handle)
    spec = ActivationSpec(FP8_E4M3, "per_tensor", dynamic=False, calibration=calibration)
    names = [Q_PROJ, DOWN]
    t = calibrate_activations(original_view(handle), names, ids, spec, api.runtime())
    absmax = {n: float(torch.cat([_capture(model, n, ids[i : i + 1])[0].abs().flatten()
                                  for i in range(3)]).max()) for n in names}  # fmt: skip
    for n in names:
        if isinstance(calibration, MinMaxRange):
            assert t[n] == absmax[n]
        else:
            assert 0 < t[n] <= absmax[n]
    if isinstance(calibration, PercentileRange):
        xs = torch.cat([_capture(model, DOWN, ids[i : i + 1])[0].abs().flatten() for i in range(3)])
        assert abs(t[DOWN] - float(torch.quantile(xs, 0.999))) <= absmax[DOWN] / 2048


def test_static_plan_needs_every_threshold(tiny_llama):
    model = api.load(str(tiny_llama)).load_model()
    spec = ActivationSpec(IntFormat(8), "per_tensor", dynamic=False)
    with pytest.raises(ArtefactError, match=Q_PROJ):
        attach_activation_quant(model, [Q_PROJ], spec, {})


def test_nan_activations_named_by_layer(tiny_llama, tmp_path):
    """Finite weights (a NaN weight is refused on load, naming the tensor) whose activations
    overflow: a norm weight of 3e38 sends its channel to infinity in the MLP's inputs."""
    handle = api.load(str(tiny_llama))
    model = handle.load_model()
    with torch.no_grad():
        model.get_submodule("model.layers.1.post_attention_layernorm").weight[3] = 3e38
    model.save_pretrained(tmp_path / "nan")
    handle.load_tokenizer().save_pretrained(tmp_path / "nan")
    bad = api.load(str(tmp_path / "nan"))
    spec = ActivationSpec(IntFormat(8), "per_tensor", dynamic=False)
    names = [Q_PROJ, "model.layers.1.mlp.gate_proj"]
    with pytest.raises(DataError, match="layer model.layers.1.mlp.gate_proj: .*NaN or infinity"):
        calibrate_activations(original_view(bad), names, _ids(bad), spec, api.runtime())


@pytest.mark.parametrize(
    "act",
    [
        ActivationSpec(IntFormat(8)),
        ActivationSpec(FP8_E4M3, "per_tensor", dynamic=False, calibration=KLRange(stride=16)),
    ],
    ids=["w8a8-int8-dynamic", "fp8-static-kl"],
)
def test_saved_model_with_activations_reloads_identical_logits(tiny_any, tmp_path, act):
    handle = api.load(str(tiny_any))
    fmt = IntFormat(8) if isinstance(act.fmt, IntFormat) else FP8_E4M3
    plan = Plan(LayerSpec(fmt, PerChannel(), RTNConfig()), activations=act)
    ids = _ids(handle)
    qm = api.quantize(handle, plan, api.Windows(ids))
    assert bool(qm.activation_ranges) == (not act.dynamic)
    evaluated = api.fake_quant_model(handle, qm)
    out = api.save(qm, tmp_path / "q", {})
    reloaded, _ = api.load_for_tasks(str(out), api.runtime())
    manifest = json.loads((out / "lowbit.json").read_text())
    with torch.inference_mode():
        a = evaluated(input_ids=ids).logits
        b = reloaded(input_ids=ids).logits
        weights_only = api.load_saved(out)[1](input_ids=ids).logits
    assert torch.equal(a, b)
    assert not torch.equal(a, weights_only)  # the activation quantization is in the logits
    assert manifest.get("activation_ranges", {}) == qm.activation_ranges
