"""Exact allocation: one spec per unit minimising the summed predicted loss under a budget of
stored bits, as a 0/1 integer program solved by HiGHS through scipy's MILP interface."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lowbit.allocation.problem import AvgBits, Budget, Problem
from lowbit.errors import ConfigError, LowbitError


@dataclass(frozen=True)
class Allocation:
    """``choice``: menu index per layer; ``bits``: stored bits of the linear layers;
    ``loss``: the predicted loss (sum of the table's values)."""

    method: str
    choice: dict[str, int]
    bits: int
    loss: float
    info: dict[str, float] = field(default_factory=dict)

    def bits_per_weight(self, problem: Problem) -> float:
        return self.bits / problem.n_weights


def evaluate_choice(problem: Problem, choice: dict[str, int], method: str) -> Allocation:
    bits = sum(problem.bits[(n, s)] for n, s in choice.items())
    return Allocation(method, dict(choice), bits, problem.predicted(choice))


def check_feasible(problem: Problem, budget: Budget) -> float:
    """The budget in bits for the linear layers; an error names the achievable range (an
    average above the menu's largest cannot be spent either)."""
    limit = budget.linear_bits(problem)
    lo, hi = problem.extremes()
    above = isinstance(budget, AvgBits) and limit > hi + 5e-5 * problem.n_weights  # 4 decimals
    if limit < lo or above:
        raise ConfigError(
            f"the budget {budget.describe(limit, problem)} cannot be met: the smallest "
            f"achievable is {budget.describe(lo, problem)} and the largest useful one "
            f"{budget.describe(hi, problem)} (menu: {', '.join(problem.labels)}); choose a "
            "budget in that range"
        )
    return limit


def solve_exact(problem: Problem, budget: Budget) -> Allocation:
    """The assignment of least predicted loss whose stored bits fit the budget (proved optimal
    by the solver: relative MIP gap 0). Pair terms of ``problem`` enter as variables
    y = x_is · x_jt, linearised by y ≤ x_is, y ≤ x_jt, y ≥ x_is + x_jt − 1 (exact for 0/1 x)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    limit = check_feasible(problem, budget)
    index = [(u, s) for u, unit in enumerate(problem.units) for s in unit.options]
    column = {key: j for j, key in enumerate(index)}
    pairs = [
        (column[(i, s)], column[(j, t)], d)
        for (i, s, j, t), d in problem.pairs.items()
        if (i, s) in column and (j, t) in column
    ]
    n_x, n = len(index), len(index) + len(pairs)
    loss = np.array(
        [problem.unit_loss(problem.units[u], s) for u, s in index] + [d for _, _, d in pairs]
    )
    bits = np.zeros(n)
    bits[:n_x] = [problem.unit_bits(problem.units[u], s) for u, s in index]
    scale_loss = float(np.abs(loss).max()) or 1.0
    scale_bits = float(problem.n_weights)
    onehot = np.zeros((len(problem.units), n))
    for j, (u, _) in enumerate(index):
        onehot[u, j] = 1.0
    integrality = np.zeros(n)
    integrality[:n_x] = 1.0
    slack = 0.0
    for _ in range(5):
        cap = (limit - slack) / scale_bits
        res = milp(
            c=loss / scale_loss,
            constraints=[
                LinearConstraint(onehot, 1.0, 1.0),
                LinearConstraint((bits / scale_bits)[None, :], -np.inf, cap),
                *_products(pairs, n_x, n),
            ],
            integrality=integrality,
            bounds=Bounds(0.0, 1.0),
            options={"mip_rel_gap": 0.0},
        )
        if res.x is None:
            raise LowbitError(f"the MILP solver found no solution: {res.message}")
        picked = [index[j] for j in np.flatnonzero(res.x[:n_x] > 0.5)]
        choice = {n: s for u, s in picked for n in problem.units[u].layers}
        out = evaluate_choice(problem, choice, "exact")
        if out.bits <= limit:  # exact integer check: tolerances never exceed the budget
            info = {"mip_gap": float(getattr(res, "mip_gap", 0.0) or 0.0)}
            return Allocation(out.method, out.choice, out.bits, out.loss, info)
        slack += out.bits - limit + 1
    raise LowbitError("the MILP solver kept exceeding the budget by rounding; report this")


def _products(pairs: list[tuple[int, int, float]], n_x: int, n: int) -> list:
    """The three rows per pair variable k (column n_x + k) that make it x_a · x_b."""
    from scipy.optimize import LinearConstraint

    if not pairs:
        return []
    rows = np.zeros((3 * len(pairs), n))
    upper = np.zeros(3 * len(pairs))
    for k, (a, b, _) in enumerate(pairs):
        y = n_x + k
        rows[3 * k, [y, a]] = (1.0, -1.0)  # y - x_a <= 0
        rows[3 * k + 1, [y, b]] = (1.0, -1.0)  # y - x_b <= 0
        rows[3 * k + 2, [a, b, y]] = (1.0, 1.0, -1.0)  # x_a + x_b - y <= 1
        upper[3 * k + 2] = 1.0
    return [LinearConstraint(rows, -np.inf, upper)]
