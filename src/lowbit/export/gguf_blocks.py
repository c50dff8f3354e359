"""lowbit's integer codes as GGML blocks of 32 weights along the input dimension (pure numpy).

- Q4_0 (18 bytes): fp16 d, then 16 bytes where byte j holds q[j] (low nibble) and q[j+16]
  (high nibble), q = code + 8 ∈ [0, 15]; x = (q - 8)·d. lowbit's symmetric INT4 group 32 with
  fp16 scales is exactly this (d = scale).
- Q4_1 (20 bytes): fp16 d, fp16 m, then the nibbles as in Q4_0; x = q·d + m. lowbit's
  asymmetric INT4 group 32 has x = (q - z)·s, so d = s and m = -z·s rounded to fp16: exact
  only where -z·s is an fp16 number (the difference is measured and reported).
- Q8_0 (34 bytes): fp16 d, then 32 int8 codes; x = q·d. lowbit's symmetric INT8 group 32.
"""

from __future__ import annotations

import numpy as np

BLOCK = 32


def _nibbles(q: np.ndarray) -> np.ndarray:
    """(rows, blocks, 32) values in [0, 15] → (rows, blocks, 16) bytes."""
    q = q.astype(np.uint8)
    return q[..., :16] | (q[..., 16:] << 4)


def _half_bytes(x: np.ndarray) -> np.ndarray:
    """(rows, blocks) floats → (rows, blocks, 2) little-endian fp16 bytes."""
    return x.astype("<f2").reshape(*x.shape, 1).view(np.uint8)


def _blocks(codes: np.ndarray) -> np.ndarray:
    rows, cols = codes.shape
    if cols % BLOCK:
        raise ValueError(f"{cols} columns are not a whole number of {BLOCK}-wide blocks")
    return codes.reshape(rows, cols // BLOCK, BLOCK)


def q4_0(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Signed codes (rows, cols) in [-8, 7], fp16-valued scales (rows, cols/32) → bytes
    (rows, cols/32·18)."""
    q = _blocks(codes.astype(np.int16) + 8)
    out = np.concatenate([_half_bytes(scale), _nibbles(q)], axis=-1)
    return out.reshape(codes.shape[0], -1)


def q4_1(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> tuple[np.ndarray, float]:
    """Unsigned codes in [0, 15] with integer zero points → bytes (rows, cols/32·20) and the
    largest weight difference the fp16 minimum introduces."""
    minimum = (-zero.astype(np.float32) * scale.astype(np.float32)).astype(np.float16)
    error = np.abs(minimum.astype(np.float32) + zero * scale.astype(np.float32))
    q = _blocks(codes)
    out = np.concatenate([_half_bytes(scale), _half_bytes(minimum), _nibbles(q)], axis=-1)
    return out.reshape(codes.shape[0], -1), float(error.max(initial=0.0))


def q8_0(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Signed codes in [-128, 127], fp16-valued scales → bytes (rows, cols/32·34)."""
    q = _blocks(codes.astype(np.int8)).view(np.uint8)
    out = np.concatenate([_half_bytes(scale), q], axis=-1)
    return out.reshape(codes.shape[0], -1)


def permute_rows(x: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order for Llama (rotary halves interleaved per head), applied to any
    per-row array (weights, codes, scales)."""
    rows = x.shape[0]
    return x.reshape(n_head, 2, rows // n_head // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
