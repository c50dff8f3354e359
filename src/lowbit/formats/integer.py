"""Integer formats: ``bits`` ∈ [2, 8], symmetric (signed codes) or asymmetric (unsigned codes
with an integer zero point), scales stored in a float dtype (fp16 by default, as serving kernels
read them).

Conventions:
- symmetric: codes q ∈ [-2^(b-1), 2^(b-1) - 1], x̂ = q·s, and one of two scale rules
  (``scale_rule``):
  - ``extreme`` (default; llama.cpp's Q4_0/Q8_0 rule): s = m / -2^(b-1), m the group's weight of
    largest magnitude *with its sign*, so m lands exactly on the code -2^(b-1) (s is negative when
    m is positive); no weight of the group is clipped by more than one step, and only on the
    side opposite to m;
  - ``half-step`` (the GPTQ reference's and compressed-tensors' rule): s = absmax / ((2^b - 1) / 2),
    always positive; a positive extreme maps to 2^(b-1) - 1/2 and is clipped by half a step.
  The extreme rule gives finer steps (absmax / 2^(b-1) instead of absmax / (2^(b-1) - 1/2)) and
  represents each group's largest weight exactly, which is what plain rounding should do;
- asymmetric: codes q ∈ [0, 2^b - 1], the range [min(x, 0), max(x, 0)] mapped onto it,
  s = (max - min) / (2^b - 1), zero z = round(-min / s) ∈ [0, 2^b - 1], x̂ = (q - z)·s.
Scales are rounded to their storage dtype *before* codes are chosen, so what is saved
dequantizes exactly to what was evaluated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lowbit._registry import Registry
from lowbit.errors import ConfigError
from lowbit.formats.granularity import Granularity, PerTensor, group_index, group_reduce
from lowbit.formats.scaling import SCALE_DTYPES, storable_scale
from lowbit.formats.tensor import QuantizedWeight, granularity_label

_SCALE_DTYPES = SCALE_DTYPES


@dataclass(frozen=True)
class IntFormat:
    """Integer codes of 2 to 8 bits, symmetric or with an integer zero point; float scales."""

    bits: int
    symmetric: bool = True
    scale_dtype: str = "float16"
    scale_rule: str = "extreme"

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or not 2 <= self.bits <= 8:
            raise ConfigError(
                f"integer format bits must be an integer from 2 to 8, got {self.bits!r}"
            )
        if self.scale_dtype not in _SCALE_DTYPES:
            raise ConfigError(
                f"scale dtype {self.scale_dtype!r} is not one of {sorted(_SCALE_DTYPES)}"
            )
        SCALE_RULES.get(self.scale_rule)  # an unknown rule: UnknownNameError listing the rules

    @property
    def name(self) -> str:
        return f"int{self.bits}" if self.symmetric else f"uint{self.bits}"

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def code_dtype(self) -> torch.dtype:
        """The smallest torch integer dtype that holds every code (int8 or uint8)."""
        return torch.int8 if self.symmetric else torch.uint8

    @property
    def torch_scale_dtype(self) -> torch.dtype:
        return _SCALE_DTYPES[self.scale_dtype]

    @property
    def scale_bits(self) -> int:
        return torch.finfo(self.torch_scale_dtype).bits

    @property
    def zero_bits(self) -> int:
        """Bits stored per group for the zero point (packed like the codes)."""
        return 0 if self.symmetric else self.bits

    def bits_per_weight(
        self, in_features: int, granularity: Granularity, out_features: int = 1
    ) -> float:
        """Codes plus scales plus zero points, per weight, for one (out, in) matrix."""
        if isinstance(granularity, PerTensor):
            per_matrix = self.scale_bits + self.zero_bits
            return self.bits + per_matrix / (in_features * out_features)
        n_groups = granularity.groups(in_features)
        return self.bits + n_groups * (self.scale_bits + self.zero_bits) / in_features

    @property
    def signed_codes(self) -> bool:
        return self.symmetric

    def check_granularity(self, granularity: Granularity) -> None:
        """Any granularity works."""

    def describe(self, granularity: Granularity) -> str:
        return (
            f"W{self.bits} {granularity_label(granularity)} {'sym' if self.symmetric else 'asym'}"
            + (" half-step" if self.symmetric and self.scale_rule == "half-step" else "")
        )

    def encode(
        self, W: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, granularity: Granularity
    ) -> QuantizedWeight:
        """Round ``W`` (out, in) to the nearest code of the grid spanning [lo, hi] per group."""
        W = W.float()
        g_idx = group_index(W.shape[1], granularity, W.device)
        scale, zero = qparams_from_range(lo, hi, self)
        zero_cols = None if zero is None else zero[:, g_idx]
        codes = quantize_to_codes(W, scale[:, g_idx], zero_cols, self)
        return QuantizedWeight(
            codes=codes.to(self.code_dtype),
            scale=scale.to(self.torch_scale_dtype),
            zero=None if zero is None else zero.to(self.code_dtype),
            fmt=self,
            granularity=granularity,
        )

    def decode(self, qw: QuantizedWeight) -> torch.Tensor:
        """(q - zero)·scale (out, in) fp32, in storage column order."""
        g_idx = group_index(qw.shape[1], qw.granularity, qw.codes.device)
        zero = None if qw.zero is None else qw.zero.float()[:, g_idx]
        return codes_to_values(qw.codes, qw.scale.float()[:, g_idx], zero)


def choose_qparams(
    W: torch.Tensor, fmt: IntFormat, g_idx: torch.Tensor, n_groups: int, per_tensor: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Min-max scales (out, n_groups) in fp32 (already rounded to the storage dtype) and integer
    zero points (out, n_groups) (None when symmetric) for ``W`` (out, in)."""
    W = W.float()
    wmax = group_reduce(W, g_idx, n_groups, "amax", per_tensor)
    wmin = group_reduce(W, g_idx, n_groups, "amin", per_tensor)
    return qparams_from_range(wmin, wmax, fmt)


