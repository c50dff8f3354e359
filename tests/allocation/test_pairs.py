"""Pair terms, ties and allowed specs in the exact allocation, against brute force."""

from __future__ import annotations

import itertools
import random

import pytest

from lowbit.allocation import AvgBits, build_problem, solve_exact
from lowbit.errors import ConfigError
from tests.allocation.test_solve import random_table


def random_pairs(table, seed: int, density: float = 0.5) -> dict:
    """Interaction terms of either sign over random pairs of layers and specs."""
    rng = random.Random(1000 + seed)
    names = [x.name for x in table.layers]
    n = len(table.menu)
    out = {}
    for a, b in itertools.combinations(names, 2):
        for s, t in itertools.product(range(n), repeat=2):
            if rng.random() < density:
                out[(a, s, b, t)] = rng.uniform(-0.3, 0.6)
    return out


def brute_force(problem, limit_bits):
    """The least loss (singles plus pair terms) of every assignment within the budget."""
    best = None
    for combo in itertools.product(*(u.options for u in problem.units)):
        choice = {n: s for u, s in zip(problem.units, combo, strict=True) for n in u.layers}
        bits = sum(problem.bits[(n, s)] for n, s in choice.items())
        loss = problem.predicted(choice)
        if bits <= limit_bits and (best is None or loss < best):
            best = loss
    return best


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("avg", [2.5, 3.0, 3.6])
def test_pair_terms_agree_with_brute_force(seed, avg):
    table = random_table(seed)  # 6 layers x 3 specs
    pairs = random_pairs(table, seed)
    problem = build_problem(table, "kl", fuse=False, pairs=pairs)
    assert len(problem.units) == 6
    budget = AvgBits(avg)
    alloc = solve_exact(problem, budget)
    assert alloc.bits <= budget.linear_bits(problem)
    assert alloc.loss == pytest.approx(problem.predicted(alloc.choice), abs=1e-12)
    assert alloc.loss == pytest.approx(brute_force(problem, budget.linear_bits(problem)), abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_pairs_within_a_fused_unit_fold_into_its_loss(seed):
    table = random_table(seed)
    pairs = random_pairs(table, seed, density=1.0)
    problem = build_problem(table, "kl", fuse=True, pairs=pairs)
    assert len(problem.units) == 4
    assert problem.unit_extra  # q/k pairs at one spec
    alloc = solve_exact(problem, AvgBits(3.0))
    assert alloc.loss == pytest.approx(brute_force(problem, AvgBits(3.0).linear_bits(problem)))


@pytest.mark.parametrize("seed", range(8))
def test_without_pair_terms_nothing_changes(seed):
    table = random_table(seed)
    plain = build_problem(table, "kl", fuse=False)
    zero = {k: 0.0 for k in random_pairs(table, seed)}
    zeroed = build_problem(table, "kl", fuse=False, pairs=zero)
    for avg in (2.5, 3.0, 3.6):
        a, b = solve_exact(plain, AvgBits(avg)), solve_exact(zeroed, AvgBits(avg))
        assert a.loss == pytest.approx(b.loss, abs=1e-12)
        assert a.loss == pytest.approx(sum(plain.loss[k] for k in a.choice.items()), abs=1e-12)


def test_a_negative_interaction_changes_the_choice():
    """Two layers that hurt less together than apart are both lowered when that pays."""
    table = random_table(0)
    problem = build_problem(table, "kl", fuse=False)
    alloc = solve_exact(problem, AvgBits(3.0))
    a, b = [x.name for x in table.layers if alloc.choice[x.name] > 0][:2]
    bonus = {(a, 0, b, 0): -(problem.loss[(a, 0)] + problem.loss[(b, 0)]) * 10}
    paired = solve_exact(build_problem(table, "kl", fuse=False, pairs=bonus), AvgBits(3.0))
    assert (paired.choice[a], paired.choice[b]) == (0, 0)


def test_ties_and_allowed_specs_are_obeyed():
    table = random_table(3)
    names = [x.name for x in table.layers]
    tie = (names[2], names[5])  # the two down projections
    allowed = {names[0]: (0, 2), names[1]: (0, 2)}
    problem = build_problem(table, "kl", ties=[tie], allowed=allowed)
    assert len(problem.units) == 3
    for avg in (2.4, 3.0, 3.8):
        alloc = solve_exact(problem, AvgBits(avg))
        assert alloc.choice[tie[0]] == alloc.choice[tie[1]]
        assert alloc.choice[names[0]] in (0, 2)
        assert alloc.loss == pytest.approx(brute_force(problem, AvgBits(avg).linear_bits(problem)))


def test_bad_ties_allowed_and_pairs_name_the_layer():
    table = random_table(0)
    names = [x.name for x in table.layers]
    with pytest.raises(ConfigError, match="lacks: model.layers.9.x"):
        build_problem(table, "kl", ties=[(names[0], "model.layers.9.x")])
    with pytest.raises(ConfigError, match="no spec of the menu"):
        build_problem(table, "kl", allowed={names[0]: (0,), names[1]: (1,)})
    with pytest.raises(ConfigError, match="'nope'"):
        build_problem(table, "kl", pairs={(names[0], 0, "nope", 1): 0.1})
    with pytest.raises(ConfigError, match="may not take"):
        build_problem(table, "kl", pins={names[2]: 1}, allowed={names[2]: (0, 2)})


def test_a_budget_above_the_menu_names_the_range():
    problem = build_problem(random_table(0), "kl")
    with pytest.raises(ConfigError, match="largest useful one 4.2500 bits per weight"):
        solve_exact(problem, AvgBits(5.0))
