"""GPTQ (Frantar et al., 2022) on one weight and its Hessian, as a pure function, for every
weight format (integer arithmetic here; the other formats' grids in ``gptq_grid.py``).

Names follow the paper and the reference implementation: ``H`` the input second moment,
``Hinv`` the upper Cholesky factor of H⁻¹, ``W1``/``Err1`` the current lazy block.
Differences from the reference, each on purpose:
- with group scales chosen during the sweep, blocks are aligned to group boundaries, so a
  group's scale is chosen on columns that have received every earlier update (the reference
  reads columns beyond the block edge before this block's updates reach them);
- a Cholesky factorisation that fails in fp32 is retried in float64, then with tenfold
  dampening (the damping used is returned), instead of stopping the run;
- act-order ``group_aware`` (group-aware reordering): whole groups in order of their summed
  Hessian diagonal, the columns of each group in order of theirs, so groups stay contiguous in
  the sweep and the weight is stored unpermuted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from lowbit._tensor import all_finite
from lowbit.algorithms.config import ActOrder, GPTQConfig
from lowbit.algorithms.gptq_ggml import GGMLGrid, sweep_granularity
from lowbit.algorithms.gptq_grid import FormatGrid, check_gptq_format
from lowbit.errors import LowbitError
from lowbit.formats import (
    GGMLFormat,
    Granularity,
    IntFormat,
    PerGroup,
    PerTensor,
    QuantizedWeight,
    WeightFormat,
)
from lowbit.formats.granularity import group_index
from lowbit.formats.integer import choose_qparams, codes_to_values, quantize_to_codes

_SEGMENT = 16  # columns per inner segment of rank-1 updates


@dataclass(frozen=True)
class GPTQResult:
    """The quantized weight, GPTQ's objective Σ (err / Hinv_ii)² / 2, and the damping used."""

    weight: QuantizedWeight
    loss: float
    damp: float


@dataclass(frozen=True)
class GPTQFactor:
    """What the sweep needs of a Hessian, for one sweep layout: the layout, the upper Cholesky
    factor ``Hinv`` of the damped inverse in sweep order, the damping used, the dead columns
    (zero diagonal) and H's diagonal. Linears that read the same input share one H, so they can
    share one factor (the factorisation is the solve's costliest step after the sweep)."""

    layout: SweepLayout
    Hinv: torch.Tensor
    damp: float
    dead: torch.Tensor
    diag: torch.Tensor


def gptq_factor(H: torch.Tensor, granularity: Granularity, cfg: GPTQConfig) -> GPTQFactor:
    """Factor ``H`` (in, in) for the sweep of ``granularity`` and ``cfg``'s act-order and
    damping. Peak memory about 3·in² besides H: the permuted copy is made once, the factor's
    temporaries are freed as soon as they are used."""
    H = H.detach()
    diag = torch.diag(H).float()
    dead = diag == 0
    layout = sweep_layout(diag.masked_fill(dead, 1.0), granularity, cfg.act_order)
    order = layout.order

    def damped_input() -> torch.Tensor:
        """H in sweep order, fp32, dead columns with a unit diagonal (a fresh copy)."""
        P = H[order[:, None], order[None, :]] if order is not None else H.clone()
        P = P.float()
        d = P.diagonal()
        d.masked_fill_(dead if order is None else dead[order], 1.0)
        return P

    Hinv, damp = _inverse_cholesky(damped_input, cfg.damp)
    return GPTQFactor(layout, Hinv, damp, dead, diag)


def gptq_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    fmt: WeightFormat,
    granularity: Granularity,
    cfg: GPTQConfig,
    factor: GPTQFactor | None = None,
) -> GPTQResult:
    """Quantize ``W`` (out, in) given the Hessian ``H`` (in, in) of its inputs, in any format
    GPTQ takes (:func:`check_gptq_format`); ``factor``: ``gptq_factor(H, granularity, cfg)``
    when already computed for another linear of the same input (GGML formats:
    ``gptq_factor(H, sweep_granularity(fmt, granularity, in), cfg)``)."""
    check_gptq_format(fmt)
    fmt.check_granularity(granularity)
    factor = factor or gptq_factor(H, sweep_granularity(fmt, granularity, W.shape[1]), cfg)
    layout = factor.layout
    W = W.detach().float().clone()
    W[:, factor.dead] = 0.0
    grid: ColumnGrid
    if isinstance(fmt, IntFormat):
        grid = _IntGrid(fmt, W, granularity)
    elif isinstance(fmt, GGMLFormat):  # groups: the sub-blocks (sweep_granularity)
        grid = GGMLGrid(fmt, W, granularity)
    else:
        grid = FormatGrid(fmt, W, granularity, factor.diag)
    order = layout.order
    if order is not None:
        W = W[:, order]

    codes, loss = _sweep(W, factor.Hinv, grid, layout, cfg.block_size)

    keep_perm = order if layout.saves_perm else None
    if order is not None and keep_perm is None:
        unpermuted = torch.empty_like(codes)
        unpermuted[:, order] = codes
        codes = unpermuted
    return GPTQResult(weight=grid.weight(codes, keep_perm), loss=loss, damp=factor.damp)


