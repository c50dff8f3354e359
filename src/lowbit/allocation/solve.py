"""Exact allocation: one spec per unit minimising the summed predicted loss under a budget of
stored bits, as a 0/1 integer program solved by HiGHS through scipy's MILP interface."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lowbit.allocation.problem import Budget, Problem
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
    loss = sum(problem.loss[(n, s)] for n, s in choice.items())
    return Allocation(method, dict(choice), bits, loss)


def check_feasible(problem: Problem, budget: Budget) -> float:
    """The budget in bits for the linear layers; an error names the achievable range."""
    limit = budget.linear_bits(problem)
    lo, hi = problem.extremes()
    if limit < lo:
        raise ConfigError(
            f"the budget {budget.describe(limit, problem)} cannot be met: the smallest "
            f"achievable is {budget.describe(lo, problem)} and the largest useful one "
            f"{budget.describe(hi, problem)} (menu: {', '.join(problem.labels)})"
        )
    return limit


def solve_exact(problem: Problem, budget: Budget) -> Allocation:
    """The assignment of least predicted loss whose stored bits fit the budget (proved optimal
    by the solver: relative MIP gap 0)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    limit = check_feasible(problem, budget)
    index = [(u, s) for u, unit in enumerate(problem.units) for s in unit.options]
    loss = np.array([problem.unit_loss(problem.units[u], s) for u, s in index])
    bits = np.array([problem.unit_bits(problem.units[u], s) for u, s in index], dtype=np.float64)
    scale_loss = float(np.abs(loss).max()) or 1.0
    scale_bits = float(problem.n_weights)
    onehot = np.zeros((len(problem.units), len(index)))
    for j, (u, _) in enumerate(index):
        onehot[u, j] = 1.0
    slack = 0.0
    for _ in range(5):
        cap = (limit - slack) / scale_bits
        res = milp(
            c=loss / scale_loss,
            constraints=[
                LinearConstraint(onehot, 1.0, 1.0),
                LinearConstraint((bits / scale_bits)[None, :], -np.inf, cap),
            ],
            integrality=np.ones(len(index)),
            bounds=Bounds(0.0, 1.0),
            options={"mip_rel_gap": 0.0},
        )
        if res.x is None:
            raise LowbitError(f"the MILP solver found no solution: {res.message}")
        picked = [index[j] for j in np.flatnonzero(res.x > 0.5)]
        choice = {n: s for u, s in picked for n in problem.units[u].layers}
        out = evaluate_choice(problem, choice, "exact")
        if out.bits <= limit:  # exact integer check: tolerances never exceed the budget
            info = {"mip_gap": float(getattr(res, "mip_gap", 0.0) or 0.0)}
            return Allocation(out.method, out.choice, out.bits, out.loss, info)
        slack += out.bits - limit + 1
    raise LowbitError("the MILP solver kept exceeding the budget by rounding; report this")
