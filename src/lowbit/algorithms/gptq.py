"""GPTQ (Frantar et al., 2022) on one weight and its Hessian, as a pure function.

Names follow the paper and the reference implementation: ``H`` the input second moment,
``Hinv`` the upper Cholesky factor of H⁻¹, ``W1``/``Err1`` the current lazy block.
Differences from the reference, each on purpose:
- with group scales chosen during the sweep, blocks are aligned to group boundaries, so a
  group's scale is chosen on columns that have received every earlier update (the reference
  reads columns beyond the block edge before this block's updates reach them);
- a Cholesky factorisation that fails in fp32 is retried in float64, then with tenfold
  dampening (the damping used is returned), instead of stopping the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.algorithms.config import ActOrder, GPTQConfig
from lowbit.errors import ConfigError, LowbitError
from lowbit.formats import Granularity, IntFormat, PerGroup, PerTensor, QuantizedWeight
from lowbit.formats.granularity import group_index
from lowbit.formats.integer import choose_qparams, codes_to_values, quantize_to_codes

_SEGMENT = 16  # columns per inner segment of rank-1 updates


@dataclass(frozen=True)
class GPTQResult:
    """The quantized weight, GPTQ's objective Σ (err / Hinv_ii)² / 2, and the damping used."""

    weight: QuantizedWeight
    loss: float
    damp: float


def gptq_quantize(
    W: torch.Tensor, H: torch.Tensor, fmt: IntFormat, granularity: Granularity, cfg: GPTQConfig
) -> GPTQResult:
    """Quantize ``W`` (out, in) given the Hessian ``H`` (in, in) of its inputs."""
    check_gptq_format(fmt)
    W = W.detach().float().clone()
    H = H.detach().float().clone()
    in_f = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0

    dynamic = isinstance(granularity, PerGroup) and cfg.act_order is not ActOrder.STATIC
    g_idx = group_index(in_f, granularity)
    n_groups = granularity.groups(in_f)
    scale, zero = choose_qparams(W, fmt, g_idx, n_groups, isinstance(granularity, PerTensor))

    perm = None
    if cfg.act_order is not ActOrder.OFF:
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W, H = W[:, perm], H[perm][:, perm]
        if not dynamic:  # static groups: storage column i belongs to original column perm[i]
            g_idx = g_idx[perm]
    Hinv, damp = _inverse_cholesky(H, cfg.damp)

    codes, loss = _sweep(W, Hinv, fmt, granularity, cfg, (scale, zero), g_idx.tolist(), dynamic)

    keep_perm = perm if (perm is not None and dynamic) else None
    if perm is not None and keep_perm is None:
        unpermuted = torch.empty_like(codes)
        unpermuted[:, perm] = codes
        codes = unpermuted
    weight = QuantizedWeight(
        codes=codes.to(fmt.code_dtype),
        scale=scale.to(fmt.torch_scale_dtype),
        zero=None if zero is None else zero.to(fmt.code_dtype),
        fmt=fmt,
        granularity=granularity,
        perm=keep_perm,
    )
    return GPTQResult(weight=weight, loss=loss, damp=damp)


def check_gptq_format(fmt: object) -> None:
    """GPTQ here chooses integer scales and zero points; other formats are refused, never
    silently replaced by an integer grid."""
    if not isinstance(fmt, IntFormat):
        name = getattr(fmt, "name", type(fmt).__name__)
        raise ConfigError(
            f"algorithm 'gptq' does not support format {name!r} yet (only integer formats); "
            "use algorithm 'rtn' for this format, or an integer format with GPTQ"
        )


