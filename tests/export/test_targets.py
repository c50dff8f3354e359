"""Plans for a deployment target (``--target vllm|gguf``) are accepted by that target's exporter
unchanged (no --allow-unfused); the menu specs a target cannot write are dropped and named, or
refused when asked to be strict; a layer's experts share one spec for vLLM."""

from __future__ import annotations

import pytest
import torch

from lowbit import api
from lowbit.algorithms import RTNConfig
from lowbit.allocation import AvgBits, build_problem
from lowbit.allocation.menu import MenuConfig, build_menu
from lowbit.errors import ConfigError
from lowbit.export.targets import TARGETS, constraints, why_not
from lowbit.formats import IntFormat, PerGroup
from lowbit.models.sources import resolve_model
from lowbit.plan import LayerSpec
from lowbit.runtime import RuntimeConfig, resolve_runtime
from lowbit.sensitivity.probe import ProbeConfig, measure
from tests.helpers.tiny import make_tiny_model

MENU = build_menu(
    MenuConfig(("int",), (2, 3, 4, 8), (16, 32), "rtn"),
    MenuConfig(("nf4", "mxfp4", "fp8_e4m3"), (), (32,), "rtn"),
) + (LayerSpec(IntFormat(4, False), PerGroup(32), RTNConfig()),)
EXPORT = {"vllm": ("compressed-tensors", "ct"), "gguf": ("gguf", "m.gguf")}


def _table(handle, menu):
    calib = torch.randint(
        0, handle.config.vocab_size, (4, 24), generator=torch.Generator().manual_seed(0)
    )
    cfg = ProbeConfig(probe_ctx=16, fisher_windows=2, fisher_ctx=16, chunk_size=2, measure=False)
    return measure(handle, menu, calib, cfg, runtime=resolve_runtime(RuntimeConfig()))


@pytest.fixture(scope="module")
def llama(tiny_root):
    handle = resolve_model(str(make_tiny_model(tiny_root, "llama")))
    return handle, _table(handle, MENU)


@pytest.mark.parametrize("target", ["vllm", "gguf"])
@pytest.mark.parametrize("method", ["exact", "llamacpp"])
def test_every_plan_for_a_target_exports_unchanged(llama, target, method, tmp_path):
    handle, table = llama
    limits = constraints(table, target, handle)
    problem = build_problem(table, "hessian", ties=limits.ties, allowed=limits.allowed)
    lo, hi = problem.extremes()
    mixes = set()
    for k, frac in enumerate((0.0, 0.3, 0.7, 1.0)):
        budget = AvgBits((lo + frac * (hi - lo)) / problem.n_weights + 1e-9)
        alloc, plan = api.allocate(
            table, budget, method=method, metric="hessian", constraints=limits
        )
        used = {table.labels[s] for s in alloc.choice.values()}
        assert not used & set(limits.dropped), used
        mixes.add(len(used))
        qm = api.quantize(handle, plan, None)
        fmt, name = EXPORT[target]
        report = api.export(qm, api.fake_quant_model(handle, qm), fmt, tmp_path / f"{k}{name}")
        assert set(report.layers) == set(handle.arch.layer_names())
        assert target == "gguf" or not report.notes  # no unfused or unservable layers
    assert max(mixes) >= 2 or method == "llamacpp"  # the exact plans do mix specs


def test_targets_drop_what_they_cannot_write_and_say_why(llama):
    handle, table = llama
    vllm = constraints(table, "vllm", handle)
    assert set(vllm.dropped) == {
        "RTN W2 g16 sym",
        "RTN W2 g32 sym",
        "RTN W3 g16 sym",
        "RTN W3 g32 sym",
        "RTN NF4 g32",
    }  # fmt: skip  (MXFP4 and FP8 per channel: written by the compressed-tensors exporter)
    assert "4 and 8 bits only, not 2" in vllm.dropped["RTN W2 g16 sym"]
    assert vllm.fuse and not vllm.ties  # a dense model: no experts to tie
    gguf = constraints(table, "gguf", handle)
    kept = set(table.labels) - set(gguf.dropped)
    assert kept == {"RTN W4 g32 sym", "RTN W8 g32 sym", "RTN W4 g32 asym"}
    assert "groups of 32" in gguf.dropped["RTN W4 g16 sym"]
    assert not constraints(table, "any", handle).dropped


