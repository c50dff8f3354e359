"""How far from additive measured losses are, and pair terms for the exact solver.

Inputs are measurements of one model: ``singles`` (layer, spec) → the loss with that layer alone
quantized, ``pairs`` (a, s, b, t) → the loss with a at s and b at t quantized together. The
interaction of a pair is ``pairs − (single a + single b)``; its ratio ``pairs / (a + b)`` is 1
for additive losses, above 1 when the errors compound. Pure arithmetic: no torch, no model.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from lowbit.allocation.problem import PairKey
from lowbit.errors import ConfigError


def pair_terms(
    singles: Mapping[tuple[str, int], float], pairs: Mapping[PairKey, float]
) -> dict[PairKey, float]:
    """The interaction of each measured pair: its loss minus its two single losses."""
    out = {}
    for (a, s, b, t), together in pairs.items():
        missing = [k for k in ((a, s), (b, t)) if k not in singles]
        if missing:
            raise ConfigError(f"pair ({a}, {b}) has no single measurement for {missing}")
        out[(a, s, b, t)] = together - singles[(a, s)] - singles[(b, t)]
    return out


@dataclass(frozen=True)
class PairRow:
    a: str
    b: str
    kind: str  # "within block" or "across blocks"
    single_a: float
    single_b: float
    together: float

    @property
    def ratio(self) -> float:
        """Measured loss together over the sum of the singles (1: additive)."""
        return self.together / (self.single_a + self.single_b)


def pair_rows(
    singles: Mapping[tuple[str, int], float],
    pairs: Mapping[PairKey, float],
    block_of: Callable[[str], int],
) -> list[PairRow]:
    """One row per measured pair, labelled within one block or across blocks."""
    rows = []
    for (a, s, b, t), together in pairs.items():
        kind = "within block" if block_of(a) == block_of(b) else "across blocks"
        rows.append(PairRow(a, b, kind, singles[(a, s)], singles[(b, t)], together))
    return rows


def summarise(rows: Iterable[PairRow]) -> dict[str, dict[str, float]]:
    """Per kind (and ``all``): pairs, median, min and max ratio, share of pairs above 1."""
    by_kind: dict[str, list[float]] = {}
    for r in rows:
        by_kind.setdefault(r.kind, []).append(r.ratio)
        by_kind.setdefault("all", []).append(r.ratio)
    return {
        kind: {
            "pairs": len(ratios),
            "median_ratio": statistics.median(ratios),
            "min_ratio": min(ratios),
            "max_ratio": max(ratios),
            "share_above_1": sum(x > 1 for x in ratios) / len(ratios),
        }
        for kind, ratios in by_kind.items()
    }


def log_error(realised: float, predicted: float) -> float:
    """|ln(realised / predicted)|: 0 for a perfect prediction, symmetric in over and under."""
    if realised <= 0 or predicted <= 0:
        raise ConfigError(
            f"log error needs positive losses, got realised {realised}, predicted {predicted}"
        )
    return abs(math.log(realised / predicted))
