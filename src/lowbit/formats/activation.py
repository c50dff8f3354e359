"""Fake quantization of activations and KV-cache entries: rows of a tensor rounded to a format
with one fp32 scale per row (dynamic, from the row's own range) or one calibrated threshold.

Conventions (the ones W8A8 kernels use, e.g. vLLM's per-token int8 and FP8 quantization):
- symmetric integers of b bits: s = absmax / (2^(b-1) - 1), q = clamp(round(x / s),
  -2^(b-1), 2^(b-1) - 1), x̂ = q·s (absmax maps to the largest code exactly; this differs from
  the weights' absmax / ((2^b - 1) / 2), which spends the extra negative code);
- asymmetric integers: s = (max - min) / (2^b - 1) over [min(x, 0), max(x, 0)],
  z = round(-min / s), x̂ = (clamp(round(x / s) + z, 0, 2^b - 1) - z)·s;
- floating-point elements (FP8 E4M3 …): s = absmax / max_value, x̂ = round_fp(x / s)·s,
  saturating at ±max_value.
Scales stay in fp32 (activation scales are fp32 in kernels); a zero range gets scale 1.
"""

from __future__ import annotations

import torch

from lowbit.errors import ConfigError
from lowbit.formats.floating import FloatFormat
from lowbit.formats.integer import IntFormat

ActivationFormat = IntFormat | FloatFormat


def check_activation_format(fmt: object, where: str) -> None:
    """Activations and KV entries take integer or minifloat formats (one scale per row)."""
    if not isinstance(fmt, IntFormat | FloatFormat):
        name = getattr(fmt, "name", type(fmt).__name__)
        raise ConfigError(
            f"{where}: format {name!r} cannot quantize activations; use an integer format "
            "(int8, int4) or a minifloat (fp8_e4m3, fp8_e5m2)"
        )


def max_code(fmt: ActivationFormat) -> float:
    """The largest magnitude of the symmetric grid: 2^(b-1) - 1 for integers, max_value for FP."""
    if isinstance(fmt, IntFormat):
        return float(2 ** (fmt.bits - 1) - 1)
    return fmt.max_value


def symmetric_scale(absmax: torch.Tensor, fmt: ActivationFormat) -> torch.Tensor:
    """fp32 scale absmax / max_code (broadcastable as ``absmax``); zero absmax gives 1."""
    scale = absmax.float() / max_code(fmt)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def fake_quantize_symmetric(
    x: torch.Tensor, scale: torch.Tensor, fmt: ActivationFormat
) -> torch.Tensor:
    """x̂ (fp32, shape of ``x``) on the symmetric grid of ``fmt`` with broadcastable ``scale``."""
    y = x.float() / scale
    if isinstance(fmt, FloatFormat):
        return fmt.round(y) * scale
    top = max_code(fmt)
    return torch.round(y).clamp_(-top - 1, top) * scale


def fake_quantize_asymmetric(
    x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, fmt: IntFormat
) -> torch.Tensor:
    """x̂ (fp32) on the unsigned grid spanning [min(lo, 0), max(hi, 0)] (broadcastable)."""
    levels = 2**fmt.bits - 1
    lo, hi = lo.float().clamp(max=0), hi.float().clamp(min=0)
    scale = (hi - lo) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-lo / scale)
    q = (torch.round(x.float() / scale) + zero).clamp_(0, levels)
    return (q - zero) * scale


def fake_quantize_rows(x: torch.Tensor, fmt: ActivationFormat) -> torch.Tensor:
    """Dynamic quantization of every row (last dimension) of ``x`` (..., n) with its own range:
    per-token activations, per-token or per-head KV entries. Returns fp32 (..., n)."""
    if isinstance(fmt, IntFormat) and not fmt.symmetric:
        lo = x.amin(dim=-1, keepdim=True)
        hi = x.amax(dim=-1, keepdim=True)
        return fake_quantize_asymmetric(x, lo, hi, fmt)
    absmax = x.abs().amax(dim=-1, keepdim=True)
    return fake_quantize_symmetric(x, symmetric_scale(absmax, fmt), fmt)


def fake_quantize_tensor(
    x: torch.Tensor, fmt: ActivationFormat, threshold: float | None = None
) -> torch.Tensor:
    """One scale for the whole of ``x``: from ``threshold`` (a calibrated static absmax; values
    beyond it saturate) or, when None, from x's own range (dynamic per tensor). fp32."""
    if threshold is None:
        return fake_quantize_rows(x.reshape(1, -1), fmt).reshape(x.shape)
    if isinstance(fmt, IntFormat) and not fmt.symmetric:
        raise ConfigError(
            f"a static threshold needs a symmetric format, got {fmt.name}; use int8 or fp8_e4m3"
        )
    return fake_quantize_symmetric(
        x, symmetric_scale(torch.tensor(threshold, device=x.device), fmt), fmt
    )
