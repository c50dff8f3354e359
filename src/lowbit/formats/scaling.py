"""Shared pieces of the scaled formats: storable float scales, finiteness checks, per-group sums
and the "fixed grid × one float scale per group" encoding used by FP and NF4 elements."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lowbit._tensor import all_finite
from lowbit.errors import ConfigError, DataError
from lowbit.formats.granularity import Granularity, PerGroup, PerTensor, group_index
from lowbit.formats.tensor import QuantizedWeight

SCALE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def check_scale_dtype(scale_dtype: str, what: str) -> None:
    if scale_dtype not in SCALE_DTYPES:
        raise ConfigError(
            f"{what}: scale dtype {scale_dtype!r} is not one of {sorted(SCALE_DTYPES)}"
        )


def storable_scale(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round fp32 ``scale`` *up* to ``dtype`` (so the clipping range still fits the grid), in
    fp32; a non-positive scale (an all-zero group) becomes 1."""
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    stored = scale.to(dtype)
    up = torch.nextafter(stored, torch.full_like(stored, torch.inf))
    out = torch.where(stored.float() < scale, up, stored).float()
    if not all_finite(out):
        raise DataError(
            f"a group's scale ({float(scale.max()):.4g}) exceeds the largest {dtype} value: the "
            "weights are too large for this scale dtype; use scale_dtype float32 or keep the "
            "layer in full precision"
        )
    return out


def check_finite(W: torch.Tensor, name: str) -> None:
    """Raise :class:`DataError` naming ``name`` and the first bad entry when ``W`` holds NaN or
    infinity (a quantizer would turn them into garbage scales silently)."""
    bad = ~torch.isfinite(W)
    if bool(bad.any()):
        first = [int(i) for i in bad.nonzero()[0]]
        raise DataError(
            f"weight {name!r} has {int(bad.sum())} NaN or infinite value(s) (first at index "
            f"{first}); it cannot be quantized: check the checkpoint or keep this layer in full "
            "precision"
        )


def group_sum(E: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """Sum ``E`` (out, in) over the columns of each group: (out, n_groups), or (1, 1) per tensor."""
    if isinstance(granularity, PerTensor):
        return E.sum().reshape(1, 1)
    n_groups = granularity.groups(E.shape[1])
    g_idx = group_index(E.shape[1], granularity, E.device)
    out = torch.zeros(E.shape[0], n_groups, dtype=E.dtype, device=E.device)
    return out.index_add_(1, g_idx, E)


def scale_bits_per_weight(
    scale_bits: float, in_features: int, granularity: Granularity, out_features: int = 1
) -> float:
    """Bits per weight of one ``scale_bits`` parameter per group (one per tensor for PerTensor)."""
    if isinstance(granularity, PerTensor):
        return scale_bits / (in_features * out_features)
    return granularity.groups(in_features) * scale_bits / in_features


def columns(params: torch.Tensor, granularity: Granularity, in_features: int) -> torch.Tensor:
    """Per-group parameters (rows, n_groups) spread to every column: (rows, in_features)."""
    return params[:, group_index(in_features, granularity, params.device)]


def encode_on_grid(
    fmt: object,
    W: torch.Tensor,
    absmax: torch.Tensor,
    granularity: Granularity,
    max_value: float,
    to_codes: Callable[[torch.Tensor], torch.Tensor],
    scale_dtype: torch.dtype,
) -> QuantizedWeight:
    """Codes of ``W`` (out, in) on a fixed grid whose largest magnitude is ``max_value``, with one
    float scale absmax / max_value per group (rounded up to ``scale_dtype``)."""
    scale = storable_scale(absmax / max_value, scale_dtype)
    codes = to_codes(W.float() / columns(scale, granularity, W.shape[1]))
    return QuantizedWeight(codes, scale.to(scale_dtype), None, fmt, granularity)


def decode_on_grid(
    qw: QuantizedWeight, from_codes: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Grid values of the codes times their group's float scale: (out, in) fp32."""
    return from_codes(qw.codes) * columns(qw.scale.float(), qw.granularity, qw.shape[1])


def require_group(fmt_name: str, granularity: Granularity, size: int, source: str) -> None:
    """Block formats fix their block size; anything else is a ConfigError naming the fix."""
    if isinstance(granularity, PerGroup) and granularity.size == size:
        return
    raise ConfigError(
        f"{fmt_name} uses blocks of {size} input columns ({source}), got {granularity.describe()}; "
        f"use granularity PerGroup({size}) (group size {size})"
    )


class GridScaled:
    """Shared methods of the formats that are a fixed value grid times one float scale per
    group (FP and NF4 elements): the subclass gives ``bits``, ``scale_dtype``, ``max_value``,
    ``to_codes`` and ``from_codes``."""

    @property
    def torch_scale_dtype(self) -> torch.dtype:
        return SCALE_DTYPES[self.scale_dtype]  # type: ignore[attr-defined]

    @property
    def scale_bits(self) -> int:
        return torch.finfo(self.torch_scale_dtype).bits

    def bits_per_weight(
        self, in_features: int, granularity: Granularity, out_features: int = 1
    ) -> float:
        return self.bits + scale_bits_per_weight(  # type: ignore[attr-defined]
            self.scale_bits,  # type: ignore[attr-defined]
            in_features,
            granularity,
            out_features,
        )

    def check_granularity(self, granularity: Granularity) -> None:
        """Any granularity works."""

    def encode(
        self, W: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, granularity: Granularity
    ) -> QuantizedWeight:
        absmax = torch.maximum(lo.abs(), hi.abs())
        return encode_on_grid(
            self,  # type: ignore[arg-type]
            W,
            absmax,
            granularity,
            self.max_value,  # type: ignore[attr-defined]
            self.to_codes,  # type: ignore[attr-defined]
            self.torch_scale_dtype,  # type: ignore[attr-defined]
        )

    def decode(self, qw: QuantizedWeight) -> torch.Tensor:
        return decode_on_grid(qw, self.from_codes)  # type: ignore[attr-defined]
