"""An allocation as a plan: the most common spec as the default, exact-name rules for the rest,
so ``lowbit quantize --plan`` consumes it unchanged."""

from __future__ import annotations

from collections import Counter

from lowbit.allocation.solve import Allocation
from lowbit.plan import Plan, Rule
from lowbit.sensitivity.table import SensitivityTable


def to_plan(table: SensitivityTable, allocation: Allocation) -> Plan:
    counts = Counter(allocation.choice.values())
    default = max(counts, key=lambda s: (counts[s], -s))
    rules = tuple(
        Rule(info.name, table.menu[allocation.choice[info.name]])
        for info in table.layers
        if allocation.choice[info.name] != default
    )
    return Plan(default=table.menu[default], rules=rules)
