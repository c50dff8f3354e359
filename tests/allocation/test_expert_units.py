"""Allocation over expert units on the tiny Qwen3-MoE: one spec per unit, a plan with one rule
per unit that names all its experts, and the quantized model giving every expert of a unit
that spec."""

from __future__ import annotations

import pytest
import torch

from lowbit.algorithms import GPTQConfig, RTNConfig
from lowbit.allocation import AvgBits, build_problem, solve_exact
from lowbit.allocation.heuristic import llamacpp_mix, use_more_bits
from lowbit.allocation.to_plan import to_plan
from lowbit.formats import IntFormat, PerGroup
from lowbit.models.quantize import PipelineConfig, quantize_model
from lowbit.models.sources import resolve_model
from lowbit.plan import LayerSpec, Plan
from lowbit.runtime import RuntimeConfig, resolve_runtime
from lowbit.sensitivity.probe import ProbeConfig, measure
from tests.helpers.tiny import make_tiny_model

MENU = (
    LayerSpec(IntFormat(2), PerGroup(16), RTNConfig()),
    LayerSpec(IntFormat(4), PerGroup(16), GPTQConfig()),
    LayerSpec(IntFormat(8), PerGroup(16), RTNConfig()),
)
DOWN_1 = "model.layers.1.mlp.experts.3.down_proj"  # one expert's linear: pins its unit


@pytest.fixture(scope="module")
def moe(tiny_root):
    handle = resolve_model(str(make_tiny_model(tiny_root, "qwen3_moe")))
    calib = torch.randint(
        0, handle.config.vocab_size, (6, 24), generator=torch.Generator().manual_seed(0)
    )
    cfg = ProbeConfig(probe_ctx=16, fisher_windows=2, fisher_ctx=16, chunk_size=3, measure=False)
    rt = resolve_runtime(RuntimeConfig(dtype="float32"))
    return handle, calib, measure(handle, MENU, calib, cfg, runtime=rt)


def test_plan_gives_every_expert_of_a_unit_the_unit_s_spec(moe):
    handle, calib, table = moe
    problem = build_problem(table, "hessian", pins={DOWN_1: 2})
    lo, hi = problem.extremes()
    alloc = solve_exact(problem, AvgBits((lo + 0.1 * (hi - lo)) / problem.n_weights))
    units = [x for x in table.layers if x.members]
    assert len(units) == 6 and {alloc.choice[x.name] for x in units} != {
        alloc.choice[units[0].name]
    }
    plan = to_plan(table, alloc)
    assert Plan.from_dict(plan.to_dict()) == plan
    down = next(x for x in units if DOWN_1 in x.members)
    assert alloc.choice[down.name] == 2
    # one rule per unit off the default, naming all its experts
    assert all(r.target in {x.name for x in table.layers} for r in plan.rules) and down.name in {
        r.target for r in plan.rules
    }
    qm = quantize_model(handle, plan, calib, pipeline=PipelineConfig(chunk_size=3))
    assert set(qm.weights) == set(handle.arch.layer_names())
    for x in table.layers:
        spec = MENU[alloc.choice[x.name]]
        for m in x.member_names:
            qw = qm.weights[m]
            assert (qw.fmt, qw.granularity) == (spec.fmt, spec.granularity), m


def test_pins_by_pattern_and_the_llamacpp_mix_know_units(moe):
    _, _, table = moe
    problem = build_problem(table, "hessian", pins={r"re:.*experts\.0\.gate_proj": 1})
    gates = [x.name for x in table.layers if x.module == "mlp.experts.*.gate_proj"]
    ups = [g.replace("gate_proj", "up_proj") for g in gates]
    pinned = {u.layers: u.options for u in problem.units if u.options != (0, 1, 2)}
    assert pinned == {(g, u): (1,) for g, u in zip(gates, ups, strict=True)}  # fused with up
    mix = llamacpp_mix(table, problem, 0, 2)
    boosted = {n for n, s in mix.choice.items() if s == 2}
    downs = [x for x in table.layers if x.module == "mlp.experts.*.down_proj"]
    assert [x.name in boosted for x in downs] == [
        use_more_bits(x.block, table.n_blocks) for x in downs
    ]
    assert any(x.name in boosted for x in downs)
