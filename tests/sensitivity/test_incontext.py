"""In-context measurement on a tiny offline model against whole-model forwards with the plan's
weights put in by hand (an independent reference), its decoder-pass count, and the iterated
allocation on it (never worse than the first plan, deterministic)."""

from __future__ import annotations

import copy

import pytest
import torch

from lowbit.algorithms import RTNConfig, rtn_quantize
from lowbit.allocation import AvgBits, build_problem
from lowbit.allocation.iterate import IterateConfig, iterate
from lowbit.errors import ConfigError
from lowbit.formats import IntFormat, PerGroup
from lowbit.models.sources import resolve_model
from lowbit.plan import LayerSpec
from lowbit.runtime import RuntimeConfig, resolve_runtime
from lowbit.sensitivity.incontext import ContextConfig, ContextProbe
from lowbit.sensitivity.probe import ProbeConfig, measure
from tests.helpers.whole_model import whole_model_kl

MENU = tuple(LayerSpec(IntFormat(b), PerGroup(16), RTNConfig()) for b in (2, 3, 8))
CFG = ContextConfig(probe_windows=2, probe_ctx=24, batch=2, chunk_size=3)


@pytest.fixture(scope="module")
def setup(tiny_llama):
    rt = resolve_runtime(RuntimeConfig(dtype="float32"))
    handle = resolve_model(str(tiny_llama))
    g = torch.Generator().manual_seed(0)
    calib = torch.randint(0, handle.config.vocab_size, (4, 32), generator=g)
    table = measure(
        handle, MENU, calib, ProbeConfig(probe_ctx=24, measure=False, fisher=False), runtime=rt
    )
    problem = build_problem(table, "hessian")
    units = [u.layers for u in problem.units]
    probe = ContextProbe(handle, MENU, table.layers, units, calib, CFG, rt)
    return handle, rt, calib, table, problem, probe


def _planned(model, table, problem, context):
    """The whole model with every unit's linears replaced by RTN at the context's spec."""
    changed = copy.deepcopy(model)
    for unit, s in zip(problem.units, context, strict=True):
        for name in unit.layers:
            for member in table.layer(name).member_names:
                layer = changed.get_submodule(member)
                spec = MENU[s]
                W = layer.weight.data
                layer.weight.data = rtn_quantize(W, spec.fmt, spec.granularity).dequantize()
    return changed


def test_in_context_kl_equals_a_whole_model_evaluation(setup):
    handle, rt, calib, table, problem, probe = setup
    model = handle.load_model(rt)
    ids = calib[: CFG.probe_windows, : CFG.probe_ctx]
    n = len(problem.units)
    context = tuple(0 for _ in range(n))
    curves = probe.curves(context, [0, n - 1])
    assert probe.kl(context) == pytest.approx(
        whole_model_kl(model, _planned(model, table, problem, context), ids), rel=1e-4, abs=2e-7
    )
    for u in (0, n - 1):
        for s in range(len(MENU)):
            changed = list(context)
            changed[u] = s
            ref = whole_model_kl(model, _planned(model, table, problem, tuple(changed)), ids)
            assert curves[u][s] == pytest.approx(ref, rel=1e-4, abs=2e-7)
    assert curves[0][0] == probe.kl(context)  # the context's own option: the plan's KL
    other = calib[2:4, :20]  # windows the allocation never saw, scored with the same weights
    plan = (1,) * n
    before = probe.stats()
    assert probe.on_windows(other).kl(plan) == pytest.approx(
        whole_model_kl(model, _planned(model, table, problem, plan), other), rel=1e-4, abs=2e-7
    )
    after = probe.stats()  # the other windows' cost is counted in the probe's own
    assert after["plans"] == before["plans"] + 1 and after["measure_s"] > before["measure_s"]


def test_decoder_passes_are_counted_and_measurements_reused(setup):
    handle, _rt, _calib, _table, problem, probe = setup
    context = tuple(1 for _ in problem.units)
    before = probe.stats()
    probe.curves(context, [0])
    mid = probe.stats()
    n_blocks = handle.config.num_hidden_layers
    # one plan pass (every block) + the two other options of unit 0 (block 0) through every
    # block; unit 0's block-0 input is the captured embedding (no recording pass)
    assert mid["block_forwards"] - before["block_forwards"] == n_blocks + 2 * n_blocks
    assert mid["decoder_passes"] == pytest.approx(mid["block_forwards"] / n_blocks)
    probe.curves(context, [0])
    assert probe.stats()["block_forwards"] == mid["block_forwards"]  # measured once


