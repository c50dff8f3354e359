"""An allocation as a plan: the most common spec as the default, one rule per other unit (its
exact name, or for the experts' projection of a block the ``re:`` rule that is the unit's name
and matches every expert's linear), so ``lowbit quantize --plan`` consumes it unchanged."""

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
