"""ExLlamaV3-style greedy allocation: start every unit at its cheapest option and repeatedly
upgrade the unit whose next step buys the most loss per extra stored bit, until the next best
step no longer fits the budget.

A unit's next step is, of its options that store more bits than its current one, the one of
steepest descent (loss saved per extra bit): the next vertex of the unit's lower convex hull,
so the steps of every unit come in order of decreasing slope and the greedy walks the LP
relaxation's path. The walk stops at the first step that does not fit, so the plan at a budget
is a prefix of the plan at any larger budget: stored bits never fall and the predicted loss
never rises as the budget grows. The slope of the step that did not fit is the budget's price
per bit (the LP relaxation's dual), which :mod:`~lowbit.allocation.iterate` uses to find the
units at the decision boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.allocation.problem import Budget, Problem
from lowbit.allocation.solve import Allocation, check_feasible, evaluate_choice


@dataclass(frozen=True)
class Step:
    """Unit ``unit`` (index into ``problem.units``) goes to option ``spec``; ``slope``: loss
    saved per extra bit; ``extra``: the extra bits."""

    unit: int
    spec: int
    slope: float
    extra: int


def cheapest(problem: Problem) -> list[int]:
    """Each unit's option of fewest stored bits (of those, least loss; then lowest index)."""
    return [
        min(u.options, key=lambda s, u=u: (problem.unit_bits(u, s), problem.unit_loss(u, s), s))
        for u in problem.units
    ]


def next_step(problem: Problem, u: int, current: int) -> Step | None:
    """Unit ``u``'s steepest upgrade from ``current``, or None when no costlier option has
    less loss."""
    unit = problem.units[u]
    bits, loss = problem.unit_bits(unit, current), problem.unit_loss(unit, current)
    best: Step | None = None
    for s in unit.options:
        extra = problem.unit_bits(unit, s) - bits
        saved = loss - problem.unit_loss(unit, s)
        if extra <= 0 or saved <= 0:
            continue
        step = Step(u, s, saved / extra, extra)
        if best is None or (step.slope, -step.extra) > (best.slope, -best.extra):
            best = step
    return best


def greedy(problem: Problem, budget: Budget) -> Allocation:
    """The greedy plan within ``budget``; ``info["price"]``: the slope of the first step that
    did not fit (0 when every unit reached its last useful option)."""
    limit = check_feasible(problem, budget)
    state = cheapest(problem)
    used = sum(problem.unit_bits(u, s) for u, s in zip(problem.units, state, strict=True))
    steps = {u: next_step(problem, u, s) for u, s in enumerate(state)}
    price, taken = 0.0, 0
    while True:
        live = [st for st in steps.values() if st is not None]
        if not live:
            break
        best = max(live, key=lambda st: (st.slope, -st.extra, -st.unit))
        if used + best.extra > limit:
            price = best.slope
            break
        state[best.unit], used, taken = best.spec, used + best.extra, taken + 1
        steps[best.unit] = next_step(problem, best.unit, best.spec)
    choice = {n: s for u, s in zip(problem.units, state, strict=True) for n in u.layers}
    out = evaluate_choice(problem, choice, "greedy")
    return Allocation(out.method, out.choice, out.bits, out.loss, {"price": price, "steps": taken})
