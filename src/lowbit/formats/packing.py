"""Exact sub-byte packing of integer codes into a little-endian bit stream.

``pack(codes, bits)`` stores each code in ``bits`` bits (two's complement for signed formats);
``unpack`` inverts it exactly. The packed size is ceil(n·bits / 8) bytes.
"""

from __future__ import annotations

import numpy as np
import torch

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
