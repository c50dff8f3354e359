"""Iterated in-context allocation: measure each unit's options inside a quantized model,
allocate, quantize the plan, re-measure the units at the decision boundary inside the new plan,
re-allocate, until the plan stops changing or the round limit; the plan of least measured KL
among the start plan and the rounds' wins, so the result is never worse (measured) than either.

Where the first measurement happens is a registered *start rule* (``IterateConfig.start``):
``uniform`` (default), the costliest uniform plan the budget affords, so every unit's gains and
losses are measured at the error level of the plans the budget allows; ``additive``, the exact
plan on the problem's own losses (the sensitivity table's single-layer values, assumed to add
up), so the iteration corrects the classic plan where the measurement inside it disagrees, and
its result measures no worse than that plan; or ``cheapest``, every unit at its cheapest option
(the menu's low end). Measured on the built-in model, the cheapest start is too broken a
context (all-INT2 KL 8.4): most upgrades show no gain there and the plans leave half of a 4-bit
budget unspent (BENCHMARKS.md, in-context section).

The measurements come from a :class:`Measurer` (the model plumbing lives in
:mod:`lowbit.sensitivity.incontext`); this module is pure bookkeeping and the solver. A unit's
*curve* is the measured KL of the model with that unit at each option and every other unit at
the context's option. Only differences within one curve matter to the solver (each unit takes
one option), so the loss the solver sees for unit u at option s is
``(curve_u[s] − curve_u[context_u]) × KL(now) / KL(context)``: a curve measured in an older
context is scaled by how much the model's KL has changed since (the assumption: a unit's gains
scale with the error of the model around it). The predicted KL of a plan is the current plan's
measured KL plus the summed loss differences.

The decision boundary: the greedy walk on the same losses gives the budget's price per bit
(:mod:`~lowbit.allocation.greedy`); a unit's margin is how much worse its best alternative
option is at that price; the ``boundary`` units of least margin are re-measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from lowbit._registry import Registry
from lowbit.allocation.greedy import cheapest, greedy
from lowbit.allocation.problem import Budget, Problem
from lowbit.allocation.solve import Allocation, check_feasible, evaluate_choice, solve_exact
from lowbit.errors import ConfigError

Curves = dict[int, dict[int, float]]  # unit index → option → measured KL


class Scorer(Protocol):
    """Measured KL of plans given as one option per unit of the problem."""

    def kl(self, context: tuple[int, ...]) -> float: ...


class Measurer(Protocol):
    """Measured KL of plans given as one option per unit of the problem, and of each unit's
    options inside a plan."""

    def kl(self, context: tuple[int, ...]) -> float: ...

    def curves(self, context: tuple[int, ...], units: list[int]) -> Curves: ...

    def stats(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class Start:
    """The plan the first measurement is made in, and how it was chosen."""

    choice: tuple[int, ...]
    describe: str


@dataclass(frozen=True)
class StartRule:
    """``pick``: (problem, budget) → the first context; ``reads_losses``: it solves on the
    problem's losses, so they must be the sensitivity table's values of the user's metric (the
    other rules read only the units and their bits)."""

    pick: Callable[[Problem, Budget], Start]
    reads_losses: bool = False


# in-context start plans by name (IterateConfig.start)
STARTS: Registry[StartRule] = Registry("in-context start plan")


def cheapest_start(problem: Problem, budget: Budget) -> Start:
    return Start(tuple(cheapest(problem)), "cheapest")


def uniform_start(problem: Problem, budget: Budget) -> Start:
    """Every unit at the one menu spec of most stored bits that fits the budget, among the
    specs every unit admits; the cheapest plan, said so, when none fits (a deployment target
    whose units admit no common spec within the budget)."""
    limit = check_feasible(problem, budget)
    common = set.intersection(*(set(u.options) for u in problem.units))
    fits = []
    for s in sorted(common):
        bits = sum(problem.unit_bits(u, s) for u in problem.units)
        if bits <= limit:
            fits.append((bits, s))
    if not fits:
        return Start(tuple(cheapest(problem)), "cheapest (no uniform plan fits the budget)")
    spec = max(fits)[1]
    return Start(tuple(spec for _ in problem.units), f"uniform {problem.labels[spec]}")


def additive_start(problem: Problem, budget: Budget) -> Start:
    """The exact plan on the problem's own losses: the single-layer plan, assumed additive."""
    alloc = solve_exact(problem, budget)
    return Start(unit_choice(problem, alloc), "additive (the exact single-layer plan)")


