"""What each layer gets: exact allocation under a budget, heuristic mixes, plans from them.

Needs no torch: it reads a sensitivity table."""

from lowbit.allocation.problem import AvgBits, Budget, MaxBytes, Problem, build_problem, spec_index
from lowbit.allocation.solve import Allocation, solve_exact

__all__ = [
    "Allocation",
    "AvgBits",
    "Budget",
    "MaxBytes",
    "Problem",
    "build_problem",
    "solve_exact",
    "spec_index",
]
