"""Exact sub-byte packing of codes into a little-endian bit stream.

``pack(codes, bits)`` stores each code in ``bits`` bits (two's complement for signed formats);
``unpack`` inverts it exactly. The packed size is ceil(n·bits / 8) bytes. Code i occupies bits
i·bits … i·bits + bits - 1 of the stream, least significant first: 4-bit codes are two nibbles
per byte (the first in the low nibble), 6-bit codes four per three bytes. ``pack_weight`` /
``unpack_weight`` store a whole :class:`QuantizedWeight` of any format.
"""

from __future__ import annotations

import numpy as np
import torch

from lowbit.formats.granularity import Granularity
from lowbit.formats.tensor import QuantizedWeight, WeightFormat

_CHUNK = 1 << 20  # codes per step (a multiple of 8, so every step ends on a byte boundary)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes (any shape; values must fit ``bits`` bits) into a flat uint8 tensor.

    Works in steps of ``_CHUNK`` codes, so temporary memory stays bounded for any layer size."""
    flat = codes.reshape(-1).numpy()
    shifts = np.arange(bits, dtype=np.uint8)
    parts = []
    for start in range(0, flat.size, _CHUNK):
        part = flat[start : start + _CHUNK].astype(np.int16) & ((1 << bits) - 1)
        bit_matrix = ((part[:, None] >> shifts) & 1).astype(np.uint8)
        parts.append(np.packbits(bit_matrix.reshape(-1), bitorder="little"))
    return torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, np.uint8))


def unpack(packed: torch.Tensor, bits: int, count: int, signed: bool) -> torch.Tensor:
    """Inverse of :func:`pack`: ``count`` codes as int16 (signed codes sign-extended)."""
    data = packed.numpy()
    weights = (1 << np.arange(bits, dtype=np.int16)).astype(np.int16)
    out = np.empty(count, dtype=np.int16)
    for start in range(0, count, _CHUNK):
        n = min(_CHUNK, count - start)
        first, last = start * bits // 8, (start + n) * bits // 8 + 1
        stream = np.unpackbits(data[first:last], bitorder="little", count=n * bits)
        out[start : start + n] = stream.reshape(n, bits).astype(np.int16) @ weights
    if signed:
        out = np.where(out >= 1 << (bits - 1), out - (1 << bits), out).astype(np.int16)
    return torch.from_numpy(out)


def packed_nbytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def code_dtype(fmt: WeightFormat) -> torch.dtype:
    """The dtype codes of ``fmt`` live in: int8 for two's complement codes, else uint8."""
    return torch.int8 if fmt.signed_codes else torch.uint8


def pack_codes(codes: torch.Tensor, fmt: WeightFormat) -> torch.Tensor:
    """Codes of any format in ``fmt.bits`` bits each: FP4/NF4 as two nibbles per byte (first
    value in the low nibble), FP6 as four values in three bytes, integers in two's complement."""
    return pack(codes.cpu(), fmt.bits)


def unpack_codes(packed: torch.Tensor, fmt: WeightFormat, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``count`` codes (flat) in :func:`code_dtype`."""
    return unpack(packed, fmt.bits, count, fmt.signed_codes).to(code_dtype(fmt))


def pack_weight(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    """The stored tensors of one weight: ``codes`` and ``zero`` packed to their bit width,
    ``scale`` in its storage dtype (fp16/bf16/fp32 scales, E8M0 bytes, FP8 E4M3 block scales or
    a LUT's fp16 table), ``perm`` as int32, ``tensor_scale`` as fp32 and the sparse outliers as
    ``outlier_index`` (int32 flat indices) and ``outlier_value`` (fp16), when present."""
    out = {"codes": pack_codes(qw.codes, qw.fmt), "scale": qw.scale.contiguous()}
    if qw.zero is not None:
        out["zero"] = pack(qw.zero.cpu(), qw.fmt.bits)
    if qw.perm is not None:
        out["perm"] = qw.perm.to(torch.int32)
    if qw.tensor_scale is not None:
        out["tensor_scale"] = qw.tensor_scale.float().reshape(())
    if qw.outliers is not None:
        out["outlier_index"] = qw.outliers[0].to(torch.int32).contiguous()
        out["outlier_value"] = qw.outliers[1].to(torch.float16).contiguous()
    return out


def unpack_weight(
    tensors: dict[str, torch.Tensor],
    fmt: WeightFormat,
    granularity: Granularity,
    shape: tuple[int, int],
) -> QuantizedWeight:
    """Inverse of :func:`pack_weight` for a weight of ``shape`` (out, in)."""
    out_f, in_f = shape
    codes = unpack_codes(tensors["codes"], fmt, out_f * in_f).view(out_f, in_f)
    scale = tensors["scale"]
    zero = None
    if "zero" in tensors:
        zero = unpack(tensors["zero"], fmt.bits, scale.numel(), False).to(torch.uint8)
        zero = zero.view(scale.shape)
    perm = tensors["perm"].long() if "perm" in tensors else None
    outliers = None
    if "outlier_index" in tensors or "outlier_value" in tensors:
        if "outlier_index" not in tensors or "outlier_value" not in tensors:
            raise ValueError("sparse outliers need both outlier_index and outlier_value")
        outliers = (tensors["outlier_index"], tensors["outlier_value"])
    return QuantizedWeight(
        codes, scale, zero, fmt, granularity, perm, tensors.get("tensor_scale"), outliers
    )
