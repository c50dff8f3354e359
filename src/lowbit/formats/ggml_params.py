"""The parameters of GGML's block types as the bytes GGUF stores them (pure torch maths).

Each block's parameters ("header") are kept in a :class:`~lowbit.formats.QuantizedWeight`'s
``scale`` as uint8 (rows, blocks, header bytes), byte for byte as ggml lays them out, so the bits
counted are the bits stored:

- Q4_K / Q5_K (16 bytes per 256 weights): fp16 ``d``, fp16 ``dmin``, then 12 bytes holding eight
  6-bit sub-block scales ``sc`` and eight 6-bit mins ``m`` (ggml's ``get_scale_min_k4`` layout);
  sub-block j (32 weights) is x = d·sc_j·q - dmin·m_j, q ∈ [0, 15] (Q4_K) or [0, 31] (Q5_K).
- Q6_K (18 bytes per 256): sixteen int8 sub-block scales, then fp16 ``d``; sub-block j (16
  weights) is x = d·sc_j·(q - 32), q ∈ [0, 63].
- Q5_0 (2 bytes per 32): fp16 d; x = d·(q - 16). Q5_1 (4 bytes): fp16 d, fp16 m; x = d·q + m.
  Q8_0 (2 bytes): fp16 d; x = d·q, q ∈ [-127, 127].

:func:`affine` turns headers into one (step, offset) pair per sub-block with exactly the fp32
operations of ``gguf.quants``' dequantizers, so x = step·(q - center) (+ offset) here is the
value llama.cpp reads, bit for bit.
"""

from __future__ import annotations

import torch

from lowbit.formats.scaling import storable_scale

SCALE_MAX = 63  # 6-bit sub-block scales and mins (Q4_K, Q5_K)
Q6_SCALE_MAX = 127  # int8 sub-block scales (Q6_K)


def fp16_bytes(x: torch.Tensor) -> torch.Tensor:
    """fp32 values already representable in fp16 (rows, n) → little-endian bytes (rows, n, 2)."""
    return x.to(torch.float16).contiguous().view(torch.uint8).reshape(*x.shape, 2)


def fp16_round(x: torch.Tensor) -> torch.Tensor:
    """fp32 → the nearest fp16 (ties to even, as ggml's GGML_FP32_TO_FP16), back as fp32."""
    return x.to(torch.float16).float()


