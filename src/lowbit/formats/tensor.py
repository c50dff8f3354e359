"""QuantizedWeight: the codes, scales, zero points and column permutation of one linear weight,
and the :class:`WeightFormat` protocol every format value follows.

This is what algorithms return, what evaluation dequantizes, and what saving packs. Its
:meth:`QuantizedWeight.dequantize` is the single definition of the weight a real kernel would
use; the arithmetic of each format lives in the format's own ``decode``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from lowbit.formats.granularity import Granularity, PerGroup

PERM_BITS = 32  # a saved column permutation costs one int32 per input column
TENSOR_SCALE_BITS = 32  # a second-level per-tensor scale (NVFP4) is one fp32
# a sparse full-precision outlier (SqueezeLLM's dense-and-sparse) is stored as COO: its fp16
# value and the int32 flat index row · in + column of its place in the original layout
OUTLIER_VALUE_BITS = 16
OUTLIER_INDEX_BITS = 32


@runtime_checkable
class WeightFormat(Protocol):
    """What every format value (IntFormat, FloatFormat, NF4Format, LUTFormat, MXFormat,
    NVFP4Format) provides.

    - ``bits``: bits of one element code; ``scale_bits``: bits of one stored entry of
      :attr:`QuantizedWeight.scale` (a float scale, an E8M0 byte, an FP8 block scale or a table
      entry); zero points, when present, are stored in ``bits`` bits each.
    - ``symmetric``: whether the clipping range is an absmax (True) or a [min, max] pair.
    - ``signed_codes``: whether codes are two's complement (packing sign-extends them).
    - ``encode(W, lo, hi, granularity)``: codes and parameters of ``W`` (out, in) for the
      per-group clipping range ``lo``/``hi`` (rows, n_groups), fp32.
    - ``decode(qw)``: the fp32 weight (out, in) in storage column order.
    """

    @property
    def name(self) -> str: ...
    @property
    def bits(self) -> int: ...
    @property
    def scale_bits(self) -> int: ...
    @property
    def symmetric(self) -> bool: ...
    @property
    def signed_codes(self) -> bool: ...

    def bits_per_weight(
        self, in_features: int, granularity: Granularity, out_features: int = 1
    ) -> float: ...
    def check_granularity(self, granularity: Granularity) -> None: ...
    def describe(self, granularity: Granularity) -> str: ...
    def encode(
        self, W: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, granularity: Granularity
    ) -> QuantizedWeight: ...
    def decode(self, qw: QuantizedWeight) -> torch.Tensor: ...


@dataclass
class QuantizedWeight:
    """``codes`` (out, in) in storage column order; ``scale``/``zero`` (out, n_groups) over the
    groups of storage columns (rows = 1 for per-tensor); ``perm`` (in,) maps storage column j to
    original column perm[j] (None: storage order is the original order). ``outliers``, when
    present, is a pair (flat indices (nnz,) int32, values (nnz,) fp16): the weights kept in
    full precision (SqueezeLLM's sparse part), which replace the dense part's values there.

    What ``scale`` holds depends on ``fmt``: float scales (INT, FP, NF4), E8M0 exponent bytes
    (MX), FP8 E4M3 block scales (NVFP4, with the fp32 ``tensor_scale``), or for LUT formats the
    per-row codebook (out, 2^bits). ``codes`` are format codes: integers (INT, MXINT8), bit
    patterns (FP, MXFP, NVFP4) or table indices (NF4, LUT).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    fmt: Any  # a WeightFormat (Any: dataclass fields cannot hold a Protocol usefully)
    granularity: Granularity
    perm: torch.Tensor | None = None
    tensor_scale: torch.Tensor | None = None
    outliers: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.codes.shape[0]), int(self.codes.shape[1]))

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight (out, in) in the original column order, outliers in place."""
        W = self.fmt.decode(self)
        if self.perm is not None:
            restored = torch.empty_like(W)
            restored[:, self.perm] = W
            W = restored
        if self.outliers is not None:
            index, values = self.outliers
            W = W.contiguous()
            W.view(-1)[index.long()] = values.float()
        return W

    def n_bits(self) -> int:
        """Total stored bits: codes, scales (or tables), zero points, a per-tensor scale, the
        permutation and the sparse outliers (48 bits each)."""
        out_f, in_f = self.shape
        total = out_f * in_f * self.fmt.bits + self.scale.numel() * self.fmt.scale_bits
        if self.zero is not None:
            total += self.zero.numel() * self.fmt.bits
        if self.tensor_scale is not None:
            total += TENSOR_SCALE_BITS
        if self.perm is not None:
            total += PERM_BITS * in_f
        if self.outliers is not None:
            total += self.outliers[0].numel() * (OUTLIER_VALUE_BITS + OUTLIER_INDEX_BITS)
        return total

    def bits_per_weight(self) -> float:
        out_f, in_f = self.shape
        return self.n_bits() / (out_f * in_f)


def describe_scheme(fmt: WeightFormat, granularity: Granularity) -> str:
    """A short label: ``W4 g128 sym`` for integers, ``MXFP4 g32`` or ``NF4 g64`` otherwise."""
    return fmt.describe(granularity)


def granularity_label(granularity: Granularity) -> str:
    return f"g{granularity.size}" if isinstance(granularity, PerGroup) else granularity.describe()
