"""The mixes people use today, for comparison: uniform, and llama.cpp's rule of more bits for
the value and down projections in the first and last eighth of the blocks and every third
block between (``use_more_bits`` in llama.cpp's quantizer)."""

from __future__ import annotations

from lowbit.allocation.problem import Budget, Problem
from lowbit.allocation.solve import Allocation, check_feasible, evaluate_choice
from lowbit.errors import ConfigError
from lowbit.sensitivity.table import SensitivityTable


def use_more_bits(block: int, n_blocks: int) -> bool:
    """llama.cpp: i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2 (integer division)."""
    eighth = n_blocks // 8
    return block < eighth or block >= 7 * n_blocks // 8 or (block - eighth) % 3 == 2


def uniform(problem: Problem, spec: int) -> Allocation:
    choice = {n: spec for u in problem.units for n in u.layers}
    return evaluate_choice(problem, choice, f"uniform {problem.labels[spec]}")


def llamacpp_mix(table: SensitivityTable, problem: Problem, base: int, boost: int) -> Allocation:
    """``base`` everywhere, ``boost`` for the value and down projections that llama.cpp boosts."""
    choice = {}
    for info in table.layers:
        boosted = info.module in table.value_and_down and use_more_bits(info.block, table.n_blocks)
        choice[info.name] = boost if boosted else base
    return evaluate_choice(
        problem, choice, f"llama.cpp-style {problem.labels[base]} + {problem.labels[boost]}"
    )


def llamacpp_for_budget(table: SensitivityTable, problem: Problem, budget: Budget) -> Allocation:
    """Of the llama.cpp-style mixes (any base, any costlier boost) and the uniform plans, the
    one that stores the most bits within the budget: the rule knows no sensitivities, so it
    spends what it is given. Mixes ``problem`` does not admit (its ties and allowed specs,
    e.g. a deployment target's) are left out."""
    limit = check_feasible(problem, budget)
    n = len(table.menu)
    candidates = [uniform(problem, s) for s in range(n)]
    for base in range(n):
        for boost in range(n):
            mix = llamacpp_mix(table, problem, base, boost)
            if mix.bits > uniform(problem, base).bits:
                candidates.append(mix)
    fitting = [c for c in candidates if c.bits <= limit and problem.admits(c.choice)]
    if not fitting:
        raise ConfigError(
            f"no uniform or llama.cpp-style mix of the menu fits {budget.describe(limit, problem)}"
        )
    return max(fitting, key=lambda c: (c.bits, -c.loss))
