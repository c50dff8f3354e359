"""Floating-point element formats: FP8 E4M3 / E5M2 (OCP FP8), FP6 E3M2 / E2M3 and FP4 E2M1
(OCP MX v1.0), each scaled per tensor, channel or group by a float scale.

An element with sign s, exponent field E and mantissa field M (``m`` bits, bias 2^(e-1) - 1) is
(-1)^s · 2^(1-bias) · M/2^m when E = 0 (subnormal), else (-1)^s · 2^(E-bias) · (1 + M/2^m).
Special codes: E4M3 has no infinity and one NaN pattern per sign (S.1111.111, as
``torch.float8_e4m3fn``); E5M2 follows IEEE (E = 11111 is ±inf or NaN); FP6 and FP4 have none.
Rounding is to nearest, ties to even, saturating at ± the largest finite value.
Codes are the element bit patterns (uint8, sign in the top bit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch

from lowbit.errors import ConfigError
from lowbit.formats.granularity import Granularity
from lowbit.formats.scaling import (
    GridScaled,
    check_scale_dtype,
)
from lowbit.formats.tensor import granularity_label

# (exponent bits, mantissa bits) → special-value convention
_SPECIALS = {(4, 3): "nan", (5, 2): "ieee", (3, 2): "none", (2, 3): "none", (2, 1): "none"}


@dataclass(frozen=True)
class FloatFormat(GridScaled):
    """Minifloat elements (FP8 E4M3/E5M2, FP6 E3M2/E2M3, FP4 E2M1) with a float scale per group;
    scale = absmax / max_value."""

    exponent_bits: int
    mantissa_bits: int
    scale_dtype: str = "float16"

    def __post_init__(self) -> None:
        if (self.exponent_bits, self.mantissa_bits) not in _SPECIALS:
            known = ", ".join(f"E{e}M{m}" for e, m in _SPECIALS)
            raise ConfigError(
                f"no floating-point element format E{self.exponent_bits}M{self.mantissa_bits}; "
                f"known: {known}"
            )
        check_scale_dtype(self.scale_dtype, self.name)

    @property
    def name(self) -> str:
        return f"fp{self.bits}_e{self.exponent_bits}m{self.mantissa_bits}"

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def bias(self) -> int:
        return 2 ** (self.exponent_bits - 1) - 1

    @property
    def emax(self) -> int:
        """Exponent of the largest normal binade (OCP MX's emax_elem)."""
        top = 2**self.exponent_bits - 1
        return top - 1 - self.bias if _SPECIALS[self._key] == "ieee" else top - self.bias

    @property
    def max_value(self) -> float:
        return max_finite(*self._key)

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (1 - self.bias - self.mantissa_bits)

    @property
    def _key(self) -> tuple[int, int]:
        return (self.exponent_bits, self.mantissa_bits)

    symmetric = True
    signed_codes = False

    @property
    def code_dtype(self) -> torch.dtype:
        return torch.uint8

    def values(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The value of every code 0 … 2^bits - 1 (NaN and ±inf where the format has them), fp32
        on ``device`` (None: torch's default device)."""
        return all_values(*self._key, device).clone()

    def round(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest representable value (ties to even, saturating), fp32, same shape as ``x``."""
        return round_to_float(x, self.exponent_bits, self.mantissa_bits, self.max_value)

    def to_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Bit patterns (uint8) of the rounded ``x``; the sign bit follows ``x`` (-0 included)."""
        return float_codes(x, self.exponent_bits, self.mantissa_bits)

    def from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Values (fp32) of bit-pattern codes."""
        return all_values(*self._key, codes.device)[codes.long()]

    def describe(self, granularity: Granularity) -> str:
        return f"{self.name.upper()} {granularity_label(granularity)}"


@cache
def value_list(exponent_bits: int, mantissa_bits: int) -> tuple[float, ...]:
    """Value of every code 0 … 2^bits - 1, by the definition in the module docstring (exact in
    Python floats; every value is an fp32 number)."""
    e, m = exponent_bits, mantissa_bits
    bias, top_e, top_m = 2 ** (e - 1) - 1, 2**e - 1, 2**m - 1
    special = _SPECIALS[(e, m)]
    out = []
    for code in range(2 ** (1 + e + m)):
        sign = -1.0 if (code >> (e + m)) & 1 else 1.0
        exp, man = (code >> m) & top_e, code & top_m
        if exp == top_e and (special == "ieee" or (special == "nan" and man == top_m)):
            out.append(sign * math.inf if special == "ieee" and man == 0 else math.nan)
        elif exp == 0:
            out.append(sign * math.ldexp(man / 2**m, 1 - bias))
        else:
            out.append(sign * math.ldexp(1 + man / 2**m, exp - bias))
    return tuple(out)


@cache
def max_finite(exponent_bits: int, mantissa_bits: int) -> float:
    """The largest finite value of the element format."""
    return max(v for v in value_list(exponent_bits, mantissa_bits) if math.isfinite(v))


def all_values(
    exponent_bits: int, mantissa_bits: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Value of every code (2^bits,) fp32 on ``device`` (None: torch's default device); one
    cached tensor per device: do not modify it."""
    return _values_on(exponent_bits, mantissa_bits, _resolve(device), finite_only=False)


def _positive_values(exponent_bits: int, mantissa_bits: int, device: torch.device) -> torch.Tensor:
    """The finite non-negative values in code order (increasing): codes 0 … max code."""
    return _values_on(exponent_bits, mantissa_bits, _resolve(device), finite_only=True)


@cache
def _values_on(e: int, m: int, device: torch.device, finite_only: bool) -> torch.Tensor:
    values = value_list(e, m)
    if finite_only:
        values = tuple(v for v in values[: 2 ** (e + m)] if math.isfinite(v))
    return torch.tensor(values, dtype=torch.float32, device=device)


def _resolve(device: torch.device | str | None) -> torch.device:
    """The device itself, torch's default device for None (a stable cache key)."""
    return torch.get_default_device() if device is None else torch.device(device)


def round_to_float(
    x: torch.Tensor, exponent_bits: int, mantissa_bits: int, max_value: float
) -> torch.Tensor:
    """Round ``x`` to the nearest element value, ties to even, saturating at ±``max_value``.

    With e = floor(log2|x|) (exact, from frexp) clamped below at the subnormal exponent 1 - bias,
    the spacing is 2^(e - m) and |x| / spacing is an exact fp32 number whose nearest-even integer
    has the parity of the mantissa code, so ``torch.round`` gives IEEE round-half-to-even.
    """
    bias = 2 ** (exponent_bits - 1) - 1
    a = x.float().abs().clamp(max=max_value)
    _, exp = torch.frexp(a)  # a = f · 2^exp with f ∈ [0.5, 1)
    step_exp = (exp - 1).clamp(min=1 - bias) - mantissa_bits
    step = torch.ldexp(torch.ones_like(a), step_exp)
    return torch.copysign(torch.round(a / step) * step, x.float())


def float_codes(x: torch.Tensor, exponent_bits: int, mantissa_bits: int) -> torch.Tensor:
    """Bit patterns (uint8, same shape as ``x``) of ``x`` rounded to the element format."""
    table = _positive_values(exponent_bits, mantissa_bits, x.device)
    q = round_to_float(x, exponent_bits, mantissa_bits, max_finite(exponent_bits, mantissa_bits))
    magnitude = torch.searchsorted(table, q.abs().contiguous())
    sign = torch.signbit(x).to(torch.long) << (exponent_bits + mantissa_bits)
    return (magnitude | sign).to(torch.uint8)


FP8_E4M3 = FloatFormat(4, 3)
FP8_E5M2 = FloatFormat(5, 2)
FP6_E3M2 = FloatFormat(3, 2)
FP6_E2M3 = FloatFormat(2, 3)
FP4_E2M1 = FloatFormat(2, 1)
ELEMENTS = {f.name: f for f in (FP8_E4M3, FP8_E5M2, FP6_E3M2, FP6_E2M3, FP4_E2M1)}