class ColumnGrid(Protocol):
    """What the sweep needs of a format (see ``gptq_grid.py``)."""

    def refresh(self, g: int, cols: torch.Tensor) -> None: ...
    def column(self, w: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]: ...
    def weight(self, codes: torch.Tensor, perm: torch.Tensor | None) -> QuantizedWeight: ...


@dataclass(frozen=True)
class SweepLayout:
    """The sweep order and its groups.

    ``order`` (in,): sweep position k works on original column order[k] (None: natural order);
    ``group_of[k]``: the column of ``scale`` that position k uses; ``starts``: position → width
    of each group whose parameters are chosen when the sweep reaches it (empty when they are
    all chosen up front); ``saves_perm``: the weight is stored in sweep order with ``order``
    saved (act-order ``group``).
    """

    order: torch.Tensor | None
    group_of: list[int]
    starts: dict[int, int] = field(default_factory=dict)
    saves_perm: bool = False


def sweep_layout(diag: torch.Tensor, granularity: Granularity, act_order: ActOrder) -> SweepLayout:
    """The sweep order and groups for Hessian diagonal ``diag`` (in,) (module docstring of
    :class:`~lowbit.algorithms.config.ActOrder` for each order)."""
    in_f, device = diag.shape[0], diag.device
    g_idx = group_index(in_f, granularity, device)
    if not isinstance(granularity, PerGroup) or act_order is ActOrder.STATIC:
        if act_order is ActOrder.OFF:
            return SweepLayout(None, g_idx.tolist())
        order = torch.argsort(diag, descending=True, stable=True)
        return SweepLayout(order, g_idx[order].tolist())
    size = granularity.size
    natural = {g * size: min(size, in_f - g * size) for g in range(granularity.groups(in_f))}
    if act_order is ActOrder.OFF:
        return SweepLayout(None, g_idx.tolist(), natural)
    if act_order is ActOrder.GROUP:
        order = torch.argsort(diag, descending=True, stable=True)
        group_of = [k // size for k in range(in_f)]
        return SweepLayout(order, group_of, natural, saves_perm=True)
    sums = torch.zeros(granularity.groups(in_f), dtype=diag.dtype, device=device)
    sums.index_add_(0, g_idx, diag)
    parts, starts, pos = [], {}, 0
    for g in torch.argsort(sums, descending=True, stable=True).tolist():
        cols = torch.arange(g * size, min((g + 1) * size, in_f), device=device)
        parts.append(cols[torch.argsort(diag[cols], descending=True, stable=True)])
        starts[pos] = len(cols)
        pos += len(cols)
    order = torch.cat(parts)
    return SweepLayout(order, g_idx[order].tolist(), starts)


class _IntGrid:
    """Integer codes on min-max scales and zero points: the reference GPTQ's quantizer."""

    def __init__(self, fmt: IntFormat, W: torch.Tensor, granularity: Granularity) -> None:
        self.fmt, self.granularity = fmt, granularity
        g_idx = group_index(W.shape[1], granularity, W.device)
        n_groups = granularity.groups(W.shape[1])
        per_tensor = isinstance(granularity, PerTensor)
        self.scale, self.zero = choose_qparams(W, fmt, g_idx, n_groups, per_tensor)

    def refresh(self, g: int, cols: torch.Tensor) -> None:
        _refresh_group(cols, self.fmt, self.scale, self.zero, g)

    def column(self, w: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.scale[:, g]
        z = None if self.zero is None else self.zero[:, g]
        q = quantize_to_codes(w, s, z, self.fmt)
        return q, codes_to_values(q, s, z)

    def weight(self, codes: torch.Tensor, perm: torch.Tensor | None) -> QuantizedWeight:
        return QuantizedWeight(
            codes=codes.to(self.fmt.code_dtype),
            scale=self.scale.to(self.fmt.torch_scale_dtype),
            zero=None if self.zero is None else self.zero.to(self.fmt.code_dtype),
            fmt=self.fmt,
            granularity=self.granularity,
            perm=perm,
        )


def _blocks(in_f: int, layout: SweepLayout, block_size: int) -> list[tuple[int, int]]:
    """Lazy blocks [i1, i2): ``block_size`` wide, or, when groups are chosen during the sweep,
    whole groups up to max(one group, ``block_size`` rounded down to whole groups)."""
    if not layout.starts:
        return [(i1, min(i1 + block_size, in_f)) for i1 in range(0, in_f, block_size)]
    gsize = max(layout.starts.values())
    width = max(gsize, block_size // gsize * gsize)
    blocks, i1 = [], 0
    for start in sorted(layout.starts):
        end = start + layout.starts[start]
        if end - i1 > width:
            blocks.append((i1, start))
            i1 = start
    blocks.append((i1, in_f))
    return blocks


def _sweep(
    W: torch.Tensor,
    Hinv: torch.Tensor,
    grid: ColumnGrid,
    layout: SweepLayout,
    block_size: int,
) -> tuple[torch.Tensor, float]:
    """The column sweep with lazy block updates; codes (out, in) in sweep order and the loss.

    Two levels of laziness: rank-1 updates stay inside a segment of at most ``_SEGMENT``
    columns, and each finished segment updates the rest of its block with one matrix product
    (the same arithmetic as the reference, in fewer passes over memory).
    """
    codes = torch.empty_like(W)
    Err = torch.empty_like(W)
    for i1, i2 in _blocks(W.shape[1], layout, block_size):
        W1 = W[:, i1:i2].clone()
        Hinv1 = Hinv[i1:i2, i1:i2]
        cuts = sorted(
            {
                *range(0, i2 - i1, _SEGMENT),
                i2 - i1,
                *(p - i1 for p in layout.starts if i1 <= p < i2),
            }
        )
        for s1, s2 in zip(cuts[:-1], cuts[1:], strict=True):
            width = layout.starts.get(i1 + s1)
            if width is not None:
                grid.refresh(layout.group_of[i1 + s1], W1[:, s1 : s1 + width])
            for i in range(s1, s2):
                w = W1[:, i]
                q, value = grid.column(w, layout.group_of[i1 + i])
                codes[:, i1 + i] = q
                err = (w - value).div_(Hinv1[i, i])
                W1[:, i + 1 : s2].addr_(err, Hinv1[i, i + 1 : s2], alpha=-1.0)
                Err[:, i1 + i] = err
            W1[:, s2:].addmm_(Err[:, i1 + s1 : i1 + s2], Hinv1[s1:s2, s2:], alpha=-1.0)
        W[:, i2:].addmm_(Err[:, i1:i2], Hinv[i1:i2, i2:], alpha=-1.0)
    return codes, float(Err.pow(2).sum()) / 2


def _refresh_group(
    cols: torch.Tensor, fmt: IntFormat, scale: torch.Tensor, zero: torch.Tensor | None, g: int
) -> None:
    """Choose group ``g``'s parameters on its current (fully updated) columns."""
    one_group = torch.zeros(cols.shape[1], dtype=torch.long, device=cols.device)
    s, z = choose_qparams(cols, fmt, one_group, 1)
    scale[:, g] = s[:, 0]
    if zero is not None and z is not None:
        zero[:, g] = z[:, 0]


def _inverse_cholesky(
    damped_input: Callable[[], torch.Tensor], damp: float
) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + damp·mean(diag H)·I)⁻¹ in fp32, ``damped_input()``
    making a fresh fp32 copy of H for each attempt.

    Tries fp32, then float64 (on H's device), then raises the damping tenfold; returns the
    damping used. Each temporary is released as soon as the next exists (peak 3 in²)."""
    H = damped_input()
    mean_diag = float(torch.diag(H).double().mean())
    for _ in range(8):
        for dtype in (torch.float32, torch.float64):
            Hd = H if H is not None else damped_input()
            H = None  # the first attempt uses the copy made above; later ones make their own
            Hd = Hd.to(dtype)
            Hd.diagonal().add_(damp * mean_diag)
            # With J the reversal, J·H·J = L·Lᵀ gives H = R·Rᵀ (R = J·L·J upper), so the upper
            # Cholesky factor of H⁻¹ is R⁻¹ = J·L⁻¹·J: one factorisation and one triangular solve.
            flipped = Hd.flip(0, 1)
            del Hd
            L, info = torch.linalg.cholesky_ex(flipped)
            del flipped
            if int(info) == 0:
                eye = torch.eye(L.shape[0], dtype=dtype, device=L.device)
                U = torch.linalg.solve_triangular(L, eye, upper=False)
                del L, eye
                U = U.flip(0, 1)
                if all_finite(U):
                    return U.float(), damp
        damp = max(damp * 10.0, 1e-4)
    raise LowbitError(
        "the Hessian is not positive definite even with heavy damping; the layer's calibration "
        "inputs are degenerate (check the calibration text, or use RTN for this layer)"
    )
