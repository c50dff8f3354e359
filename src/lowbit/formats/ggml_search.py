"""llama.cpp's reference k-quant rule (``quantize_row_q{4,5,6}_K_ref`` in ggml-quants.c), the
rule behind every Q4_K, Q5_K and Q6_K file made without an importance matrix.

- Q4_K / Q5_K: each 32-wide sub-block's scale and minimum come from ``make_qkx2_quants``: start
  from the min-max grid (the minimum is never above 0), then try ``nstep + 1`` wider and narrower
  grids (``iscale = (rmin + rdelta·i + nmax) / (max - min)``), fit the scale and minimum of each
  by weighted least squares on its codes (weights ``rms(sub-block) + |x|``), and keep the one of
  least weighted squared error. Q4_K searches rmin -1, 20 steps; Q5_K rmin -0.5, 15 steps. The
  super-block's d and dmin are the largest scale and minimum over 63, stored as fp16 (rounded to
  nearest); each sub-block's 6-bit scale and minimum are rounded to nearest.
- Q6_K: each 16-wide sub-block's signed scale from ``make_qx_quants`` (rmse type 1: weights x²,
  19 grids around the one whose extreme lands on code -32, least-squares scale); the sub-block
  of largest |scale| gets the int8 scale -128, d = -its scale / 128 in fp16.
- Codes are then rounded to nearest under the stored (fp16, 6- or 8-bit) parameters; a sub-block
  whose stored step is 0 keeps the codes of its search, as llama.cpp does.

Every sum runs in fp32 in llama.cpp's order (one column at a time, vectorised over sub-blocks)
and every rounding is to nearest even (llama.cpp's ``nearest_int``), so on x86 builds without
fused multiply-add the bytes equal llama.cpp's; a build that fuses (``-march=native``) can
differ in a rare block. Pure maths: tensors in, tensors out.
"""

from __future__ import annotations

import torch

from lowbit.formats import ggml_params as P

GROUP_MAX_EPS = 1e-15
# make_qkx2_quants' search per type: (levels, rmin, rdelta, nstep)
QKX2 = {"q4_k": (15, -1.0, 0.1, 20), "q5_k": (31, -0.5, 0.1, 15)}
_F32 = torch.float32


def _f(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=_F32)


def _over(num: float, den: torch.Tensor) -> torch.Tensor:
    """num / den, correctly rounded (``num / tensor`` in torch multiplies by the reciprocal)."""
    return torch.full_like(den, num) / den


def _nearest(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x)  # half to even, as nearest_int's 1.5·2^23 trick


def _rms(x: torch.Tensor) -> torch.Tensor:
    """sqrtf(sum of squares / n) per row, correctly rounded (torch's fp32 sqrt on the CPU can
    be one ulp off; the fp64 root rounded to fp32 is exact)."""
    return torch.sqrt((_seq_sum(x * x) / x.shape[-1]).double()).float()


def _seq_sum(terms: torch.Tensor) -> torch.Tensor:
    """Sum over the last axis one column at a time, in fp32 (C's loop order)."""
    total = terms[..., 0].clone()
    for i in range(1, terms.shape[-1]):
        total = total + terms[..., i]
    return total