def _sweep(
    W: torch.Tensor,
    Hinv: torch.Tensor,
    fmt: IntFormat,
    granularity: Granularity,
    cfg: GPTQConfig,
    params: tuple[torch.Tensor, torch.Tensor | None],
    group_of_col: list[int],
    dynamic: bool,
) -> tuple[torch.Tensor, float]:
    """The column sweep with lazy block updates; fills ``params`` in place when ``dynamic``.

    Two levels of laziness: rank-1 updates stay inside a segment of at most ``_SEGMENT``
    columns, and each finished segment updates the rest of its block with one matrix product
    (the same arithmetic as the reference, in fewer passes over memory).
    """
    scale, zero = params
    in_f = W.shape[1]
    gsize = granularity.size if isinstance(granularity, PerGroup) else in_f
    block = max(gsize, cfg.block_size // gsize * gsize) if dynamic else cfg.block_size
    codes = torch.empty_like(W)
    Err = torch.empty_like(W)
    for i1 in range(0, in_f, block):
        i2 = min(i1 + block, in_f)
        W1 = W[:, i1:i2].clone()
        Hinv1 = Hinv[i1:i2, i1:i2]
        cuts = sorted(
            {
                *range(0, i2 - i1, _SEGMENT),
                i2 - i1,
                *(c - i1 for c in range(i1, i2) if dynamic and c % gsize == 0),
            }
        )
        for s1, s2 in zip(cuts[:-1], cuts[1:], strict=True):
            if dynamic and (i1 + s1) % gsize == 0:
                _refresh_group(W1[:, s1 : s1 + gsize], fmt, scale, zero, (i1 + s1) // gsize)
            for i in range(s1, s2):
                gi = group_of_col[i1 + i]
                s = scale[:, gi]
                z = None if zero is None else zero[:, gi]
                w = W1[:, i]
                q = quantize_to_codes(w, s, z, fmt)
                codes[:, i1 + i] = q
                err = (w - codes_to_values(q, s, z)).div_(Hinv1[i, i])
                W1[:, i + 1 : s2].addr_(err, Hinv1[i, i + 1 : s2], alpha=-1.0)
                Err[:, i1 + i] = err
            W1[:, s2:].addmm_(Err[:, i1 + s1 : i1 + s2], Hinv1[s1:s2, s2:], alpha=-1.0)
        W[:, i2:].addmm_(Err[:, i1:i2], Hinv[i1:i2, i2:], alpha=-1.0)
    return codes, float(Err.pow(2).sum()) / 2


def _refresh_group(
    cols: torch.Tensor, fmt: IntFormat, scale: torch.Tensor, zero: torch.Tensor | None, g: int
) -> None:
    """Choose group ``g``'s parameters on its current (fully updated) columns."""
    s, z = choose_qparams(cols, fmt, torch.zeros(cols.shape[1], dtype=torch.long), 1)
    scale[:, g] = s[:, 0]
    if zero is not None and z is not None:
        zero[:, g] = z[:, 0]


def _inverse_cholesky(H: torch.Tensor, damp: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + damp·mean(diag H)·I)⁻¹ in fp32.

    Tries fp32, then float64, then raises the damping tenfold; returns the damping used."""
    mean_diag = float(torch.diag(H).double().mean())
    for _ in range(8):
        for dtype in (torch.float32, torch.float64):
            Hd = H.to(dtype, copy=True)
            Hd.diagonal().add_(damp * mean_diag)
            # With J the reversal, J·H·J = L·Lᵀ gives H = R·Rᵀ (R = J·L·J upper), so the upper
            # Cholesky factor of H⁻¹ is R⁻¹ = J·L⁻¹·J: one factorisation and one triangular solve.
            L, info = torch.linalg.cholesky_ex(Hd.flip(0, 1))
            if int(info) == 0:
                eye = torch.eye(L.shape[0], dtype=dtype)
                U = torch.linalg.solve_triangular(L, eye, upper=False).flip(0, 1)
                if bool(torch.isfinite(U).all()):
                    return U.float(), damp
        damp = max(damp * 10.0, 1e-4)
    raise LowbitError(
        "the Hessian is not positive definite even with heavy damping; the layer's calibration "
        "inputs are degenerate (check the calibration text, or use RTN for this layer)"
    )
