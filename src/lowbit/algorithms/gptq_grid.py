"""The grids GPTQ rounds its columns onto, for every weight format.

GPTQ's sweep needs two things of a format: the parameters of a group (chosen up front on the
original weight, or when the sweep reaches the group), and, for one column, the nearest value of
its group's grid. :class:`FormatGrid` gives both for every non-integer format through the
format's own ``encode`` (parameters) and ``decode`` (values): a group's grid is the decoded value
of every code under the group's parameters, so each column's value is exactly what
:meth:`QuantizedWeight.dequantize` later gives. Integer formats keep the reference arithmetic
(``_IntGrid`` in ``gptq.py``), bit for bit.

Parameters per format: a float scale per group (FP, NF4: absmax of the group), an E8M0 exponent
(MX), an FP8 E4M3 block scale under the fp32 tensor scale chosen up front on the original weight
(NVFP4), or the row tables (LUT), always up front: weighted k-means on the original weight with
the Hessian diagonal as weights.
"""

from __future__ import annotations

import torch

from lowbit.errors import ConfigError
from lowbit.formats import (
    FloatFormat,
    GGMLFormat,
    Granularity,
    IntFormat,
    LUTFormat,
    MXFormat,
    NF4Format,
    NVFP4Format,
    PerChannel,
    PerTensor,
    QuantizedWeight,
    WeightFormat,
)
from lowbit.formats.clipping import minmax_range
from lowbit.formats.codebook import fit_table
from lowbit.formats.packing import code_dtype

GPTQ_FORMATS = (IntFormat, FloatFormat, NF4Format, LUTFormat, MXFormat, NVFP4Format, GGMLFormat)
_TABLE_BUDGET = 1 << 28  # bytes of cached group grids before the cache is emptied


def check_gptq_format(fmt: object) -> None:
    """GPTQ takes the formats whose group parameters it knows how to choose; any other is
    refused by name, never silently replaced by an integer grid."""
    if not isinstance(fmt, GPTQ_FORMATS):
        name = getattr(fmt, "name", type(fmt).__name__)
        raise ConfigError(
            f"algorithm 'gptq' does not support format {name!r} (it takes int, fp8/fp6/fp4, "
            "nf4, lut, mx, nvfp4 and ggml formats); use algorithm 'rtn' for this format"
        )


def grid_codes(fmt: WeightFormat, device: torch.device | None = None) -> torch.Tensor:
    """Every code the format's encoder can produce (K,), in the format's code dtype, on
    ``device``: 0 … 2^b - 1, or -2^(b-1) … 2^(b-1) - 1 for two's complement codes; MXINT8 stops
    at ±127 (its encoder clamps there, as the OCP reference does)."""
    n = 2**fmt.bits
    codes = torch.arange(n, device=device) - (n // 2 if fmt.signed_codes else 0)
    if isinstance(fmt, MXFormat) and fmt.element_format is None:
        codes = codes[codes >= -127]
    return codes.to(code_dtype(fmt))


class FormatGrid:
    """Group parameters and nearest-value rounding for a non-integer ``fmt``.

    ``W`` (out, in) is the original weight in original column order; ``col_weight`` (in,) the
    Hessian diagonal (LUT tables are fitted with it as k-means weights).
    """

    def __init__(
        self,
        fmt: WeightFormat,
        W: torch.Tensor,
        granularity: Granularity,
        col_weight: torch.Tensor,
    ) -> None:
        self.fmt, self.granularity = fmt, granularity
        up = _up_front(fmt, W, granularity, col_weight)
        self.scale = up.scale.clone()
        self.zero = None if up.zero is None else up.zero.clone()
        self.tensor_scale = up.tensor_scale
        self.codes = grid_codes(fmt, W.device)
        self._tables: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._bytes = 0

    def refresh(self, g: int, cols: torch.Tensor) -> None:
        """Choose group ``g``'s parameters on its current columns ``cols`` (out, width)."""
        lo, hi = minmax_range(cols, PerChannel())
        if isinstance(self.fmt, NVFP4Format):
            p = self.fmt.encode_with_tensor_scale(cols, lo, hi, PerChannel(), self.tensor_scale)
        else:
            p = self.fmt.encode(cols, lo, hi, PerChannel())
        self.scale[:, g] = p.scale[:, 0]
        if self.zero is not None and p.zero is not None:
            self.zero[:, g] = p.zero[:, 0]
        self._forget(g)

    def column(self, w: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (out,) as floats and their values (out,) fp32: the nearest grid value of group
        ``g`` to each entry of ``w`` (out,) (halfway: the lower value)."""
        values, codes, mids = self._table(g)
        if values.shape[0] == 1:  # one grid for every row (per tensor)
            idx = torch.searchsorted(mids[0], w.contiguous())
            return codes[0][idx].float(), values[0][idx]
        idx = torch.searchsorted(mids, w[:, None].contiguous())
        return codes.gather(1, idx)[:, 0].float(), values.gather(1, idx)[:, 0]

    def weight(self, codes: torch.Tensor, perm: torch.Tensor | None) -> QuantizedWeight:
        """The QuantizedWeight of the swept ``codes`` (out, in) in storage order."""
        return QuantizedWeight(
            codes.to(code_dtype(self.fmt)),
            self.scale,
            self.zero,
            self.fmt,
            self.granularity,
            perm=perm,
            tensor_scale=self.tensor_scale,
        )

    def _table(self, g: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Group ``g``'s grid, sorted per row: values (rows, K) fp32, codes (rows, K) and the
        midpoints (rows, K - 1) between neighbours; non-finite values (NaN, ±inf codes) left out."""
        if g not in self._tables:
            if isinstance(self.fmt, LUTFormat):  # one table per row is the whole parameter set
                scale, zero = self.scale, None
            else:
                scale = self.scale[:, g : g + 1]
                zero = None if self.zero is None else self.zero[:, g : g + 1]
            codes = self.codes.expand(scale.shape[0], -1)
            params = QuantizedWeight(
                codes, scale, zero, self.fmt, PerChannel(), tensor_scale=self.tensor_scale
            )
            values = self.fmt.decode(params)
            keep = torch.isfinite(values).all(dim=0)
            values, order = values[:, keep].sort(dim=1, stable=True)
            codes = codes[:, keep].gather(1, order)
            mids = ((values[:, 1:] + values[:, :-1]) / 2).contiguous()
            size = values.numel() * 16
            if self._bytes + size > _TABLE_BUDGET:
                self._tables.clear()
                self._bytes = 0
            self._tables[g] = (values, codes, mids)
            self._bytes += size
        return self._tables[g]

    def _forget(self, g: int) -> None:
        table = self._tables.pop(g, None)
        if table is not None:
            self._bytes -= table[0].numel() * 16


def _up_front(
    fmt: WeightFormat, W: torch.Tensor, granularity: Granularity, col_weight: torch.Tensor
) -> QuantizedWeight:
    """Every group's min-max parameters on ``W`` (out, in); LUT: the Hessian-weighted tables."""
    lo, hi = minmax_range(W, granularity)
    if not isinstance(fmt, LUTFormat):
        return fmt.encode(W, lo, hi, granularity)
    weights = col_weight.float().clamp(min=0).expand_as(W)
    X = W
    if isinstance(granularity, PerTensor):
        X, weights = W.reshape(1, -1), weights.reshape(1, -1)
    table = fit_table(X, lo, hi, fmt.bits, fmt.iterations, fmt.torch_table_dtype, weights)
    codes = torch.zeros(W.shape, dtype=torch.uint8, device=W.device)
    return QuantizedWeight(codes, table.to(fmt.torch_table_dtype), None, fmt, granularity)