def test_strict_targets_name_the_format_and_the_target(llama):
    handle, table = llama
    with pytest.raises(ConfigError, match="target gguf cannot export 9 spec") as err:
        constraints(table, "gguf", handle, strict=True)
    assert "RTN NF4 g32: nf4: not an integer format" in str(err.value)
    with pytest.raises(ConfigError, match="did you mean 'vllm'"):
        constraints(table, "vlm", handle)


def test_a_menu_the_target_cannot_write_at_all_is_refused(tiny_root):
    handle = resolve_model(str(make_tiny_model(tiny_root, "llama")))
    table = _table(handle, build_menu(MenuConfig(("nf4",), (), (32,), "rtn")))
    with pytest.raises(ConfigError, match="(?s)target vllm cannot export 1 spec.*RTN NF4 g32"):
        constraints(table, "vllm", handle)


def test_probe_checks_the_layer_shape():
    spec = LayerSpec(IntFormat(4), PerGroup(32), RTNConfig())
    assert why_not(TARGETS.get("gguf"), spec, 1000, 64) is None
    assert "groups of 32" in why_not(TARGETS.get("gguf"), spec, 1000, 48)


def test_vllm_ties_a_layer_s_experts(tiny_root):
    handle = resolve_model(str(make_tiny_model(tiny_root, "qwen3_moe")))
    table = _table(handle, build_menu(MenuConfig(("int",), (4, 8), (16,), "rtn")))
    limits = constraints(table, "vllm", handle)
    experts = [x for x in table.layers if x.members]
    assert sorted(len(t) for t in limits.ties) == [3] * (len(experts) // 3)
    problem = build_problem(table, "hessian", ties=limits.ties, allowed=limits.allowed)
    lo, hi = problem.extremes()
    for frac in (0.2, 0.5, 0.8):
        budget = AvgBits((lo + frac * (hi - lo)) / problem.n_weights)
        alloc, _ = api.allocate(table, budget, metric="hessian", constraints=limits)
        for tie in limits.ties:
            assert len({alloc.choice[n] for n in tie}) == 1


def test_pareto_points_obey_the_target(llama):
    from lowbit.workflows.allocation import sweep_points

    handle, table = llama
    limits = constraints(table, "vllm", handle)
    points = sweep_points(table, [5.0, 6.0, 7.0], [], metric="hessian", limits=limits)
    assert len(points) >= 3
    for p in points:
        specs = {r.spec.describe() for r in p.plan.rules} | {p.plan.default.describe()}
        assert not specs & set(limits.dropped), (p.name, specs)


def test_the_gguf_menu_is_all_writable_and_its_plans_export(llama, tmp_path):
    """Every spec of ``--format gguf`` (Q4_0, Q4_1, Q8_0, k-quants falling back by name on the
    tiny model's 64- and 96-wide rows) is kept by the GGUF target and a mixed plan exports."""
    from dataclasses import replace

    from lowbit.allocation.menu import PRESETS

    handle, _ = llama
    menu = build_menu(*(replace(c, algorithm="rtn") for c in PRESETS.get("gguf")))
    table = _table(handle, menu)
    limits = constraints(table, "gguf", handle)
    assert not limits.dropped
    problem = build_problem(table, "hessian", allowed=limits.allowed)
    lo, hi = problem.extremes()
    alloc, plan = api.allocate(
        table, AvgBits((lo + hi) / 2 / problem.n_weights), metric="hessian", constraints=limits
    )
    assert len(set(alloc.choice.values())) >= 2
    qm = api.quantize(handle, plan, None)
    report = api.export(qm, api.fake_quant_model(handle, qm), "gguf", tmp_path / "m.gguf")
    assert set(report.layers) == set(handle.arch.layer_names())