def qparams_from_range(
    wmin: torch.Tensor, wmax: torch.Tensor, fmt: IntFormat
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scales and zero points (rows, n_groups) for the per-group range [wmin, wmax] (fp32)."""
    if fmt.symmetric:
        return SCALE_RULES.get(fmt.scale_rule)(wmin, wmax, fmt), None
    levels = 2**fmt.bits - 1
    wmin, wmax = wmin.clamp(max=0), wmax.clamp(min=0)
    scale = _storable_scale((wmax - wmin) / levels, fmt)
    zero = torch.round(-wmin / scale).clamp(0, levels)
    return scale, zero


def extreme_scale(wmin: torch.Tensor, wmax: torch.Tensor, fmt: IntFormat) -> torch.Tensor:
    """s = m / qmin with m the signed extreme (a tie between -a and +a takes -a, so s > 0): m
    lands on qmin. The magnitude is rounded up to the storage dtype, so |m / s| ≤ |qmin|."""
    negative = wmin.abs() >= wmax.abs()
    magnitude = _storable_scale(torch.maximum(wmin.abs(), wmax.abs()) / -fmt.qmin, fmt)
    return torch.where(negative, magnitude, -magnitude)


def half_step_scale(wmin: torch.Tensor, wmax: torch.Tensor, fmt: IntFormat) -> torch.Tensor:
    """s = absmax / ((2^b - 1) / 2) > 0 (the GPTQ reference's grid)."""
    absmax = torch.maximum(wmax.abs(), wmin.abs())
    return _storable_scale(absmax / ((2**fmt.bits - 1) / 2), fmt)


ScaleRule = Callable[[torch.Tensor, torch.Tensor, IntFormat], torch.Tensor]
# symmetric scale rules by name (IntFormat.scale_rule): (group min, group max, format) → scale
SCALE_RULES: Registry[ScaleRule] = Registry("integer scale rule")
SCALE_RULES.register("extreme", extreme_scale)
SCALE_RULES.register("half-step", half_step_scale)


def _storable_scale(scale: torch.Tensor, fmt: IntFormat) -> torch.Tensor:
    """Round *up* to the storage dtype, so the min-max range still fits the grid and no value is
    clipped by more than half a step (rounding to nearest could shrink the scale); an all-zero
    group gets scale 1 (its codes are all zero). Tiny scales stay tiny (subnormal if need be)."""
    return storable_scale(scale, fmt.torch_scale_dtype)


def quantize_to_codes(
    x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, fmt: IntFormat
) -> torch.Tensor:
    """Nearest codes (as floats) for ``x`` given broadcastable ``scale`` and ``zero``."""
    q = torch.round(x / scale)
    if zero is not None:
        q = q + zero
    return q.clamp_(fmt.qmin, fmt.qmax)


def codes_to_values(
    q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None
) -> torch.Tensor:
    """Dequantize codes: (q - zero)·scale, in fp32."""
    q = q.float()
    if zero is not None:
        q = q - zero
    return q * scale
