"""Non-uniform codebooks: NF4 (QLoRA's 4-bit normal float, a fixed table scaled by the group's
absmax) and LUT (one learned table of 2^bits values per output row, as in SqueezeLLM).

Codes are table indices (uint8). NF4 stores one float scale per group; a LUT stores its table,
one fp16 entry per level per row (``QuantizedWeight.scale`` holds the table, (rows, 2^bits)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.errors import ConfigError
from lowbit.formats.granularity import Granularity, PerChannel, PerTensor
from lowbit.formats.scaling import (
    SCALE_DTYPES,
    check_scale_dtype,
    decode_on_grid,
    encode_on_grid,
    scale_bits_per_weight,
)
from lowbit.formats.tensor import QuantizedWeight, granularity_label

# bitsandbytes' NF4 code (functional.get_4bit_type("nf4")), index = code
NF4_VALUES = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)


def nearest_index(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Index (int64) of the nearest entry of the sorted ``table`` for each ``x``.

    ``table`` is (K,) for one table, or (rows, K) with ``x`` (rows, n) for one table per row;
    a value exactly halfway between two entries takes the lower one."""
    mids = (table[..., 1:] + table[..., :-1]) / 2
    return torch.searchsorted(mids.contiguous(), x.contiguous())


@dataclass(frozen=True)
class NF4Format:
    """NF4: QLoRA's 16 normal-float levels in [-1, 1], scaled by each group's absmax."""

    scale_dtype: str = "float16"

    def __post_init__(self) -> None:
        check_scale_dtype(self.scale_dtype, "nf4")

    name = "nf4"
    bits = 4
    symmetric = True
    signed_codes = False

    @property
    def torch_scale_dtype(self) -> torch.dtype:
        return SCALE_DTYPES[self.scale_dtype]

    @property
    def scale_bits(self) -> int:
        return torch.finfo(self.torch_scale_dtype).bits

    def values(self) -> torch.Tensor:
        return torch.tensor(NF4_VALUES, dtype=torch.float32)

    def to_codes(self, x: torch.Tensor) -> torch.Tensor:
        return nearest_index(x, self.values().to(x.device)).to(torch.uint8)

    def from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.values().to(codes.device)[codes.long()]

    def bits_per_weight(
        self, in_features: int, granularity: Granularity, out_features: int = 1
    ) -> float:
        return self.bits + scale_bits_per_weight(
            self.scale_bits, in_features, granularity, out_features
        )

    def check_granularity(self, granularity: Granularity) -> None:
        """Any granularity works."""

    def describe(self, granularity: Granularity) -> str:
        return f"NF4 {granularity_label(granularity)}"

    def encode(
        self, W: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, granularity: Granularity
    ) -> QuantizedWeight:
        absmax = torch.maximum(lo.abs(), hi.abs())
        return encode_on_grid(
            self, W, absmax, granularity, 1.0, self.to_codes, self.torch_scale_dtype
        )

    def decode(self, qw: QuantizedWeight) -> torch.Tensor:
        return decode_on_grid(qw, self.from_codes)


@dataclass(frozen=True)
class LUTFormat:
    """A learned lookup table of 2^bits values per output row (per tensor: one table), fitted by
    k-means from a uniform grid over the clipping range; table entries stored in ``table_dtype``."""

    bits: int
    table_dtype: str = "float16"
    iterations: int = 25

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or not 1 <= self.bits <= 8:
            raise ConfigError(f"LUT format bits must be an integer from 1 to 8, got {self.bits!r}")
        check_scale_dtype(self.table_dtype, "lut")
        if not isinstance(self.iterations, int) or self.iterations < 0:
            raise ConfigError(
                f"LUT k-means iterations must be a non-negative integer, got {self.iterations!r}"
            )

    symmetric = False
    signed_codes = False

    @property
    def name(self) -> str:
        return f"lut{self.bits}"

    @property
    def torch_table_dtype(self) -> torch.dtype:
        return SCALE_DTYPES[self.table_dtype]

    @property
    def scale_bits(self) -> int:
        """Bits of one table entry."""
        return torch.finfo(self.torch_table_dtype).bits

    def bits_per_weight(
        self, in_features: int, granularity: Granularity, out_features: int = 1
    ) -> float:
        self.check_granularity(granularity)
        rows = 1 if isinstance(granularity, PerTensor) else out_features
        return self.bits + rows * 2**self.bits * self.scale_bits / (in_features * out_features)

    def check_granularity(self, granularity: Granularity) -> None:
        if not isinstance(granularity, PerChannel | PerTensor):
            raise ConfigError(
                f"{self.name} keeps one table per output row (or one per tensor), got "
                f"{granularity.describe()}; use per-channel or per-tensor granularity"
            )

    def describe(self, granularity: Granularity) -> str:
        return f"LUT{self.bits} {granularity_label(granularity)}"

    def encode(
        self, W: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, granularity: Granularity
    ) -> QuantizedWeight:
        X = W.float().reshape(1, -1) if isinstance(granularity, PerTensor) else W.float()
        table = fit_table(X, lo, hi, self.bits, self.iterations, self.torch_table_dtype)
        codes = nearest_index(X, table).to(torch.uint8).reshape(W.shape)
        return QuantizedWeight(codes, table.to(self.torch_table_dtype), None, self, granularity)

    def decode(self, qw: QuantizedWeight) -> torch.Tensor:
        table = qw.scale.float()
        codes = qw.codes.long().reshape(table.shape[0], -1)
        return table.gather(1, codes).reshape(qw.shape)


def fit_table(
    X: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    bits: int,
    iterations: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """One sorted table (rows, 2^bits) per row of ``X`` (rows, n), fp32 holding ``dtype`` values.

    Starts from the uniform grid lo + (hi - lo)·k/(2^bits - 1) (``lo``/``hi`` (rows, 1)) and runs
    Lloyd's k-means; per row, the table with the least Σ (x - table[nearest])² seen is kept, so
    the result is never worse than the uniform grid (tables rounded to ``dtype`` throughout)."""
    steps = torch.linspace(0.0, 1.0, 2**bits, device=X.device)
    table = _storable(lo + (hi - lo) * steps, dtype)
    best, best_err = table, _table_error(X, table)
    ones = torch.ones_like(X)
    for _ in range(iterations):
        idx = nearest_index(X, table)
        sums = torch.zeros_like(table).scatter_add_(1, idx, X)
        counts = torch.zeros_like(table).scatter_add_(1, idx, ones)
        table = _storable(torch.where(counts > 0, sums / counts.clamp(min=1), table), dtype)
        err = _table_error(X, table)
        better = err < best_err
        best = torch.where(better[:, None], table, best)
        best_err = torch.where(better, err, best_err)
    return best


def _storable(table: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return table.to(dtype).float().sort(dim=1).values


def _table_error(X: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Σ over each row of (x - nearest table entry)²: (rows,)."""
    return (X - table.gather(1, nearest_index(X, table))).pow(2).sum(dim=1)
