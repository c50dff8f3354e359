"""Microscaling (OCP MX v1.0): blocks of 32 consecutive input columns share one E8M0 scale
X = 2^(floor(log2(absmax)) - emax_elem); each element is x / X rounded to the element format
(FP8 E4M3/E5M2, FP6 E3M2/E2M3, FP4 E2M1 with round to nearest even, saturating; or INT8).

E8M0 is stored as one uint8 per block: the biased exponent (bias 127, so X = 2^(byte - 127));
byte 0xFF is NaN. MXINT8 elements are 8-bit two's complement codes k with an implicit scale
2^-6 (value k/64), clamped to ±127 as the reference implementation (microsoft/microxcaling) does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.errors import ConfigError
from lowbit.formats.floating import ELEMENTS, FloatFormat
from lowbit.formats.granularity import Granularity
from lowbit.formats.scaling import columns, require_group, scale_bits_per_weight
from lowbit.formats.tensor import QuantizedWeight, granularity_label

MX_BLOCK = 32
E8M0_BIAS = 127
E8M0_NAN = 0xFF
INT8_FRACTION_BITS = 6  # MXINT8: value = code · 2^-6
# element → the MX format's name (the registry's alias)
_NAMES = {
    "fp8_e4m3": "mxfp8",
    "fp8_e5m2": "mxfp8_e5m2",
    "fp6_e2m3": "mxfp6",
    "fp6_e3m2": "mxfp6_e3m2",
    "fp4_e2m1": "mxfp4",
    "int8": "mxint8",
}


@dataclass(frozen=True)
class MXFormat:
    """OCP MX block format: 32 elements (FP8/FP6/FP4/INT8) sharing one power-of-two E8M0 scale."""

    element: str = "fp4_e2m1"

    def __post_init__(self) -> None:
        if self.element not in _NAMES:
            raise ConfigError(
                f"no MX element {self.element!r}; known: {', '.join(map(repr, _NAMES))}"
            )

    symmetric = True
    scale_bits = 8

    @property
    def name(self) -> str:
        return _NAMES[self.element]

    @property
    def element_format(self) -> FloatFormat | None:
        """The floating-point element format (None for INT8)."""
        return ELEMENTS.get(self.element)

    @property
    def bits(self) -> int:
        fmt = self.element_format
        return 8 if fmt is None else fmt.bits

    @property
    def signed_codes(self) -> bool:
        return self.element_format is None

    @property
    def emax_elem(self) -> int:
        """Exponent of the element format's largest normal binade (0 for INT8: 1.984375)."""
        fmt = self.element_format
        return 0 if fmt is None else fmt.emax

    def bits_per_weight(
        self, in_features: int, granularity: Granularity, out_features: int = 1
    ) -> float:
        self.check_granularity(granularity)
        return self.bits + scale_bits_per_weight(8, in_features, granularity, out_features)

    def check_granularity(self, granularity: Granularity) -> None:
        require_group(self.name, granularity, MX_BLOCK, "OCP MX v1.0")

    def describe(self, granularity: Granularity) -> str:
        return f"{self.name.upper()} {granularity_label(granularity)}"

    def encode(
        self, W: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, granularity: Granularity
    ) -> QuantizedWeight:
        exponent = shared_exponent(torch.maximum(lo.abs(), hi.abs()), self.emax_elem)
        X = columns(
            torch.ldexp(torch.ones_like(exponent, dtype=torch.float32), exponent),
            granularity,
            W.shape[1],
        )
        codes = self.element_codes(W.float() / X)
        return QuantizedWeight(codes, e8m0_encode(exponent), None, self, granularity)

    def decode(self, qw: QuantizedWeight) -> torch.Tensor:
        X = columns(e8m0_decode(qw.scale), qw.granularity, qw.shape[1])
        return self.element_values(qw.codes) * X

    def element_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Element codes of block-scaled values ``x``: FP bit patterns (uint8) or INT8 codes."""
        fmt = self.element_format
        if fmt is None:
            k = torch.round(x * 2.0**INT8_FRACTION_BITS)  # exact: a power of two
            return k.clamp(-127, 127).to(torch.int8)
        return fmt.to_codes(x)

    def element_values(self, codes: torch.Tensor) -> torch.Tensor:
        fmt = self.element_format
        if fmt is None:
            return codes.float() * 2.0**-INT8_FRACTION_BITS
        return fmt.from_codes(codes)


def shared_exponent(absmax: torch.Tensor, emax_elem: int) -> torch.Tensor:
    """floor(log2(absmax)) - emax_elem per block (int32), clamped to E8M0's [-127, 127]; an
    all-zero block gets -127 (any scale represents it)."""
    _, exp = torch.frexp(absmax.float())  # absmax = f · 2^exp, f ∈ [0.5, 1)
    exponent = torch.where(absmax > 0, exp - 1 - emax_elem, torch.full_like(exp, -E8M0_BIAS))
    return exponent.clamp(-E8M0_BIAS, E8M0_BIAS).to(torch.int32)


def e8m0_encode(exponent: torch.Tensor) -> torch.Tensor:
    """Biased exponent bytes (uint8) of integer exponents in [-127, 127]."""
    return (exponent.to(torch.int32) + E8M0_BIAS).to(torch.uint8)


def e8m0_decode(scale: torch.Tensor) -> torch.Tensor:
    """2^(byte - 127) in fp32; byte 0xFF is NaN."""
    byte = scale.to(torch.int32)
    value = torch.ldexp(torch.ones_like(byte, dtype=torch.float32), byte - E8M0_BIAS)
    return torch.where(byte == E8M0_NAN, torch.full_like(value, torch.nan), value)