def fp16_values(b: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fp16_bytes`: bytes (rows, n, 2) → fp32 (rows, n)."""
    return b.contiguous().view(torch.float16)[..., 0].float()


def pack_scale_min(sc: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Eight 6-bit scales and mins (rows, n, 8) → ggml's 12 bytes (rows, n, 12): byte j < 4 holds
    sc_j and the top two bits of sc_{j+4}; byte 4 + j the same for m; byte 8 + j the low nibbles
    of sc_{j+4} and m_{j+4}."""
    sc, m = sc.to(torch.uint8), m.to(torch.uint8)
    lo_sc, hi_sc, lo_m, hi_m = sc[..., :4], sc[..., 4:], m[..., :4], m[..., 4:]
    first = lo_sc | ((hi_sc >> 4) << 6)
    second = lo_m | ((hi_m >> 4) << 6)
    third = (hi_sc & 0x0F) | ((hi_m & 0x0F) << 4)
    return torch.cat([first, second, third], dim=-1)


def unpack_scale_min(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack_scale_min`: (rows, n, 12) bytes → sc, m (rows, n, 8) uint8."""
    first, second, third = b[..., :4], b[..., 4:8], b[..., 8:12]
    sc = torch.cat([first & 0x3F, (third & 0x0F) | ((first >> 2) & 0x30)], dim=-1)
    m = torch.cat([second & 0x3F, (third >> 4) | ((second >> 2) & 0x30)], dim=-1)
    return sc, m


def _ceil_count(need: torch.Tensor, unit: torch.Tensor, top: int) -> torch.Tensor:
    """The least integer count n ∈ [0, top] with n·unit ≥ need (need ≥ 0, unit > 0), as fp32."""
    return torch.ceil(need / unit).clamp(0, top)


def kquant_super(lo: torch.Tensor, hi: torch.Tensor, levels: int) -> tuple[torch.Tensor, ...]:
    """Q4_K/Q5_K super-block parameters from sub-block ranges ``lo``/``hi`` (rows, n, 8):
    dmin, then d, rounded *up* to fp16 so every sub-block's min and step fit their 6 bits.
    ``levels``: 15 (Q4_K) or 31 (Q5_K). Returns d, dmin (rows, n) fp32."""
    neg = (-lo).clamp(min=0)
    dmin = storable_scale(neg.amax(dim=-1) / SCALE_MAX, torch.float16)
    m = _ceil_count(neg, dmin[..., None], SCALE_MAX)
    need = (hi + dmin[..., None] * m).clamp(min=0) / levels
    d = storable_scale(need.amax(dim=-1) / SCALE_MAX, torch.float16)
    return d, dmin


def kquant_sub(
    lo: torch.Tensor, hi: torch.Tensor, d: torch.Tensor, dmin: torch.Tensor, levels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K sub-block scale and min (broadcast shapes) for ranges ``lo``/``hi`` under the
    super-block's ``d``/``dmin``: m = ⌈-lo / dmin⌉, then sc = ⌈(hi + dmin·m) / (levels·d)⌉, both
    clamped to [0, 63] (rounded up: the range is covered, nothing clipped inside it)."""
    m = _ceil_count((-lo).clamp(min=0), dmin, SCALE_MAX)
    sc = _ceil_count((hi + dmin * m).clamp(min=0) / levels, d, SCALE_MAX)
    return sc, m


def q6k_super(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Q6_K super-block d (rows, n) from 16-wide sub-block ranges (rows, n, 16): the largest
    sub-block step |extreme| / 32 is 127·d (d rounded up to fp16)."""
    step = torch.maximum(lo.abs(), hi.abs()) / 32
    return storable_scale(step.amax(dim=-1) / Q6_SCALE_MAX, torch.float16)


def q6k_sub(lo: torch.Tensor, hi: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Q6_K signed sub-block scale: the extreme of largest magnitude (with its sign; a tie takes
    the negative one) lands on code -32, its step rounded up in magnitude to whole units of d."""
    negative = lo.abs() >= hi.abs()
    magnitude = _ceil_count(torch.maximum(lo.abs(), hi.abs()) / 32, d, Q6_SCALE_MAX)
    return torch.where(negative, magnitude, -magnitude)


def kquant_header(
    d: torch.Tensor, dmin: torch.Tensor, sc: torch.Tensor, m: torch.Tensor
) -> torch.Tensor:
    """Q4_K/Q5_K header bytes (rows, n, 16) from d, dmin (rows, n) and sc, m (rows, n, 8)."""
    return torch.cat([fp16_bytes(d), fp16_bytes(dmin), pack_scale_min(sc, m)], dim=-1)


def q6k_header(d: torch.Tensor, sc: torch.Tensor) -> torch.Tensor:
    """Q6_K header bytes (rows, n, 18): int8 scales (rows, n, 16), then fp16 d (rows, n)."""
    return torch.cat([sc.to(torch.int8).view(torch.uint8), fp16_bytes(d)], dim=-1)


def kquant_parts(header: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Q4_K/Q5_K header (rows, n, 16) → d, dmin (rows, n) fp32 and sc, m (rows, n, 8) fp32."""
    sc, m = unpack_scale_min(header[..., 4:16])
    return fp16_values(header[..., 0:2]), fp16_values(header[..., 2:4]), sc.float(), m.float()


def q6k_parts(header: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q6_K header (rows, n, 18) → d (rows, n) and sc (rows, n, 16), fp32."""
    sc = header[..., :16].contiguous().view(torch.int8).float()
    return fp16_values(header[..., 16:18]), sc


def affine(kind: str, header: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per sub-block step and offset (rows, n·subs) fp32 of a header, as gguf computes them:
    Q4_K/Q5_K step = d·sc, offset = -(dmin·m); Q6_K step = d·sc; Q5_1 step = d, offset = m;
    Q5_0/Q8_0 step = d (offset None: nothing is added)."""
    rows = header.shape[0]
    if kind in ("q4_k", "q5_k"):
        d, dmin, sc, m = kquant_parts(header)
        step, offset = d[..., None] * sc, -(dmin[..., None] * m)
        return step.reshape(rows, -1), offset.reshape(rows, -1)
    if kind == "q6_k":
        d, sc = q6k_parts(header)
        return (d[..., None] * sc).reshape(rows, -1), None
    step = fp16_values(header[..., 0:2])
    return step, (fp16_values(header[..., 2:4]) if kind == "q5_1" else None)


def sub_header(
    kind: str, header: torch.Tensor, j: int, lo: torch.Tensor, hi: torch.Tensor, levels: int
) -> torch.Tensor:
    """One k-quant block's header (rows, 1, bytes) with sub-block ``j``'s scale (and min)
    chosen anew for the range ``lo``/``hi`` (rows,), the super-block's d (and dmin) kept."""
    if kind == "q6_k":
        d, sc = q6k_parts(header)
        sc[..., j] = q6k_sub(lo[:, None], hi[:, None], d)
        return q6k_header(d, sc)
    d, dmin, sc, m = kquant_parts(header)
    sc[..., j], m[..., j] = kquant_sub(lo[:, None], hi[:, None], d, dmin, levels)
    return kquant_header(d, dmin, sc, m)
