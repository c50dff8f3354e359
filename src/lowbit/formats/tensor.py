"""QuantizedWeight: the codes, scales, zero points and column permutation of one linear weight.

This is what algorithms return, what evaluation dequantizes, and what saving packs. Its
:meth:`dequantize` is the single definition of the weight a real kernel would use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.formats.granularity import Granularity, PerGroup, group_index
from lowbit.formats.integer import IntFormat, codes_to_values

PERM_BITS = 32  # a saved column permutation costs one int32 per input column


@dataclass
class QuantizedWeight:
    """``codes`` (out, in) in storage column order; ``scale``/``zero`` (out, n_groups) over the
    groups of storage columns; ``perm`` (in,) maps storage column j to original column perm[j]
    (None: storage order is the original order)."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    fmt: IntFormat
    granularity: Granularity
    perm: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.codes.shape[0]), int(self.codes.shape[1]))

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight (out, in) in the original column order."""
        in_f = self.shape[1]
        g_idx = group_index(in_f, self.granularity)
        zero = None if self.zero is None else self.zero.float()[:, g_idx]
        W = codes_to_values(self.codes, self.scale.float()[:, g_idx], zero)
        if self.perm is None:
            return W
        restored = torch.empty_like(W)
        restored[:, self.perm] = W
        return restored

    def n_bits(self) -> int:
        """Total stored bits: codes, scales, zero points and the permutation."""
        out_f, in_f = self.shape
        n_params = self.scale.numel()
        total = out_f * in_f * self.fmt.bits + n_params * (self.fmt.scale_bits + self.fmt.zero_bits)
        if self.perm is not None:
            total += PERM_BITS * in_f
        return total

    def bits_per_weight(self) -> float:
        out_f, in_f = self.shape
        return self.n_bits() / (out_f * in_f)


def describe_scheme(fmt: IntFormat, granularity: Granularity) -> str:
    sym = "sym" if fmt.symmetric else "asym"
    gran = f"g{granularity.size}" if isinstance(granularity, PerGroup) else granularity.describe()
    return f"W{fmt.bits} {gran} {sym}"