STARTS.register("uniform", StartRule(uniform_start))
STARTS.register("additive", StartRule(additive_start, reads_losses=True))
STARTS.register("cheapest", StartRule(cheapest_start))


@dataclass(frozen=True)
class IterateConfig:
    """``rounds``: allocations at most (the first on the measurements in the start plan);
    ``boundary``: units re-measured after each allocation; ``start``: a rule of
    :data:`STARTS`."""

    rounds: int = 3
    boundary: int = 16
    start: str = "uniform"

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"in-context rounds must be at least 1, got {self.rounds}")
        if self.boundary < 1:
            raise ConfigError(f"in-context boundary units must be at least 1, got {self.boundary}")
        STARTS.get(self.start)  # validates the name


@dataclass(frozen=True)
class Round:
    index: int
    choice: tuple[int, ...]
    predicted_kl: float
    measured_kl: float
    remeasured: int  # units measured before this round's allocation
    stats: dict[str, float]  # the measurer's running totals after this round


@dataclass
class Iterated:
    """The best measured plan, the first plan, and every round."""

    best: Allocation
    first: Allocation
    rounds: list[Round]
    stopped: str
    base_kl: float  # the start plan's measured KL
    start: str  # the start plan, described
    curves: Curves = field(repr=False, default_factory=dict)
    selection: dict[int, float] | None = None  # round → KL on the selection windows


Solver = Callable[[Problem, Budget], Allocation]


def check_reachable(problem: Problem, budget: Budget) -> float:
    """The budget in bits; an error names the menu's range when it lies outside it (either
    end: :func:`~lowbit.allocation.solve.check_feasible`)."""
    return check_feasible(problem, budget)


def with_unit_losses(problem: Problem, losses: dict[int, dict[int, float]]) -> Problem:
    """``problem`` whose unit u costs ``losses[u][s]`` at option s (carried by the unit's first
    layer; the other layers of a fused unit cost 0)."""
    loss = {}
    for u, unit in enumerate(problem.units):
        for k, name in enumerate(unit.layers):
            for s in unit.options:
                loss[(name, s)] = losses[u][s] if k == 0 else 0.0
    return Problem(
        problem.units, problem.bits, loss, problem.n_weights, problem.other_bytes, problem.labels
    )


def unit_choice(problem: Problem, alloc: Allocation) -> tuple[int, ...]:
    return tuple(alloc.choice[u.layers[0]] for u in problem.units)


def iterate(
    problem: Problem,
    budget: Budget,
    measurer: Measurer,
    cfg: IterateConfig = IterateConfig(),
    solve: Solver = solve_exact,
    selector: Scorer | None = None,
) -> Iterated:
    """Allocate with ``solve`` on in-context measurements, re-measuring the boundary units
    after each allocation (see the module's docstring). The plan of least measured KL among
    the start plan and every round's wins (round 0: the start plan); with a ``selector``, the
    plan of least KL on its windows (held out from the measurements the rounds fitted, so the
    choice among them is not biased towards the one that fits the probe's noise best)."""
    check_reachable(problem, budget)
    begin = STARTS.get(cfg.start).pick(problem, budget)
    base = measurer.kl(begin.choice)
    everyone = list(range(len(problem.units)))
    state = _State(problem, measurer.curves(begin.choice, everyone))
    state.record(begin.choice, everyone, base)
    rounds, first, stopped = _rounds(problem, budget, measurer, cfg, solve, state, begin, base)
    candidates = [Round(0, begin.choice, base, base, 0, {}), *rounds]
    selection = None if selector is None else {c.index: selector.kl(c.choice) for c in candidates}
    score = selection or {c.index: c.measured_kl for c in candidates}
    best = min(candidates, key=lambda x: (score[x.index], x.index))
    names = {n: s for u, s in zip(problem.units, best.choice, strict=True) for n in u.layers}
    final = evaluate_choice(problem, names, "in-context")
    info = {"round": float(best.index), "measured_kl": best.measured_kl}
    if selection is not None:
        info["selection_kl"] = selection[best.index]
    return Iterated(
        Allocation(final.method, final.choice, final.bits, best.predicted_kl, info),
        first,
        rounds,
        stopped,
        base,
        begin.describe,
        state.curves,
        selection,
    )


