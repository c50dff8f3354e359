"""The exact allocation against brute force, the budget, fused groups, pins, monotonicity."""

from __future__ import annotations

import itertools
import random

import pytest

from lowbit.allocation import AvgBits, MaxBytes, build_problem, solve_exact, spec_index
from lowbit.allocation.heuristic import llamacpp_for_budget, llamacpp_mix, uniform, use_more_bits
from lowbit.allocation.to_plan import to_plan
from lowbit.errors import ConfigError
from lowbit.formats import IntFormat, PerGroup
from lowbit.plan import LayerSpec, Plan
from lowbit.sensitivity.table import Entry, LayerInfo, SensitivityTable

MODULES = ("self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj")
MENU = tuple(LayerSpec(IntFormat(b), PerGroup(64)) for b in (2, 3, 4))


def random_table(seed: int, n_blocks: int = 2, menu=MENU) -> SensitivityTable:
    rng = random.Random(seed)
    layers = tuple(
        LayerInfo(f"model.layers.{b}.{m}", b, m, rng.choice([32, 64]), 64)
        for b in range(n_blocks)
        for m in MODULES
    )
    entries = {}
    for info in layers:
        loss = sorted((rng.random() for _ in menu), reverse=True)
        for s, spec in enumerate(menu):
            bits = round(spec.bits_per_weight(info.out_features, info.in_features) * info.numel)
            entries[(info.name, s)] = Entry(info.name, s, bits, loss[s], loss[s] * 2, None)
    fused = tuple(
        (f"model.layers.{b}.{MODULES[0]}", f"model.layers.{b}.{MODULES[1]}")
        for b in range(n_blocks)
    )
    return SensitivityTable(
        {"source": "r", "fingerprint": "f"},
        menu,
        layers,
        entries,
        fused=fused,
        value_and_down=("mlp.down_proj",),
        n_blocks=n_blocks,
        other_bytes=500,
    )


def brute_force(problem, limit_bits):
    best = None
    for combo in itertools.product(*(u.options for u in problem.units)):
        bits = sum(problem.unit_bits(u, s) for u, s in zip(problem.units, combo, strict=True))
        loss = sum(problem.unit_loss(u, s) for u, s in zip(problem.units, combo, strict=True))
        if bits <= limit_bits and (best is None or loss < best):
            best = loss
    return best


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("avg", [2.3, 2.8, 3.3, 4.0])
@pytest.mark.parametrize("fuse", [True, False])
def test_exact_equals_brute_force_and_fits(seed, avg, fuse):
    problem = build_problem(random_table(seed), "kl", fuse=fuse)
    budget = AvgBits(avg)
    lo, _ = problem.extremes()
    if budget.linear_bits(problem) < lo:
        with pytest.raises(ConfigError, match="smallest achievable"):
            solve_exact(problem, budget)
        return
    alloc = solve_exact(problem, budget)
    assert alloc.bits <= budget.linear_bits(problem)
    assert alloc.loss == pytest.approx(brute_force(problem, budget.linear_bits(problem)), abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_fused_layers_always_share_a_spec(seed):
    table = random_table(seed, n_blocks=3)
    problem = build_problem(table, "kl")
    for avg in (2.5, 3.0, 3.5):
        alloc = solve_exact(problem, AvgBits(avg))
        for group in table.fused:
            assert len({alloc.choice[n] for n in group}) == 1


@pytest.mark.parametrize("seed", range(5))
def test_a_larger_budget_never_predicts_more_loss(seed):
    problem = build_problem(random_table(seed, n_blocks=3), "hessian")
    losses = [solve_exact(problem, AvgBits(b)).loss for b in (2.4, 2.6, 2.8, 3.0, 3.4, 3.8, 4.25)]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(losses))


def test_byte_budget_counts_the_rest_of_the_model():
    table = random_table(0)
    problem = build_problem(table, "kl")
    alloc = solve_exact(problem, AvgBits(3.0))
    exact_bytes = alloc.bits // 8 + table.other_bytes
    same = solve_exact(problem, MaxBytes(exact_bytes + 1))
    assert same.bits // 8 + table.other_bytes <= exact_bytes + 1
    assert same.loss <= alloc.loss + 1e-12


