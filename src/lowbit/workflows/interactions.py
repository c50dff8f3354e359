"""Measured interactions between quantized units: the KL divergence of each unit quantized
alone, of pairs quantized together (within a block and across blocks), and of whole
configurations, each against the cached reference on the same windows; and the table that says
how far from additive the losses are.

A configuration maps each quantized unit (a tuple of layer names that share one spec, e.g.
fused q/k/v) to a spec index; every other layer keeps its full precision. Each study layer is
quantized once per spec with every study layer at that spec (RTN: independent of the others;
other algorithms get ``calib``), then configurations are weight swaps.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from rich.table import Table

from lowbit import api
from lowbit.allocation.interactions import PairRow, pair_rows, summarise
from lowbit.plan import LayerSpec, Plan, Rule
from lowbit.report.console import console, progress_bar

UnitNames = tuple[str, ...]


class Measurer:
    """The dense model on fixed token windows, with each study layer's dequantized weight at
    each spec computed once, so a configuration is a weight swap and one forward pass; the KL
    divergence to the unquantized model is the mean over tokens of Σ_v p_v (log p_v − log q_v),
    in float32. Counts the forward passes."""

    def __init__(
        self,
        handle: Any,
        ids: torch.Tensor,
        rt: Any,
        units: Sequence[UnitNames],
        specs: Sequence[LayerSpec],
        calib: api.Windows | None = None,
    ) -> None:
        self.ids, self.passes = ids, 0
        self.quantized: dict[tuple[str, int], torch.Tensor] = {}
        layers = [n for u in units for n in u]
        for s, spec in enumerate(specs):
            qm = api.quantize(
                handle, Plan(None, tuple(Rule(n, spec) for n in layers)), calib, rt=rt
            )
            for n in layers:
                self.quantized[(n, s)] = qm.weights[n].dequantize()
        self.model = handle.load_model(rt).eval()
        self.modules = {n: self.model.get_submodule(n) for n in layers}
        self.original = {n: m.weight.data.clone() for n, m in self.modules.items()}
        self.reference = self._logp()

    @torch.no_grad()
    def _logp(self) -> torch.Tensor:
        self.passes += 1
        logits = self.model(self.ids.to(self.model.device)).logits.float()
        return torch.log_softmax(logits, dim=-1)

    @torch.no_grad()
    def kl(self, config: Mapping[UnitNames, int]) -> float:
        """KL of the model with each unit of ``config`` at its spec index."""
        try:
            for unit, s in config.items():
                for n in unit:
                    w = self.quantized[(n, s)]
                    self.modules[n].weight.data = w.to(self.original[n].dtype)
            logq = self._logp()
        finally:
            for n, w in self.original.items():
                self.modules[n].weight.data = w
        p = self.reference.exp()
        return float((p * (self.reference - logq)).sum(-1).mean())


def measure_pairs(
    m: Measurer, units: Sequence[UnitNames], index: int = 0
) -> tuple[dict[tuple[str, int], float], dict[tuple[str, int, str, int], float]]:
    """(single losses, pair losses) with every unit and every pair of units at spec ``index``
    of the measurer, keyed by each unit's first layer and the index."""
    singles: dict[tuple[str, int], float] = {}
    pairs: dict[tuple[str, int, str, int], float] = {}
    todo = len(units) + len(units) * (len(units) - 1) // 2
    with progress_bar("singles and pairs", todo) as update:
        for u in units:
            singles[(u[0], index)] = m.kl({u: index})
            update(len(singles), todo)
        for a, b in itertools.combinations(units, 2):
            pairs[(a[0], index, b[0], index)] = m.kl({a: index, b: index})
            update(len(singles) + len(pairs), todo)
    return singles, pairs


def block_of(name: str) -> int:
    """The block index in a ``….layers.{i}.…`` name."""
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1])


def nonadditivity(
    singles: Mapping[tuple[str, int], float], pairs: Mapping[tuple[str, int, str, int], float]
) -> tuple[list[PairRow], dict[str, dict[str, float]]]:
    rows = pair_rows(singles, pairs, block_of)
    return rows, summarise(rows)


def summary_table(summary: Mapping[str, Mapping[str, float]]) -> Table:
    table = Table(title="measured loss of a pair / sum of its single losses (1 = additive)")
    for col in ("pairs", "kind", "median", "min", "max", "share > 1"):
        table.add_column(col, justify="right")
    for kind, s in summary.items():
        table.add_row(
            str(int(s["pairs"])),
            kind,
            f"{s['median_ratio']:.3f}",
            f"{s['min_ratio']:.3f}",
            f"{s['max_ratio']:.3f}",
            f"{s['share_above_1']:.0%}",
        )
    return table


def show(summary: Mapping[str, Mapping[str, float]]) -> None:
    console.print(summary_table(summary))