def test_iterated_in_context_plan_is_never_worse_and_deterministic(setup):
    _handle, _rt, _calib, _table, problem, probe = setup
    runs = [iterate(problem, AvgBits(4.0), probe, IterateConfig(rounds=3, boundary=3))]
    runs.append(iterate(problem, AvgBits(4.0), probe, IterateConfig(rounds=3, boundary=3)))
    a, b = runs
    assert a.best.info["measured_kl"] <= a.rounds[0].measured_kl
    assert a.best.choice == b.best.choice
    assert [r.measured_kl for r in a.rounds] == [r.measured_kl for r in b.rounds]
    assert a.best.bits <= 4.0 * problem.n_weights


def test_probe_windows_must_fit_the_calibration(setup):
    handle, rt, calib, table, problem, _ = setup
    units = [u.layers for u in problem.units]
    with pytest.raises(ConfigError, match="do not fit in the 4 × 32 calibration windows"):
        ContextProbe(handle, MENU, table.layers, units, calib, ContextConfig(8, 24), rt)
    with pytest.raises(ConfigError, match="batch must be at least 1"):
        ContextConfig(batch=0)


def test_a_held_out_probe_scores_the_held_out_windows(setup):
    """With ``held_out`` the probe's windows are cut from the held-out ones (its KL is a
    whole-model evaluation there), not from the calibration windows the weights were fitted on;
    without held-out windows, or too few, it is refused."""
    handle, rt, calib, table, problem, _ = setup
    units = [u.layers for u in problem.units]
    g = torch.Generator().manual_seed(1)
    held = torch.randint(0, handle.config.vocab_size, (3, 28), generator=g)
    cfg = ContextConfig(probe_windows=2, probe_ctx=24, batch=2, chunk_size=3, held_out=True)
    probe = ContextProbe(handle, MENU, table.layers, units, calib, cfg, rt, held_out=held)
    model = handle.load_model(rt)
    plan = tuple(1 for _ in units)
    ref = whole_model_kl(model, _planned(model, table, problem, plan), held[:2, :24])
    assert probe.kl(plan) == pytest.approx(ref, rel=1e-4, abs=2e-7)
    with pytest.raises(ConfigError, match="on held-out windows, but none were drawn"):
        ContextProbe(handle, MENU, table.layers, units, calib, cfg, rt)
    with pytest.raises(ConfigError, match="do not fit in the 1 × 28 held-out windows"):
        ContextProbe(handle, MENU, table.layers, units, calib, cfg, rt, held_out=held[:1])


def test_the_workflow_probes_and_selects_on_the_held_out_windows(setup):
    """Through the allocation workflow, a held-out probe measures on the first held-out windows
    and the selection scores on the ones after them, never on the calibration windows."""
    from lowbit.api import Windows
    from lowbit.workflows.incontext import InContext, Inputs, allocate_with, windows_sha256

    handle, rt, calib, table, _problem, _ = setup
    table = copy.copy(table)
    table.probe = {**table.probe, "calibration_sha256": windows_sha256(calib)}
    held = torch.randint(0, handle.config.vocab_size, (3, 30), generator=torch.Generator())
    windows = Windows(calib, {"held_out": {"selection": "by hand"}}, held_out=held)
    inputs = Inputs(handle, windows, rt)
    probe_cfg = ContextConfig(probe_windows=2, probe_ctx=24, batch=2, chunk_size=3, held_out=True)
    cfg = InContext(rounds=1, boundary=2, probe=probe_cfg, select_windows=1)
    done = allocate_with(cfg, table, AvgBits(4.0), "exact", {"metric": "hessian"}, inputs)
    probes = [v for v in inputs.sessions.values() if isinstance(v, ContextProbe)]
    chosen = next(v for k, v in inputs.sessions.items() if isinstance(k, tuple))
    main = next(v for v in probes if v is not chosen)
    assert len(probes) == 2
    assert torch.equal(main.probe.ids, held[:2, :24])
    assert torch.equal(chosen.probe.ids, held[2:3, :24])
    assert done.record["probe"]["held_out"] is True
    assert done.record["probe_text"] == "held-out windows: by hand"
    assert set(done.record["selection"]["kl_by_round"]) >= {"0"}