def test_infeasible_budget_states_the_range():
    problem = build_problem(random_table(0), "kl")
    with pytest.raises(ConfigError) as err:
        solve_exact(problem, AvgBits(1.0))
    message = str(err.value)
    assert "smallest achievable is 2.2500 bits per weight" in message
    assert "largest useful one 4.2500 bits per weight" in message
    with pytest.raises(ConfigError, match="bytes"):
        solve_exact(problem, MaxBytes(600))


def test_pins_are_obeyed_and_checked():
    table = random_table(1)
    name = "model.layers.1.mlp.down_proj"
    problem = build_problem(table, "kl", pins={name: 2, "re:.*layers\\.0\\..*": 0})
    alloc = solve_exact(problem, AvgBits(3.0))
    assert alloc.choice[name] == 2
    assert all(alloc.choice[f"model.layers.0.{m}"] == 0 for m in MODULES)
    with pytest.raises(ConfigError, match="did you mean model.layers.1.mlp.down_proj"):
        build_problem(table, "kl", pins={"model.layers.1.mlp.down_prj": 1})
    with pytest.raises(ConfigError, match="matches no layer"):
        build_problem(table, "kl", pins={"re:nothing": 1})
    with pytest.raises(ConfigError, match="not in the menu"):
        build_problem(table, "kl", pins={name: 7})
    with pytest.raises(ConfigError, match="different specs"):
        build_problem(
            table,
            "kl",
            pins={"model.layers.0.self_attn.q_proj": 0, "model.layers.0.self_attn.k_proj": 1},
        )


def test_spec_index_by_label_or_number():
    labels = random_table(0).labels
    assert spec_index("1", labels) == 1
    assert spec_index("GPTQ W4 g64 sym", labels) == 2
    with pytest.raises(ConfigError, match="did you mean 'GPTQ W4 g64 sym'"):
        spec_index("GPTQ W4 g64 sim", labels)


def test_missing_metric_is_refused():
    with pytest.raises(ConfigError, match="no 'fisher' values"):
        build_problem(random_table(0), "fisher")
    with pytest.raises(ConfigError, match="unknown loss metric"):
        build_problem(random_table(0), "mse")


def test_use_more_bits_matches_llamacpp_for_30_blocks():
    # n/8 = 3, 7n/8 = 26: blocks 0-2, 26-29, and 5, 8, ..., 23 ((i - 3) % 3 == 2)
    expected = {0, 1, 2, 26, 27, 28, 29} | set(range(5, 26, 3))
    assert {i for i in range(30) if use_more_bits(i, 30)} == expected


def test_llamacpp_mix_boosts_value_and_down_only():
    table = random_table(0, n_blocks=8)
    problem = build_problem(table, "kl", fuse=False)
    mix = llamacpp_mix(table, problem, 0, 2)
    boosted = {n for n, s in mix.choice.items() if s == 2}
    assert boosted == {
        "model.layers.0.mlp.down_proj",
        "model.layers.7.mlp.down_proj",
        "model.layers.3.mlp.down_proj",
        "model.layers.6.mlp.down_proj",
    }


def test_heuristic_for_budget_spends_the_most_within_it():
    table = random_table(2, n_blocks=8)
    problem = build_problem(table, "kl", fuse=False)
    limit = AvgBits(3.3)
    chosen = llamacpp_for_budget(table, problem, limit)
    assert chosen.bits <= limit.linear_bits(problem)
    assert chosen.bits >= uniform(problem, 1).bits


def test_plan_from_allocation_resolves_to_the_choice():
    table = random_table(3, n_blocks=3)
    alloc = solve_exact(build_problem(table, "kl"), AvgBits(3.0))
    plan = Plan.from_dict(to_plan(table, alloc).to_dict())
    resolved = plan.resolve([x.name for x in table.layers])
    assert {n: table.menu.index(s) for n, s in resolved.items()} == alloc.choice