def _rounds(
    problem: Problem,
    budget: Budget,
    measurer: Measurer,
    cfg: IterateConfig,
    solve: Solver,
    state: _State,
    begin: Start,
    base: float,
) -> tuple[list[Round], Allocation, str]:
    """Allocate, measure the plan, re-measure its boundary units; until the plan repeats or
    ``cfg.rounds``. Returns the rounds, the first allocation and why it stopped."""
    start = begin.choice
    rounds: list[Round] = []
    measured: dict[tuple[int, ...], float] = {start: base}
    previous: tuple[int, ...] | None = None
    remeasured, now, stopped = len(problem.units), base, "round limit"
    first: Allocation | None = None
    for r in range(1, cfg.rounds + 1):
        losses = state.problem(now)
        alloc = solve(losses, budget)
        choice = unit_choice(problem, alloc)
        if choice == previous:
            stopped = "plan unchanged"
            break
        first = first or alloc
        predicted = now + alloc.loss - _loss_at(losses, previous or start)
        if choice not in measured:
            measured[choice] = measurer.kl(choice)
        now = measured[choice]
        rounds.append(Round(r, choice, predicted, now, remeasured, dict(measurer.stats())))
        previous = choice
        if r == cfg.rounds:
            break
        units = boundary(losses, budget, choice, cfg.boundary)
        state.record(choice, units, now, measurer.curves(choice, units))
        remeasured = len(units)
    assert first is not None
    return rounds, first, stopped


def boundary(losses: Problem, budget: Budget, choice: tuple[int, ...], k: int) -> list[int]:
    """The ``k`` units whose chosen option is most marginal at the budget's price per bit."""
    price = greedy(losses, budget).info["price"]
    margins = []
    for u, (unit, s) in enumerate(zip(losses.units, choice, strict=True)):
        here = losses.unit_loss(unit, s) + price * losses.unit_bits(unit, s)
        others = [
            losses.unit_loss(unit, t) + price * losses.unit_bits(unit, t) - here
            for t in unit.options
            if t != s
        ]
        margins.append((min(others, default=float("inf")), u))
    return sorted(u for _, u in sorted(margins)[:k])


def _loss_at(losses: Problem, choice: tuple[int, ...]) -> float:
    return sum(losses.unit_loss(u, s) for u, s in zip(losses.units, choice, strict=True))


@dataclass
class _State:
    """Each unit's latest curve, the option it had and the model's KL when it was measured."""

    base: Problem
    curves: Curves
    at: dict[int, int] = field(default_factory=dict)
    level: dict[int, float] = field(default_factory=dict)

    def record(
        self, context: tuple[int, ...], units: list[int], kl: float, new: Curves | None = None
    ) -> None:
        self.curves.update(new or {})
        for u in units:
            self.at[u], self.level[u] = context[u], kl

    def problem(self, now: float) -> Problem:
        losses = {}
        for u, curve in self.curves.items():
            scale = now / self.level[u] if self.level[u] > 0 else 1.0
            ref = curve[self.at[u]]
            losses[u] = {s: (v - ref) * scale for s, v in curve.items()}
        return with_unit_losses(self.base, losses)


def curves_problem(problem: Problem, curves: Curves, base: float) -> Problem:
    """``problem`` costed by curves all measured in one context of KL ``base``: unit u at
    option s costs its measured KL minus the base, divided evenly so that a plan's summed
    loss predicts its KL under additivity (the base plus the summed differences)."""
    share = base / max(len(problem.units), 1)
    return with_unit_losses(
        problem, {u: {s: v - base + share for s, v in c.items()} for u, c in curves.items()}
    )
