"""Measured sensitivity on tiny offline models, one block at a time, against independent
whole-model computations (plain Hugging Face forwards and autograd, written in the tests)."""

from __future__ import annotations

import copy

import pytest
import torch

from lowbit.algorithms import GPTQConfig, RTNConfig, rtn_quantize
from lowbit.errors import ConfigError
from lowbit.formats import IntFormat, PerGroup
from lowbit.models.lazy import LazyModel
from lowbit.models.sources import resolve_model
from lowbit.plan import LayerSpec
from lowbit.runtime import RuntimeConfig, resolve_runtime
from lowbit.sensitivity.probe import ProbeConfig, measure
from lowbit.sensitivity.proxies import fisher_error
from tests.helpers.whole_model import whole_model_fisher, whole_model_kl

RTN_MENU = tuple(LayerSpec(IntFormat(b), PerGroup(16), RTNConfig()) for b in (2, 4, 8))
CFG = ProbeConfig(
    probe_windows=2, probe_ctx=24, fisher_windows=3, fisher_ctx=16, batch=2, chunk_size=3
)


@pytest.fixture(scope="module")
def rt():
    return resolve_runtime(RuntimeConfig(dtype="float32"))


def _calib(handle, n=6, ctx=32):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, handle.config.vocab_size, (n, ctx), generator=g)


@pytest.fixture(scope="module")
def llama_table(tiny_llama, rt):
    handle = resolve_model(str(tiny_llama))
    calib = _calib(handle)
    return handle, calib, measure(handle, RTN_MENU, calib, CFG, runtime=rt)


def test_table_is_complete_with_every_metric(tiny_any, rt):
    handle = resolve_model(str(tiny_any))
    table = measure(handle, RTN_MENU, _calib(handle), CFG, runtime=rt)
    assert table.is_complete()
    assert len(table.layers) == handle.config.num_hidden_layers * len(handle.arch.linear_names)
    for metric in ("kl", "hessian", "fisher"):
        assert table.has_metric(metric)
    assert table.model["fingerprint"] == handle.fingerprint
    assert table.other_bytes > 0


def _rtn(layer: torch.nn.Module, spec: LayerSpec) -> torch.Tensor:
    return rtn_quantize(layer.weight.data, spec.fmt, spec.granularity).dequantize()


def test_measured_kl_equals_an_independent_evaluation(llama_table, rt):
    handle, calib, table = llama_table
    model = handle.load_model(rt)
    probe = calib[: CFG.probe_windows, : CFG.probe_ctx]
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        for s, spec in enumerate(RTN_MENU):
            changed = copy.deepcopy(model)
            layer = changed.get_submodule(name)
            layer.weight.data = _rtn(layer, spec)
            ref = whole_model_kl(model, changed, probe)
            # the cached reference (about 1e-5 relative) and float32 normalisation (~1e-7 nats)
            assert table.entry(name, s).kl == pytest.approx(ref, rel=1e-4, abs=2e-7)


def test_a_held_out_probe_measures_on_the_held_out_windows(llama_table, rt):
    """With ``held_out`` the KL is measured on the held-out windows (an independent evaluation
    there), the proxies still on the calibration windows; without held-out windows it is
    refused, and so is a held-out probe that measures nothing."""
    import dataclasses

    handle, calib, table = llama_table
    model = handle.load_model(rt)
    held = torch.randint(0, handle.config.vocab_size, (2, 30), generator=torch.Generator())
    cfg = dataclasses.replace(CFG, held_out=True)
    name = "model.layers.1.mlp.down_proj"
    part = dataclasses.replace(cfg, blocks=(1,))
    other = measure(handle, RTN_MENU, calib, part, runtime=rt, held_out=held)
    assert other.probe["probe_held_out"] is True and table.probe["probe_held_out"] is False
    for s, spec in enumerate(RTN_MENU):
        changed = copy.deepcopy(model)
        layer = changed.get_submodule(name)
        layer.weight.data = _rtn(layer, spec)
        ref = whole_model_kl(model, changed, held[:, : CFG.probe_ctx])
        assert other.entry(name, s).kl == pytest.approx(ref, rel=1e-4, abs=2e-7)
        assert other.entry(name, s).kl != table.entry(name, s).kl
        assert other.entry(name, s).hessian == table.entry(name, s).hessian
    with pytest.raises(ConfigError, match="probe on held-out windows, but none were drawn"):
        measure(handle, RTN_MENU, calib, part, runtime=rt)
    with pytest.raises(ConfigError, match="held-out probe windows with --proxies-only"):
        dataclasses.replace(cfg, measure=False)


def test_fisher_proxies_equal_the_whole_model_fisher(llama_table, rt):
    handle, calib, table = llama_table
    model = handle.load_model(rt)
    ids = calib[: CFG.fisher_windows, : CFG.fisher_ctx]
    names = [x.name for x in table.layers]
    whole = whole_model_fisher(model, names, ids)
    for name in names:
        layer = model.get_submodule(name)
        for s, spec in enumerate(RTN_MENU):
            expected = fisher_error(layer.weight.data, _rtn(layer, spec), whole[name])
            assert table.entry(name, s).fisher == pytest.approx(expected, rel=1e-5)