def _fit(x: torch.Tensor, w: torch.Tensor, L: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """sum_l, sum_l2, sum_xl of codes ``L`` (as make_qkx2_quants accumulates them)."""
    wl = w * L
    return _seq_sum(wl), _seq_sum(wl * L), _seq_sum(wl * x)


def _error(
    x: torch.Tensor, w: torch.Tensor, L: torch.Tensor, scale: torch.Tensor, low: torch.Tensor
) -> torch.Tensor:
    """Weighted squared error of codes ``L`` under (scale, low), summed in C's order."""
    diff = scale[:, None] * L + low[:, None] - x
    return _seq_sum(w * (diff * diff))


def qkx2(x: torch.Tensor, w: torch.Tensor, kind: str) -> tuple[torch.Tensor, ...]:
    """make_qkx2_quants on sub-blocks ``x`` (n, 32) with weights ``w`` (n, 32), fp32: scale
    (n,), the minimum as a positive offset ``-min`` (n,), and the codes (n, 32) as floats."""
    nmax, rmin, rdelta, nstep = QKX2[kind]
    low = torch.clamp(x.amin(dim=1), max=0.0)
    high = x.amax(dim=1)
    sum_w, sum_x = _seq_sum(w), _seq_sum(w * x)
    flat = high == low
    iscale = _f(nmax) / torch.where(flat, 1.0, high - low)
    scale = _over(1.0, iscale)
    L = _nearest(iscale[:, None] * (x - low[:, None])).clamp(0, nmax)
    best = _error(x, w, L, scale, low)
    for step in range(nstep + 1):  # each grid spans [min, max] with the best min so far
        span = high - low
        grid = (_f(rmin) + _f(rdelta) * step) + nmax
        inv = grid / torch.where(span != 0, span, 1.0)
        trial = _nearest(inv[:, None] * (x - low[:, None])).clamp(0, nmax)
        sum_l, sum_l2, sum_xl = _fit(x, w, trial)
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = (D > 0) & ~flat
        Dd = torch.where(ok, D, 1.0)
        t_scale = (sum_w * sum_xl - sum_x * sum_l) / Dd
        t_min = (sum_l2 * sum_x - sum_l * sum_xl) / Dd
        pos = t_min > 0
        t_scale = torch.where(pos, sum_xl / torch.where(sum_l2 != 0, sum_l2, 1.0), t_scale)
        t_min = torch.where(pos, 0.0, t_min)
        err = _error(x, w, trial, t_scale, t_min)
        better = ok & (err < best)
        L = torch.where(better[:, None], trial, L)
        best = torch.where(better, err, best)
        scale = torch.where(better, t_scale, scale)
        low = torch.where(better, t_min, low)
    scale = torch.where(flat, 0.0, scale)
    L = torch.where(flat[:, None], 0.0, L)
    return scale, -low, L


def qx_rmse1(x: torch.Tensor, nmax: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qx_quants(rmse_type 1) on sub-blocks ``x`` (n, 16), fp32: the signed scale (n,) and
    the codes L + nmax (n, 16) as floats."""
    idx = x.abs().argmax(dim=1, keepdim=True)  # the first of largest magnitude, as C's strict >
    peak = x.gather(1, idx)[:, 0]
    zero = peak.abs() < GROUP_MAX_EPS
    peak = torch.where(zero, 1.0, peak)
    w = x * x

    def trial(num: torch.Tensor) -> tuple[torch.Tensor, ...]:
        q = _nearest((num / peak)[:, None] * x).clamp(-nmax, nmax - 1)
        return q, _seq_sum((w * x) * q), _seq_sum((w * q) * q)

    L, sumlx, suml2 = trial(_f(-nmax).expand_as(peak))
    scale = torch.where(suml2 != 0, sumlx / torch.where(suml2 != 0, suml2, 1.0), 0.0)
    best = scale * sumlx
    for i in (*range(-9, 0), *range(1, 10)):
        q, slx, sl2 = trial(-(_f(nmax) + _f(0.1) * i).expand_as(peak))
        better = (sl2 > 0) & (slx * slx > best * sl2)
        sl2 = torch.where(sl2 != 0, sl2, 1.0)
        L = torch.where(better[:, None], q, L)
        scale = torch.where(better, slx / sl2, scale)
        best = torch.where(better, scale * slx, best)
    return torch.where(zero, 0.0, scale), torch.where(zero[:, None], 0.0, L + nmax)


def _max_first(values: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """The entry of ``values`` at the first largest ``key`` along the last axis, or 0 when no
    key is above 0 (C's ``if (key > best)`` loop from 0)."""
    idx = key.argmax(dim=-1, keepdim=True)
    pick = values.gather(-1, idx)[..., 0]
    return torch.where(key.amax(dim=-1) > 0, pick, 0.0)


def _six_bits(value: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """uint8 ``nearest_int(inv·value)`` capped at 63 (C's cast wraps a negative)."""
    return torch.remainder(_nearest(inv[..., None] * value), 256).clamp(max=63)


def encode(x: torch.Tensor, W: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Header bytes (rows, n, bytes) chosen on ``x`` (rows, n·256) and the codes (rows, n·256,
    as floats) of ``W`` under them: with ``x`` = ``W``, what llama.cpp's quantize_row_*_K_ref
    writes for ``kind`` (q4_k, q5_k, q6_k)."""
    x, W = x.float(), W.float()
    header, L = q6k_params(x) if kind == "q6_k" else kquant_params(x, kind)
    return header, _codes(W, header, kind, L)


def kquant_params(x: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K header bytes (rows, n, 16) of ``x`` (rows, n·256) fp32, and the codes of the
    search (rows·n·8, 32) for sub-blocks whose stored step is 0."""
    rows = x.shape[0]
    sub = x.reshape(-1, 32)
    rms = _rms(sub)
    scale, mins, L = qkx2(sub, rms[:, None] + sub.abs(), kind)
    scale, mins = scale.reshape(rows, -1, 8), mins.reshape(rows, -1, 8)
    max_scale, max_min = _max_first(scale, scale), _max_first(mins, mins)
    inv_s = torch.where(max_scale > 0, _over(63.0, torch.where(max_scale > 0, max_scale, 1.0)), 0.0)
    inv_m = torch.where(max_min > 0, _over(63.0, torch.where(max_min > 0, max_min, 1.0)), 0.0)
    sc, m = _six_bits(scale, inv_s), _six_bits(mins, inv_m)
    d, dmin = P.fp16_round(max_scale / 63), P.fp16_round(max_min / 63)
    return P.kquant_header(d, dmin, sc, m), L


def q6k_params(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q6_K header bytes (rows, n, 18) of ``x`` (rows, n·256) fp32, and the codes of the search
    (rows·n·16, 16) in [0, 63]."""
    rows = x.shape[0]
    scale, L = qx_rmse1(x.reshape(-1, 16))
    scale = scale.reshape(rows, -1, 16)
    max_scale = _max_first(scale, scale.abs())
    empty = scale.abs().amax(dim=-1) < GROUP_MAX_EPS
    iscale = _over(-128.0, torch.where(empty, 1.0, max_scale))
    d = torch.where(empty, 0.0, P.fp16_round(_over(1.0, iscale)))
    sc = _nearest(iscale[..., None] * scale).clamp(max=127)
    sc = torch.where(empty[..., None], 0.0, sc)
    L = torch.where(empty.repeat_interleave(16, -1).reshape(-1, 1), 0.0, L)
    return P.q6k_header(d, sc), L


def _codes(x: torch.Tensor, header: torch.Tensor, kind: str, L: torch.Tensor) -> torch.Tensor:
    """Nearest codes under the stored parameters; the search's codes where the step is 0."""
    sub = 16 if kind == "q6_k" else 32
    rows = x.shape[0]
    step, offset = P.affine(kind, header)
    step = step.reshape(-1, 1)
    xs = x.reshape(-1, sub)
    if offset is not None:
        xs = xs - offset.reshape(-1, 1)
    top, center = (63, 32) if kind == "q6_k" else (QKX2[kind][0], 0)
    q = _nearest(xs / torch.where(step != 0, step, 1.0)) + center
    q = torch.where(step != 0, q.clamp(0, top), L)
    return q.reshape(rows, -1)


def sub_params(kind: str, header: torch.Tensor, j: int, cols: torch.Tensor) -> torch.Tensor:
    """One block's header (rows, 1, bytes) with sub-block ``j``'s scale (and minimum) searched
    anew on ``cols`` (rows, sub) by llama.cpp's rule and rounded to nearest under the block's
    kept d (and dmin): what GPTQ refreshes when its sweep reaches the sub-block."""
    cols = cols.float()
    if kind == "q6_k":
        d, sc = P.q6k_parts(header)
        scale, _ = qx_rmse1(cols)
        step = torch.where(d != 0, d, 1.0)
        sc[..., j] = torch.where(d != 0, _nearest(scale[:, None] / step).clamp(-128, 127), 0.0)
        return P.q6k_header(d, sc)
    d, dmin, sc, m = P.kquant_parts(header)
    rms = _rms(cols)
    scale, mins, _ = qkx2(cols, rms[:, None] + cols.abs(), kind)
    sc[..., j] = _ratio(scale[:, None], d)
    m[..., j] = _ratio(mins[:, None], dmin)
    return P.kquant_header(d, dmin, sc, m)


def _ratio(value: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    return torch.where(unit > 0, _nearest(value / torch.where(unit > 0, unit, 1.0)), 0.0).clamp(
        0, 63
    )
