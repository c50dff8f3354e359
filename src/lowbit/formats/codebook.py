"""Non-uniform codebooks: NF4 (QLoRA's 4-bit normal float, a fixed table scaled by the group's
absmax) and LUT (one learned table of 2^bits values per output row, as in SqueezeLLM).

Codes are table indices (uint8). NF4 stores one float scale per group; a LUT stores its table,
one fp16 entry per level per row (``QuantizedWeight.scale`` holds the table, (rows, 2^bits)).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

from lowbit.errors import ConfigError
from lowbit.formats.granularity import Granularity, PerChannel, PerTensor
from lowbit.formats.scaling import (
    SCALE_DTYPES,
    GridScaled,
    check_scale_dtype,
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


@cache
def _nf4_on(device: torch.device) -> torch.Tensor:
    """NF4's levels on ``device``, made once per device (read only)."""
    return torch.tensor(NF4_VALUES, dtype=torch.float32, device=device)


@dataclass(frozen=True)
class NF4Format(GridScaled):
    """NF4: QLoRA's 16 normal-float levels in [-1, 1], scaled by each group's absmax."""

    scale_dtype: str = "float16"
    max_value = 1.0  # the largest level: a group's absmax maps onto it

    def __post_init__(self) -> None:
        check_scale_dtype(self.scale_dtype, "nf4")

    name = "nf4"
    bits = 4
    symmetric = True
    signed_codes = False

    def values(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The 16 levels (16,) fp32 on ``device`` (None: torch's default device)."""
        return torch.tensor(NF4_VALUES, dtype=torch.float32, device=device)

    def to_codes(self, x: torch.Tensor) -> torch.Tensor:
        return nearest_index(x, _nf4_on(x.device)).to(torch.uint8)

    def from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return _nf4_on(codes.device)[codes.long()]

    def describe(self, granularity: Granularity) -> str:
        return f"NF4 {granularity_label(granularity)}"


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
    weights: torch.Tensor | None = None,
    tol: float | None = None,
    init: str = "uniform",
) -> torch.Tensor:
    """One sorted table (rows, 2^bits) per row of ``X`` (rows, n), fp32 holding ``dtype`` values.

    Lloyd's k-means (:func:`weighted_kmeans`) on Σ w·(x - table[nearest])² (``weights``
    broadcastable to ``X``, non-negative; None: all 1). ``init`` "uniform" starts from the grid
    lo + (hi - lo)·k/(2^bits - 1) (``lo``/``hi`` (rows, 1)); "quantile" from the quantiles
    (k + ½)/2^bits of each row's values (those with weight). With weights, a k-means that counts
    every point of nonzero weight alike runs first and the weighted one starts from its result:
    with heavy-tailed weights (Hessian or Fisher diagonals) weighted Lloyd's steps from a plain
    start settle in poor local minima (measured: often 2-4x the objective of this warm start at
    4 bits). Per row, the uniform grid is kept instead when it scores better, so the result is
    never worse than it (tables rounded to ``dtype`` throughout). ``tol``: stop once an
    iteration lowers the total objective by less than ``tol`` times it (None: run every
    iteration)."""
    if init not in ("uniform", "quantile"):
        raise ValueError(f"k-means init must be 'uniform' or 'quantile', got {init!r}")
    uniform = _storable(lo + (hi - lo) * torch.linspace(0.0, 1.0, 2**bits, device=X.device), dtype)
    support = None if weights is None else (weights > 0).to(X.dtype)  # weight 0 stays out
    start = uniform if init == "uniform" else _storable(quantile_table(X, support, bits), dtype)
    if support is not None:  # warm start: every point with weight counts alike
        start = weighted_kmeans(X, support, start, iterations, dtype, tol).table
    table = weighted_kmeans(X, weights, start, iterations, dtype, tol).table
    better = _table_error(X, table, weights) < _table_error(X, uniform, weights)
    return torch.where(better[:, None], table, uniform)


@dataclass(frozen=True)
class KMeansFit:
    """The best table per row (rows, K), the total objective of every iterate (the start
    first; not of the best-so-far), and the number of Lloyd iterations run."""

    table: torch.Tensor
    history: list[float]
    iterations: int


def weighted_kmeans(
    X: torch.Tensor,
    weights: torch.Tensor | None,
    table: torch.Tensor,
    iterations: int,
    dtype: torch.dtype,
    tol: float | None = None,
) -> KMeansFit:
    """Lloyd's k-means in one dimension, one table per row of ``X`` (rows, n), from the sorted
    start ``table`` (rows, K), minimizing Σ w·(x - table[nearest])² per row.

    Assignment takes the nearest entry (the weight does not change which entry is nearest);
    the update moves each entry to the weighted mean Σ w·x / Σ w of its points (an entry with no
    weight keeps its place), rounded to ``dtype``. Both steps never raise the objective (up to
    the rounding to ``dtype``); the best table seen per row is returned. Stops early when an
    iteration lowers the total by less than ``tol`` times it."""
    W = torch.ones_like(X) if weights is None else weights.expand_as(X).float()
    best, best_err = table, _table_error(X, table, weights)
    history = [float(best_err.sum())]
    for _ in range(iterations):
        idx = nearest_index(X, table)
        sums = torch.zeros_like(table).scatter_add_(1, idx, W * X)
        mass = torch.zeros_like(table).scatter_add_(1, idx, W)
        table = _storable(torch.where(mass > 0, sums / mass.clamp(min=1e-30), table), dtype)
        err = _table_error(X, table, weights)
        history.append(float(err.sum()))
        better = err < best_err
        best = torch.where(better[:, None], table, best)
        best_err = torch.where(better, err, best_err)
        if tol is not None and history[-2] - history[-1] <= tol * history[-2]:
            break
    return KMeansFit(best, history, len(history) - 1)


def quantile_table(X: torch.Tensor, weights: torch.Tensor | None, bits: int) -> torch.Tensor:
    """The weighted quantiles (k + ½)/2^bits, k = 0 … 2^bits - 1, of each row of ``X``
    (rows, n): the start of a k-means that puts more entries where the weight mass is."""
    W = torch.ones_like(X) if weights is None else weights.expand_as(X).float()
    order = X.argsort(dim=1)
    xs, ws = X.gather(1, order), W.gather(1, order)
    cdf = ws.cumsum(dim=1)
    total = cdf[:, -1:].clamp(min=1e-30)
    levels = (torch.arange(2**bits, device=X.device, dtype=X.dtype) + 0.5) / 2**bits
    pos = torch.searchsorted(cdf / total, levels.expand(X.shape[0], -1).contiguous())
    return xs.gather(1, pos.clamp(max=X.shape[1] - 1))


def _storable(table: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return table.to(dtype).float().sort(dim=1).values


def _table_error(
    X: torch.Tensor, table: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Σ over each row of w·(x - nearest table entry)²: (rows,)."""
    err = (X - table.gather(1, nearest_index(X, table))).pow(2)
    return (err if weights is None else err * weights).sum(dim=1)
