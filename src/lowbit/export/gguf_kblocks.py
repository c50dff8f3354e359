"""lowbit's GGML-format weights (:class:`~lowbit.formats.GGMLFormat`) as GGML block bytes (pure
numpy). The parameter bytes are already ggml's (``qw.scale``); only the codes are packed:

- Q4_K (144 bytes): d, dmin, 12 scale bytes, then 128 bytes: byte b of 32-byte chunk j holds
  q[64j + b] (low nibble) and q[64j + 32 + b] (high nibble).
- Q5_K (176 bytes): d, dmin, 12 scale bytes, 32 bytes of fifth bits (bit i of byte b is that
  of q[32i + b]), then the low nibbles as in Q4_K.
- Q6_K (210 bytes): 128 bytes of low nibbles (byte 64h + b: q[128h + b] low, q[128h + 64 + b]
  high), 64 bytes of top bit pairs (bits 2s of byte 32h + b: q[128h + 32s + b]), then the 16
  int8 scales and fp16 d (the parameter bytes).
- Q5_0 (22 bytes) / Q5_1 (24): d (and m), 4 bytes of fifth bits (bit j: q[j]), 16 bytes of
  nibbles (byte j: q[j] low, q[j + 16] high). Q8_0 (34): d, then 32 int8 codes.
"""

from __future__ import annotations

import numpy as np


def _nibble_pairs(q: np.ndarray, width: int) -> np.ndarray:
    """(..., n) values < 16 → bytes (..., n/2): within each run of 2·width values, byte b holds
    value b (low nibble) and value width + b (high nibble)."""
    q = q.reshape(*q.shape[:-1], -1, 2, width).astype(np.uint8)
    return (q[..., 0, :] | (q[..., 1, :] << 4)).reshape(*q.shape[:-3], -1)


def _bit_planes(bits: np.ndarray, planes: int, shift: int) -> np.ndarray:
    """(..., planes·w) fields of ``shift`` bits → (..., w) bytes: field p·w + b goes to bits
    shift·p of byte b."""
    fields = bits.reshape(*bits.shape[:-1], planes, -1).astype(np.uint8)
    out = np.zeros(fields.shape[:-2] + fields.shape[-1:], dtype=np.uint8)
    for p in range(planes):
        out |= fields[..., p, :] << np.uint8(shift * p)
    return out


def _q4_k(q: np.ndarray, header: np.ndarray) -> np.ndarray:
    return np.concatenate([header, _nibble_pairs(q, 32)], axis=-1)


def _q5_k(q: np.ndarray, header: np.ndarray) -> np.ndarray:
    high = _bit_planes(q >> 4, 8, 1)
    return np.concatenate([header, high, _nibble_pairs(q & 0x0F, 32)], axis=-1)


def _q6_k(q: np.ndarray, header: np.ndarray) -> np.ndarray:
    halves = q.reshape(*q.shape[:-1], 2, 128)
    low = _nibble_pairs(halves & 0x0F, 64).reshape(*q.shape[:-1], 128)
    high = _bit_planes(halves >> 4, 4, 2).reshape(*q.shape[:-1], 64)
    return np.concatenate([low, high, header], axis=-1)


def _q5_legacy(q: np.ndarray, header: np.ndarray) -> np.ndarray:
    bits = np.packbits((q >> 4).astype(np.uint8), axis=-1, bitorder="little")
    return np.concatenate([header, bits, _nibble_pairs(q & 0x0F, 16)], axis=-1)


def _q8_0(q: np.ndarray, header: np.ndarray) -> np.ndarray:
    return np.concatenate([header, q.astype(np.int8).view(np.uint8)], axis=-1)


_PACKERS = {"q4_k": _q4_k, "q5_k": _q5_k, "q6_k": _q6_k, "q5_0": _q5_legacy}
_PACKERS.update({"q5_1": _q5_legacy, "q8_0": _q8_0})


def ggml_blocks(kind: str, codes: np.ndarray, header: np.ndarray) -> np.ndarray:
    """Codes (rows, cols) and parameter bytes (rows, blocks, header bytes) of a ``kind`` weight
    → GGML bytes (rows, blocks · type size)."""
    rows, blocks = header.shape[:2]
    q = codes.reshape(rows, blocks, -1)
    return _PACKERS[kind](q, header).reshape(rows, -1)
