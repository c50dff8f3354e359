"""The candidates of one unit of a materialized block: each of its linears quantized with the
specs of the menu, the proxies summed over the linears (see :mod:`~lowbit.sensitivity.probe`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from lowbit._tensor import all_finite
from lowbit.errors import LowbitError
from lowbit.models.quantize import quantize_weight
from lowbit.plan import LayerSpec
from lowbit.sensitivity.proxies import fisher_error, hessian_error
from lowbit.sensitivity.table import Entry, LayerInfo


@dataclass
class Row:
    """One candidate: a unit quantized with one spec of the menu."""

    info: LayerInfo
    spec: int
    bits: int
    hessian: float
    fisher: float | None
    seconds: float
    kl: float | None = None

    def entry(self) -> Entry:
        return Entry(
            self.info.name, self.spec, self.bits, self.kl, self.hessian, self.fisher, self.seconds
        )


@dataclass
class Unit:
    """One unit of a materialized block: ``members`` (names inside the block), their
    Hessians and Fisher diagonals, and GPTQ's factors shared per Hessian."""

    info: LayerInfo
    members: tuple[str, ...]
    block: nn.Module
    hessians: dict[str, torch.Tensor]
    fisher: dict[str, torch.Tensor] | None
    factors: dict[int, dict[tuple[object, ...], object]]

    def quantize(
        self, menu: tuple[LayerSpec, ...], specs: range
    ) -> tuple[list[Row], dict[str, list[torch.Tensor]]]:
        """The rows of the unit for menu indices ``specs`` (every member quantized with the
        spec: bits and proxies summed in member order) and each member's quantized weights,
        one per spec."""
        rows = [Row(self.info, s, 0, 0.0, None, 0.0) for s in specs]
        fisher = [0.0 for _ in specs]
        weights: dict[str, list[torch.Tensor]] = {}
        for member, name in zip(self.members, self.info.member_names, strict=True):
            W = self.block.get_submodule(member).weight.data
            if not all_finite(W):
                raise LowbitError(
                    f"layer {name} has NaN or infinite weights; the checkpoint is corrupt"
                )
            H = self.hessians[member]
            h_diag = torch.diagonal(H).clone()
            shared = self.factors.setdefault(id(H), {})
            weights[member] = []
            with torch.no_grad():
                for k, row in enumerate(rows):
                    t0 = time.perf_counter()
                    qw = quantize_weight(name, W, menu[row.spec], H, shared=shared).weight
                    Wq = qw.dequantize().to(W.dtype)
                    row.bits += qw.n_bits()
                    row.hessian += hessian_error(W, Wq, h_diag)
                    if self.fisher is not None:
                        fisher[k] += fisher_error(W, Wq, self.fisher[member])
                    row.seconds += time.perf_counter() - t0
                    weights[member].append(Wq)
        if self.fisher is not None:
            for row, value in zip(rows, fisher, strict=True):
                row.fisher = value
        return rows, weights