def test_measure_never_holds_two_blocks(tiny_llama, rt, monkeypatch):
    """One block, or the modules outside the blocks, is materialized at a time."""
    resident: set[tuple[int, object]] = set()
    most = []
    load, release = LazyModel.load, LazyModel.release
    outside, release_outside = LazyModel.materialize_outside, LazyModel.release_outside

    def track(key: tuple[int, object]) -> None:
        resident.add(key)
        most.append(len(resident))

    def tracked_load(self, i):
        track((id(self), i))
        return load(self, i)

    def tracked_release(self, i):
        resident.discard((id(self), i))
        release(self, i)

    def tracked_outside(self, *, head):
        track((id(self), "outside"))
        return outside(self, head=head)

    def tracked_release_outside(self, paths):
        resident.discard((id(self), "outside"))
        release_outside(self, paths)

    monkeypatch.setattr(LazyModel, "load", tracked_load)
    monkeypatch.setattr(LazyModel, "release", tracked_release)
    monkeypatch.setattr(LazyModel, "materialize_outside", tracked_outside)
    monkeypatch.setattr(LazyModel, "release_outside", tracked_release_outside)
    handle = resolve_model(str(tiny_llama))
    cfg = ProbeConfig(**{**CFG.__dict__, "probe_ctx": 20})  # a reference not cached yet
    table = measure(handle, RTN_MENU, _calib(handle), cfg, runtime=rt)
    assert table.is_complete()
    assert most and max(most) == 1
    assert not resident
    n = handle.config.num_hidden_layers
    # the sweep (n), the backward (n), the probes (n (n - 1) / 2); the reference has its own
    assert table.timings["block_loads"] == 2 * n + n * (n - 1) // 2


def test_more_bits_never_hurt_a_layer(llama_table):
    _, _, table = llama_table
    for info in table.layers:
        kl = [table.entry(info.name, s).kl for s in range(3)]
        hess = [table.entry(info.name, s).hessian for s in range(3)]
        assert kl[0] > kl[2] >= 0.0  # a random tiny model barely reacts to INT4 vs INT8
        assert hess[0] > hess[1] > hess[2] >= 0.0


def test_batching_specs_does_not_change_the_values(llama_table, rt):
    handle, calib, table = llama_table
    one = measure(handle, RTN_MENU, calib, ProbeConfig(**{**CFG.__dict__, "batch": 1}), runtime=rt)
    for key, entry in table.entries.items():
        assert one.entries[key].kl == pytest.approx(entry.kl, rel=1e-4, abs=1e-9)
        assert one.entries[key].fisher == entry.fisher
        assert one.entries[key].hessian == entry.hessian


def test_resume_skips_done_layers_and_gives_the_same_table(llama_table, rt):
    handle, calib, table = llama_table
    done = {k: e for k, e in table.entries.items() if ".layers.0." in k[0]}
    seen = []
    resumed = measure(
        handle,
        RTN_MENU,
        calib,
        CFG,
        runtime=rt,
        done=done,
        on_block=lambda i, new: seen.append((i, len(new))),
    )
    # the last block first; block 0 was done
    assert seen == [(1, len(handle.arch.linear_names) * len(RTN_MENU)), (0, 0)]
    for key, entry in table.entries.items():
        assert resumed.entries[key].kl == pytest.approx(entry.kl, rel=1e-5, abs=1e-10)
        assert resumed.entries[key].fisher == entry.fisher


def test_gptq_probes_use_the_calibration_hessian(tiny_llama, rt):
    handle = resolve_model(str(tiny_llama))
    menu = (
        LayerSpec(IntFormat(3), PerGroup(16), RTNConfig()),
        LayerSpec(IntFormat(3), PerGroup(16), GPTQConfig()),
    )
    cfg = ProbeConfig(**{**CFG.__dict__, "fisher": False})
    table = measure(handle, menu, _calib(handle, n=12), cfg, runtime=rt)
    assert not table.has_metric("fisher")
    for info in table.layers:
        rtn, gptq = table.entry(info.name, 0), table.entry(info.name, 1)
        assert gptq.bits == rtn.bits
        assert gptq.hessian != rtn.hessian  # GPTQ moved the weights


def test_probe_windows_must_fit(tiny_llama, rt):
    handle = resolve_model(str(tiny_llama))
    with pytest.raises(ConfigError, match="do not fit"):
        measure(handle, RTN_MENU, _calib(handle, n=1), CFG, runtime=rt)
    with pytest.raises(ConfigError, match="at least 1"):
        ProbeConfig(batch=0)


@pytest.mark.parametrize("head_rows", [1, 100])
def test_the_head_call_size_does_not_change_the_table(llama_table, rt, monkeypatch, head_rows):
    """One window per call of the head (1: a candidate's 2 windows in two calls), 2 candidates
    of 2 × 24 tokens per call (100: 21 candidates a block, the last group short) and 16 (the
    default, 768): the same KL values."""
    from lowbit.sensitivity import measured

    handle, calib, table = llama_table
    monkeypatch.setattr(measured, "HEAD_ROWS", head_rows)
    other = measure(handle, RTN_MENU, calib, CFG, runtime=rt)
    for key, e in table.entries.items():
        assert other.entries[key].kl == pytest.approx(e.kl, rel=1e-6, abs=1e-12), key
