"""GPTQ into GGML blocks (Q4_K, Q5_K, Q6_K and their fallbacks Q5_0, Q5_1, Q8_0).

The grid is the k-quant's own: every block's parameter bytes are chosen up front on the
original weight (the super-block's fp16 d and dmin, each sub-block's 6-bit scale and min, as
RTN chooses them under the format's rule), and when the sweep reaches a sub-block its scale and
min are chosen anew on its updated columns by the same rule (llama.cpp's search, or the covering
range) under the super-block's d and dmin (a fallback block is chosen anew whole).
The sweep then rounds each column to the nearest value of its sub-block's grid
step·(q - center) (+ offset), computed exactly as :meth:`GGMLFormat.decode` computes it, and
feeds the error forward. The sweep's groups are the sub-blocks (32 columns; 16 for Q6_K).
"""

from __future__ import annotations

import torch

from lowbit.formats import GGMLFormat, Granularity, PerGroup, QuantizedWeight
from lowbit.formats import ggml_params as P
from lowbit.formats.clipping import minmax_range
from lowbit.formats.ggml import KQUANT_RULES, encode_blocks, nearest_codes


def sweep_granularity(fmt: object, granularity: Granularity, in_features: int) -> Granularity:
    """The groups GPTQ sweeps: a GGML format's sub-blocks, else ``granularity`` itself."""
    if isinstance(fmt, GGMLFormat):
        return PerGroup(fmt.resolve(in_features).spec.sub)
    return granularity


class GGMLGrid:
    """Group parameters and nearest-value rounding for a GGML format; ``W`` (out, in) is the
    original weight, ``granularity`` the format's block (the plan's granularity)."""

    def __init__(self, fmt: GGMLFormat, W: torch.Tensor, granularity: Granularity) -> None:
        lo, hi = minmax_range(W, granularity)
        up = fmt.encode(W, lo, hi, granularity)
        self.fmt: GGMLFormat = up.fmt
        self.spec = self.fmt.spec
        self.per = self.spec.block // self.spec.sub
        self.header = up.scale.clone()
        self.step, self.offset = P.affine(self.fmt.kind, self.header)

    def refresh(self, g: int, cols: torch.Tensor) -> None:
        """Choose sub-block ``g``'s parameters on its current columns ``cols`` (out, sub)."""
        b, j = divmod(g, self.per)
        if self.spec.block == self.spec.sub:  # Q5_0, Q5_1, Q8_0: the whole block
            lo, hi = cols.amin(dim=1), cols.amax(dim=1)
            header = encode_blocks(self.fmt, cols, lo[:, None], hi[:, None])[0]
        else:
            block = self.header[:, b : b + 1]
            header = KQUANT_RULES.get(self.fmt.rule).refresh(self.fmt.kind, block, j, cols)
        self.header[:, b : b + 1] = header
        step, offset = P.affine(self.fmt.kind, header)
        self.step[:, b * self.per : (b + 1) * self.per] = step
        if self.offset is not None and offset is not None:
            self.offset[:, b * self.per : (b + 1) * self.per] = offset

    def column(self, w: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (out,) as floats and their values (out,): the nearest of sub-block ``g``'s grid,
        the value computed as the format's decode computes it."""
        step = self.step[:, g]
        offset = None if self.offset is None else self.offset[:, g]
        q = nearest_codes(w, step, offset, self.spec)
        value = step * (q - self.spec.center)
        return q, value if offset is None else value + offset

    def weight(self, codes: torch.Tensor, perm: torch.Tensor | None) -> QuantizedWeight:
        dtype = torch.int8 if self.fmt.signed_codes else torch.uint8
        gran = PerGroup(self.spec.block)
        return QuantizedWeight(codes.to(dtype), self.header, None, self.fmt, gran, perm=perm)
