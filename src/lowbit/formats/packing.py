"""Exact sub-byte packing of codes into a little-endian bit stream.

``pack(codes, bits)`` stores each code in ``bits`` bits (two's complement for signed formats);
``unpack`` inverts it exactly. The packed size is ceil(n·bits / 8) bytes. Code i occupies bits
i·bits … i·bits + bits - 1 of the stream, least significant first: 4-bit codes are two nibbles
per byte (the first in the low nibble), 6-bit codes four per three bytes. ``pack_weight`` /
``unpack_weight`` store a whole :class:`QuantizedWeight` of any format.

Packing is torch arithmetic on the device of its input (8 codes of ``bits`` bits make one
``bits``-byte word); packed tensors stay there, so a writer moves them to the CPU itself (as
safetensors needs). ``unpack_weight(..., device=...)`` unpacks on the device given, so a loader
dequantizes straight onto it.
"""

from __future__ import annotations

import torch

from lowbit.formats.granularity import Granularity
from lowbit.formats.tensor import QuantizedWeight, WeightFormat

_CHUNK = 1 << 20  # codes per step (a multiple of 8, so every step ends on a byte boundary)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes (any shape; values must fit ``bits`` bits) into a flat uint8 tensor
    on the device of ``codes``.

    Works in steps of ``_CHUNK`` codes, so temporary memory stays bounded for any layer size.
    Widths that divide 8 (1, 2, 4, 8 bits) are joined byte by byte in uint8; the others as
    8 codes to one 8·bits-bit word."""
    flat = codes.reshape(-1)
    out = torch.empty(packed_nbytes(flat.numel(), bits), dtype=torch.uint8, device=flat.device)
    for start in range(0, flat.numel(), _CHUNK):
        part = flat[start : start + _CHUNK]
        data = _pack_bytes(part, bits) if 8 % bits == 0 else _pack_words(part, bits)
        first = start * bits // 8
        out[first : first + data.numel()] = data
    return out


def _pack_bytes(part: torch.Tensor, bits: int) -> torch.Tensor:
    """``8 / bits`` codes to one byte, the first in the lowest bits."""
    per_byte = 8 // bits
    fields = part.to(torch.uint8) & ((1 << bits) - 1)  # two's complement: the low bits
    fields = torch.nn.functional.pad(fields, (0, -fields.numel() % per_byte)).reshape(-1, per_byte)
    return _join(fields, bits)


def _pack_words(part: torch.Tensor, bits: int) -> torch.Tensor:
    """8 codes to one word of 8·bits bits (the first lowest), cut into ``bits`` bytes."""
    groups = part.to(torch.int64) & ((1 << bits) - 1)
    groups = torch.nn.functional.pad(groups, (0, -groups.numel() % 8)).reshape(-1, 8)
    byte_shifts = torch.arange(0, 8 * bits, 8, device=part.device)
    word = _join(groups, bits)
    data = ((word[:, None] >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)
    return data[: packed_nbytes(part.numel(), bits)]


def unpack(packed: torch.Tensor, bits: int, count: int, signed: bool) -> torch.Tensor:
    """Inverse of :func:`pack`: ``count`` codes as int16 (signed codes sign-extended), on the
    device of ``packed``."""
    out = torch.empty(count, dtype=torch.int16, device=packed.device)
    for start in range(0, count, _CHUNK):
        n = min(_CHUNK, count - start)
        first = start * bits // 8
        data = packed[first : first + packed_nbytes(n, bits)]
        fields = _unpack_bytes(data, bits) if 8 % bits == 0 else _unpack_words(data, bits)
        out[start : start + n] = fields[:n]
    if signed:  # v - 2^bits where the top bit is set: exact in int16 for bits ≤ 8
        out -= (out >> (bits - 1)) << bits
    return out


def _unpack_bytes(data: torch.Tensor, bits: int) -> torch.Tensor:
    """Each byte to its ``8 / bits`` fields (the lowest first), as int16."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=data.device)
    return ((data[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1).to(torch.int16)


def _unpack_words(data: torch.Tensor, bits: int) -> torch.Tensor:
    """Each run of ``bits`` bytes to one word and its 8 fields (the lowest first), as int16."""
    data = data.to(torch.int64)
    data = torch.nn.functional.pad(data, (0, -data.numel() % bits)).reshape(-1, bits)
    word = _join(data, 8)  # ``bits`` bytes → one word holding 8 codes
    shifts = torch.arange(0, 8 * bits, bits, device=data.device)
    return ((word[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1).to(torch.int16)


def _join(fields: torch.Tensor, width: int) -> torch.Tensor:
    """Per row of ``fields`` (rows, k), Σ fields[:, i] << (i · width) (disjoint bits), in the
    dtype of ``fields`` (wide enough for k · width bits)."""
    word = fields[:, 0].clone()
    for i in range(1, fields.shape[1]):
        word |= fields[:, i] << (i * width)
    return word


def packed_nbytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def code_dtype(fmt: WeightFormat) -> torch.dtype:
    """The dtype codes of ``fmt`` live in: int8 for two's complement codes, else uint8."""
    return torch.int8 if fmt.signed_codes else torch.uint8


def pack_codes(codes: torch.Tensor, fmt: WeightFormat) -> torch.Tensor:
    """Codes of any format in ``fmt.bits`` bits each: FP4/NF4 as two nibbles per byte (first
    value in the low nibble), FP6 as four values in three bytes, integers in two's complement."""
    return pack(codes, fmt.bits)


def unpack_codes(packed: torch.Tensor, fmt: WeightFormat, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``count`` codes (flat) in :func:`code_dtype`."""
    return unpack(packed, fmt.bits, count, fmt.signed_codes).to(code_dtype(fmt))


def pack_weight(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    """The stored tensors of one weight: ``codes`` and ``zero`` packed to their bit width,
    ``scale`` in its storage dtype (fp16/bf16/fp32 scales, E8M0 bytes, FP8 E4M3 block scales or
    a LUT's fp16 table), ``perm`` as int32, ``tensor_scale`` as fp32 and the sparse outliers as
    ``outlier_index`` (int32 flat indices) and ``outlier_value`` (fp16), when present. Every
    tensor is on the weight's device: move them to the CPU to write them."""
    out = {"codes": pack_codes(qw.codes, qw.fmt), "scale": qw.scale.contiguous()}
    if qw.zero is not None:
        out["zero"] = pack(qw.zero, qw.fmt.bits)
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
    device: torch.device | str | None = None,
) -> QuantizedWeight:
    """Inverse of :func:`pack_weight` for a weight of ``shape`` (out, in), unpacked on ``device``
    (None: where ``tensors`` are), so a loader can dequantize straight onto an accelerator."""
    if device is not None:
        tensors = {k: v.to(device) for k, v in tensors.items()}
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
