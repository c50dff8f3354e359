"""The ExLlamaV3-style greedy (budget, monotone in budget, the LP relaxation's path) and the
iterated in-context allocation on a synthetic non-additive model (never worse than its first
plan, deterministic, bad budgets named)."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from lowbit.allocation import AvgBits, build_problem, solve_exact
from lowbit.allocation.greedy import cheapest, greedy
from lowbit.allocation.iterate import (
    STARTS,
    IterateConfig,
    additive_start,
    cheapest_start,
    check_reachable,
    iterate,
    uniform_start,
    unit_choice,
)
from lowbit.errors import ConfigError, UnknownNameError
from tests.allocation.test_solve import random_table


def test_greedy_fits_the_budget_and_is_monotone_in_it():
    for seed in range(4):
        problem = build_problem(random_table(seed, n_blocks=3), "kl")
        lo, hi = problem.extremes()
        last = None
        for k in range(11):
            bits = (lo + (hi - lo) * k / 10) / problem.n_weights
            alloc = greedy(problem, AvgBits(bits + 1e-9))
            assert alloc.bits <= (bits + 1e-9) * problem.n_weights
            if last is not None:
                assert alloc.bits >= last.bits
                assert alloc.loss <= last.loss + 1e-12
                # a prefix of the same walk: every unit at least where it was
                assert all(
                    problem.unit_bits(u, alloc.choice[u.layers[0]])
                    >= problem.unit_bits(u, last.choice[u.layers[0]])
                    for u in problem.units
                )
            last = alloc
        assert last is not None and last.bits == hi  # the whole menu used at the top


def test_greedy_never_beats_the_exact_solver_and_starts_at_the_cheapest():
    problem = build_problem(random_table(7, n_blocks=2), "kl")
    lo, _ = problem.extremes()
    low = greedy(problem, AvgBits(lo / problem.n_weights))
    assert [low.choice[u.layers[0]] for u in problem.units] == cheapest(problem)
    for bpw in (2.6, 3.0, 3.5):
        g, e = greedy(problem, AvgBits(bpw)), solve_exact(problem, AvgBits(bpw))
        assert e.loss <= g.loss + 1e-12


class Interacting:
    """A model whose KL is not additive: the errors of the units of one block compound
    (KL = Σ_u e_u + c · Σ_block (Σ_{u in block} e_u)²), with a counter of what was measured."""

    def __init__(self, problem, seed: int, c: float = 3.0) -> None:
        rng = random.Random(seed)
        self.problem, self.c, self.calls = problem, c, 0
        self.err = [
            {s: rng.random() * 2.0 ** (-3 * k) for k, s in enumerate(u.options)}
            for u in problem.units
        ]
        self.block = [int(u.layers[0].split(".")[2]) for u in problem.units]

    def kl(self, context):
        per_block: dict[int, float] = {}
        for u, s in enumerate(context):
            per_block[self.block[u]] = per_block.get(self.block[u], 0.0) + self.err[u][s]
        return sum(per_block.values()) + self.c * sum(v * v for v in per_block.values())

    def curves(self, context, units):
        self.calls += len(units)
        out = {}
        for u in units:
            out[u] = {}
            for s in self.problem.units[u].options:
                changed = list(context)
                changed[u] = s
                out[u][s] = self.kl(tuple(changed))
        return out

    def stats(self):
        return {"unit_measurements": float(self.calls)}


@pytest.mark.parametrize("seed", range(6))
def test_iterated_plan_is_never_worse_than_the_first_plan(seed):
    problem = build_problem(random_table(seed, n_blocks=3), "kl")
    model = Interacting(problem, seed)
    for bpw in (2.75, 3.25, 3.75):
        result = iterate(problem, AvgBits(bpw), model, IterateConfig(rounds=4, boundary=3))
        first = result.rounds[0]
        assert result.best.info["measured_kl"] <= first.measured_kl
        assert result.best.bits <= bpw * problem.n_weights
        # every round's measured KL is the model's, and the best is the least of them
        for r in result.rounds:
            assert r.measured_kl == pytest.approx(model.kl(r.choice), rel=1e-12)
        kls = [result.base_kl, *(r.measured_kl for r in result.rounds)]
        assert result.best.info["measured_kl"] == min(kls)
        assert result.base_kl == pytest.approx(
            model.kl(uniform_start(problem, AvgBits(bpw)).choice)
        )
        # the first plan is the exact solver's on the curves measured in the start plan
        assert first.measured_kl == pytest.approx(
            model.kl(tuple(result.first.choice[u.layers[0]] for u in problem.units))
        )
        assert result.stopped in ("plan unchanged", "round limit")


def test_uniform_start_is_the_costliest_uniform_plan_within_the_budget():
    problem = build_problem(random_table(2, n_blocks=3), "kl")
    uniform_bits = [
        sum(problem.unit_bits(u, s) for u in problem.units) for s in range(len(problem.labels))
    ]
    assert uniform_bits == sorted(uniform_bits)  # the menu runs from cheapest to costliest
    for s, bits in enumerate(uniform_bits):
        for extra in (0, 1):  # exactly the plan's bits, and one bit more
            budget = AvgBits((bits + extra) / problem.n_weights)
            start = uniform_start(problem, budget)
            assert start.choice == tuple(s for _ in problem.units)
            assert start.describe == f"uniform {problem.labels[s]}"
        if s + 1 < len(uniform_bits):  # just below the next uniform plan: still this one
            budget = AvgBits((uniform_bits[s + 1] - 1) / problem.n_weights)
            assert uniform_start(problem, budget).choice == tuple(s for _ in problem.units)
    budget = AvgBits(uniform_bits[-1] / problem.n_weights)
    assert cheapest_start(problem, budget).choice == tuple(cheapest(problem))


def test_the_start_plan_wins_when_no_round_measures_better():
    """A measurer whose every plan but the start measures worse: the result is the start."""
    problem = build_problem(random_table(1, n_blocks=2), "kl")
    budget = AvgBits(3.25)
    start = uniform_start(problem, budget).choice

    class StartIsBest(Interacting):
        def kl(self, context):
            return 1.0 if context == start else 2.0 + super().kl(context)

    result = iterate(problem, budget, StartIsBest(problem, 1), IterateConfig(3, 2))
    assert result.best.info == {"round": 0.0, "measured_kl": 1.0}
    assert tuple(result.best.choice[u.layers[0]] for u in problem.units) == start
    assert result.start.startswith("uniform ") and result.base_kl == 1.0
    with pytest.raises(UnknownNameError, match="unknown in-context start plan 'middle'"):
        IterateConfig(start="middle")


def test_the_additive_start_is_the_exact_plan_and_never_measures_worse():
    """``additive``: the first context is the exact plan on the problem's own (single-layer)
    losses; the result is the start or a round that measured below it."""
    assert STARTS.get("additive").reads_losses and not STARTS.get("uniform").reads_losses
    for seed, bpw in itertools.product(range(3), (2.75, 3.25)):
        problem = build_problem(random_table(seed, n_blocks=3), "kl")
        budget = AvgBits(bpw)
        start = additive_start(problem, budget)
        assert start.choice == unit_choice(problem, solve_exact(problem, budget))
        model = Interacting(problem, seed, c=8.0)
        result = iterate(problem, budget, model, IterateConfig(3, 2, "additive"))
        assert result.start == "additive (the exact single-layer plan)"
        assert result.base_kl == model.kl(start.choice)
        assert result.best.info["measured_kl"] == min(
            [result.base_kl, *(r.measured_kl for r in result.rounds)]
        )
        assert result.best.bits <= bpw * problem.n_weights


def test_a_selector_chooses_among_the_start_and_the_rounds_by_its_own_kl():
    """With a selector (held-out windows) the result is the candidate of least KL there, not on
    the measurements the rounds fitted: a selector that prefers the start plan gets it, one
    that agrees with the measurer changes nothing; each candidate is scored once."""
    problem = build_problem(random_table(4, n_blocks=3), "kl")
    budget = AvgBits(3.25)
    model = Interacting(problem, 4, c=8.0)
    plain = iterate(problem, budget, model, IterateConfig(3, 2))
    assert plain.selection is None and plain.best.info["round"] > 0  # a round won
    start = uniform_start(problem, budget).choice

    class PrefersStart:
        def __init__(self):
            self.scored = []

        def kl(self, context):
            self.scored.append(context)
            return 0.5 if context == start else 1.0 + model.kl(context)

    chooser = PrefersStart()
    picked = iterate(problem, budget, model, IterateConfig(3, 2), selector=chooser)
    assert picked.best.info == {"round": 0.0, "measured_kl": picked.base_kl, "selection_kl": 0.5}
    assert unit_choice(problem, picked.best) == start
    assert sorted(picked.selection) == list(range(len(picked.rounds) + 1))
    assert len(chooser.scored) == len(picked.rounds) + 1
    same = iterate(problem, budget, model, IterateConfig(3, 2), selector=model)
    assert same.best.choice == plain.best.choice


def test_iteration_records_rounds_and_is_deterministic():
    problem = build_problem(random_table(3, n_blocks=3), "kl")
    runs = [
        iterate(problem, AvgBits(3.25), Interacting(problem, 3), IterateConfig(3, 2))
        for _ in range(2)
    ]
    a, b = runs
    assert a.best.choice == b.best.choice
    assert [r.measured_kl for r in a.rounds] == [r.measured_kl for r in b.rounds]
    assert 1 <= len(a.rounds) <= 3
    assert a.rounds[0].remeasured == len(problem.units)  # the first measures every unit
    assert all(r.remeasured <= 2 for r in a.rounds[1:])
    assert all(math.isfinite(r.predicted_kl) for r in a.rounds)


def test_iteration_improves_on_a_strongly_interacting_model_somewhere():
    """Not a guarantee, but the mechanism must be able to find a better plan: over a few
    seeds and budgets at least one iterated plan measures below its first plan."""
    better = 0
    for seed, bpw in itertools.product(range(6), (2.75, 3.25)):
        problem = build_problem(random_table(seed, n_blocks=4), "kl")
        result = iterate(
            problem, AvgBits(bpw), Interacting(problem, seed, c=8.0), IterateConfig(4, 4)
        )
        better += result.best.info["measured_kl"] < result.rounds[0].measured_kl
    assert better >= 1


def test_budgets_outside_the_menu_name_the_range():
    problem = build_problem(random_table(0), "kl")
    with pytest.raises(ConfigError, match=r"smallest achievable is 2\.\d+ bits.*largest"):
        check_reachable(problem, AvgBits(1.0))
    with pytest.raises(
        ConfigError, match=r"smallest achievable is 2\.\d+ .*largest useful one 4\.\d+ bits"
    ):
        check_reachable(problem, AvgBits(9.0))
    with pytest.raises(ConfigError, match="smallest achievable"):
        greedy(problem, AvgBits(1.0))
    with pytest.raises(ConfigError, match="rounds must be at least 1"):
        IterateConfig(rounds=0)
