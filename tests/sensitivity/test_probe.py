"""Measured sensitivity on tiny offline models, against an independent evaluation."""

from __future__ import annotations

import copy

import pytest
import torch

from lowbit.algorithms import GPTQConfig, RTNConfig
from lowbit.errors import ConfigError
from lowbit.evaluation.metrics import evaluate_models
from lowbit.formats import IntFormat, PerGroup
from lowbit.models.sources import resolve_model
from lowbit.plan import LayerSpec
from lowbit.sensitivity.probe import ProbeConfig, measure

RTN_MENU = tuple(LayerSpec(IntFormat(b), PerGroup(16), RTNConfig()) for b in (2, 4, 8))
CFG = ProbeConfig(
    probe_windows=2, probe_ctx=24, fisher_windows=3, fisher_ctx=16, batch=2, chunk_size=3
)


def _calib(handle, n=6, ctx=32):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, handle.config.vocab_size, (n, ctx), generator=g)


@pytest.fixture(scope="module")
def llama_table(tiny_llama):
    handle = resolve_model(str(tiny_llama))
    calib = _calib(handle)
    return handle, calib, measure(handle, RTN_MENU, calib, CFG)


def test_table_is_complete_with_every_metric(tiny_any):
    handle = resolve_model(str(tiny_any))
    table = measure(handle, RTN_MENU, _calib(handle), CFG)
    assert table.is_complete()
    assert len(table.layers) == handle.config.num_hidden_layers * len(handle.arch.linear_names)
    for metric in ("kl", "hessian", "fisher"):
        assert table.has_metric(metric)
    assert table.model["fingerprint"] == handle.fingerprint
    assert table.other_bytes > 0


def test_measured_kl_equals_an_independent_evaluation(llama_table):
    handle, calib, table = llama_table
    model = handle.load_model()
    probe = calib[: CFG.probe_windows, : CFG.probe_ctx]
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        for s, spec in enumerate(RTN_MENU):
            from lowbit.algorithms import rtn_quantize

            changed = copy.deepcopy(model)
            layer = changed.get_submodule(name)
            layer.weight.data = rtn_quantize(
                layer.weight.data, spec.fmt, spec.granularity
            ).dequantize()
            ref = evaluate_models(model, {"q": changed}, probe)["q"].kl["mean"]
            assert table.entry(name, s).kl == pytest.approx(ref, rel=1e-4, abs=1e-9)


def test_more_bits_never_hurt_a_layer(llama_table):
    _, _, table = llama_table
    for info in table.layers:
        kl = [table.entry(info.name, s).kl for s in range(3)]
        hess = [table.entry(info.name, s).hessian for s in range(3)]
        assert kl[0] > kl[2] >= 0.0  # a random tiny model barely reacts to INT4 vs INT8
        assert hess[0] > hess[1] > hess[2] >= 0.0


def test_batching_specs_does_not_change_the_values(tiny_llama, llama_table):
    handle, calib, table = llama_table
    one = measure(handle, RTN_MENU, calib, ProbeConfig(**{**CFG.__dict__, "batch": 1}))
    for key, entry in table.entries.items():
        assert one.entries[key].kl == pytest.approx(entry.kl, rel=1e-4, abs=1e-9)


def test_resume_skips_done_layers_and_gives_the_same_table(llama_table):
    handle, calib, table = llama_table
    done = {k: e for k, e in table.entries.items() if ".layers.0." in k[0]}
    seen = []
    resumed = measure(
        handle, RTN_MENU, calib, CFG, done=done, on_block=lambda i, new: seen.append((i, len(new)))
    )
    assert seen == [(0, 0), (1, len(handle.arch.linear_names) * len(RTN_MENU))]
    for key, entry in table.entries.items():
        assert resumed.entries[key].kl == pytest.approx(entry.kl, rel=1e-5, abs=1e-10)


def test_gptq_probes_use_the_calibration_hessian(tiny_llama):
    handle = resolve_model(str(tiny_llama))
    menu = (
        LayerSpec(IntFormat(3), PerGroup(16), RTNConfig()),
        LayerSpec(IntFormat(3), PerGroup(16), GPTQConfig()),
    )
    cfg = ProbeConfig(**{**CFG.__dict__, "fisher": False})
    table = measure(handle, menu, _calib(handle, n=12), cfg)
    assert not table.has_metric("fisher")
    for info in table.layers:
        rtn, gptq = table.entry(info.name, 0), table.entry(info.name, 1)
        assert gptq.bits == rtn.bits
        assert gptq.hessian != rtn.hessian  # GPTQ moved the weights


def test_probe_windows_must_fit(tiny_llama):
    handle = resolve_model(str(tiny_llama))
    with pytest.raises(ConfigError, match="do not fit"):
        measure(handle, RTN_MENU, _calib(handle, n=1), CFG)
    with pytest.raises(ConfigError, match="at least 1"):
        ProbeConfig(batch=0)
