"""GGML's block types as lowbit formats: the k-quants Q4_K, Q5_K, Q6_K (256-wide super-blocks)
and the 32-wide Q5_0, Q5_1, Q8_0 they fall back to.

A weight is stored exactly as llama.cpp reads it: codes (out, in) uint8 (int8 for Q8_0) and
each block's parameter bytes in ``scale`` (see :mod:`lowbit.formats.ggml_params`), so the
dequantized weight lowbit evaluates is the one ``gguf.quants.dequantize`` gives, bit for bit,
and the bits per weight are the bytes of the block: Q4_K 4.5, Q5_K 5.5, Q6_K 6.5625, Q5_0 5.5,
Q5_1 6.0, Q8_0 8.5.

Fallback by name, as llama.cpp's ``llama_tensor_get_type`` does: a row whose width is not a
multiple of 256 cannot hold super-blocks, so Q4_K falls back to Q5_0, Q5_K to Q5_1 and Q6_K to
Q8_0 (32-wide blocks; a width that is not a multiple of 32 is refused). The fallback is the
weight's own format (``qw.fmt``), so the saved model, its bits and the export all name it.

Parameters from the per-group clipping range (granularity: the block, 256 or 32 columns).
K-quants follow one of two rules (``rule``):

- ``llama`` (default): llama.cpp's reference quantizer (``quantize_row_q{4,5,6}_K_ref``, see
  :mod:`lowbit.formats.ggml_search`): each sub-block's scale and minimum searched for the least
  weighted squared error, stored to nearest; with min-max ranges the bytes equal llama.cpp's (a
  narrower clipping range clips the weights the search sees; codes are rounded from the
  weights themselves);
- ``cover``: the super-block's fp16 d (and dmin) rounded up so the largest sub-block scale (and
  min) is 63 (Q6_K: 127), each sub-block's 6-bit scale and min rounded *up* so its range is
  covered (nothing clipped inside it; Q6_K's signed scale puts the extreme of largest magnitude
  on code -32, so the opposite side may lose one step at +31, as lowbit's symmetric integer
  "extreme" rule does), codes to nearest.

Q5_0, Q5_1, Q8_0 (either rule): ggml's reference quantizer exactly (fp32 d, codes from 1/d, d
stored as fp16), so with min-max ranges the bytes equal ``gguf.quants.quantize``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lowbit._registry import Registry
from lowbit.errors import ConfigError
from lowbit.formats import ggml_params as P
from lowbit.formats import ggml_search as search
from lowbit.formats.granularity import Granularity, PerGroup
from lowbit.formats.scaling import columns, require_group
from lowbit.formats.tensor import QuantizedWeight

SUPER_BLOCK = 256


@dataclass(frozen=True)
class _Kind:
    bits: int
    block: int  # columns per block (the granularity)
    sub: int  # columns per sub-block (one step and offset)
    header: int  # parameter bytes per block
    qmin: int
    qmax: int
    center: int  # x = step·(q - center) (+ offset)
    fallback: str | None = None


KINDS: dict[str, _Kind] = {
    "q4_k": _Kind(4, SUPER_BLOCK, 32, 16, 0, 15, 0, "q5_0"),
    "q5_k": _Kind(5, SUPER_BLOCK, 32, 16, 0, 31, 0, "q5_1"),
    "q6_k": _Kind(6, SUPER_BLOCK, 16, 18, 0, 63, 32, "q8_0"),
    "q5_0": _Kind(5, 32, 32, 2, 0, 31, 16),
    "q5_1": _Kind(5, 32, 32, 4, 0, 31, 0),
    "q8_0": _Kind(8, 32, 32, 2, -127, 127, 0),
}


@dataclass(frozen=True)
class GGMLFormat:
    """One of GGML's block types (``kind``: q4_k, q5_k, q6_k, q5_0, q5_1, q8_0); ``rule``: how
    a k-quant chooses its parameters (``llama`` or ``cover``; the fallbacks have one rule)."""

    kind: str = "q4_k"
    rule: str = "llama"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"no GGML type {self.kind!r}; known: {', '.join(KINDS)}")
        KQUANT_RULES.get(self.rule)  # an unknown rule: UnknownNameError listing the rules
        if self.rule != "llama" and self.spec.block == self.spec.sub:
            raise ConfigError(
                f"{self.kind.upper()} has one rule (ggml's reference quantizer); rule "
                f"{self.rule!r} applies to the k-quants q4_k, q5_k, q6_k: drop it"
            )

    scale_bits = 8  # ``scale`` holds the blocks' parameter bytes
    in_name = ("kind", "rule")  # labels name both already (Q5_K g256 cover), not "kind=q5_k"

    @property
    def spec(self) -> _Kind:
        return KINDS[self.kind]

    @property
    def name(self) -> str:
        return self.kind

    @property
    def bits(self) -> int:
        return self.spec.bits

    @property
    def symmetric(self) -> bool:
        return self.kind in ("q6_k", "q5_0", "q8_0")

    @property
    def signed_codes(self) -> bool:
        return self.spec.qmin < 0

    def resolve(self, in_features: int) -> GGMLFormat:
        """The type a row of ``in_features`` is written in: this one, or its fallback by name
        when the width is not a whole number of blocks; a ConfigError when neither fits."""
        if in_features % self.spec.block == 0:
            return self
        if self.spec.fallback is not None and in_features % KINDS[self.spec.fallback].block == 0:
            return GGMLFormat(self.spec.fallback)
        raise ConfigError(
            f"{self.kind.upper()} needs rows of a multiple of {self.spec.block} columns"
            + (
                f" (or 32 for its fallback {self.spec.fallback.upper()})"
                if self.spec.fallback
                else ""
            )
            + f", got {in_features}; keep this layer in full precision or use another format"
        )

    def bits_per_weight(
        self, in_features: int, granularity: Granularity, out_features: int = 1
    ) -> float:
        """Bytes of one block over its width; a fallback's when the row needs one."""
        self.check_granularity(granularity)
        used = self.resolve(in_features).spec
        return used.bits + used.header * 8 / used.block

    def check_granularity(self, granularity: Granularity) -> None:
        require_group(self.kind.upper(), granularity, self.spec.block, "GGML block")

    def describe(self, granularity: Granularity) -> str:
        rule = f" {self.rule}" if self.rule != "llama" else ""
        return f"{self.kind.upper()} g{self.spec.block}{rule}"

    def encode(
        self, W: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, granularity: Granularity
    ) -> QuantizedWeight:
        """Codes and block bytes of ``W`` (out, in) for block ranges ``lo``/``hi`` (out, blocks
        of ``granularity``); in the fallback type when the width needs it."""
        used = self.resolve(W.shape[1])
        W = W.float()
        lo_s, hi_s = sub_ranges(W, lo, hi, granularity, used.spec.sub)
        header, codes = encode_blocks(used, W, lo_s, hi_s)
        code_dtype = torch.int8 if used.signed_codes else torch.uint8
        return QuantizedWeight(codes.to(code_dtype), header, None, used, PerGroup(used.spec.block))

    def decode(self, qw: QuantizedWeight) -> torch.Tensor:
        """step·(q - center) (+ offset) per sub-block, with gguf's fp32 arithmetic; in the
        fallback type when the width needs one (what :meth:`encode` wrote)."""
        used = self.resolve(qw.shape[1])
        step, offset = P.affine(used.kind, qw.scale)
        return affine_values(qw.codes, step, offset, used.spec)


def encode_blocks(
    fmt: GGMLFormat, W: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Parameter bytes (out, blocks, header) and codes (out, in) as floats of ``W`` (out, in),
    a whole number of ``fmt``'s blocks, for sub-block ranges ``lo``/``hi`` (out, in/sub)."""
    if fmt.spec.block != fmt.spec.sub:  # a k-quant: its rule chooses the parameters
        return KQUANT_RULES.get(fmt.rule).encode(W, lo, hi, fmt.kind)
    return _ENCODERS[fmt.kind](W, lo, hi, fmt.spec)


def nearest_codes(
    W: torch.Tensor, step: torch.Tensor, offset: torch.Tensor | None, spec: _Kind
) -> torch.Tensor:
    """Nearest codes (as floats) of ``W`` under per-entry ``step``/``offset`` (broadcastable);
    a zero step gives the code of value 0 (or of the offset)."""
    x = W if offset is None else W - offset
    q = torch.round(torch.where(step != 0, x / torch.where(step != 0, step, 1.0), 0.0))
    return (q + spec.center).clamp_(spec.qmin, spec.qmax)


def affine_values(
    codes: torch.Tensor, step: torch.Tensor, offset: torch.Tensor | None, spec: _Kind
) -> torch.Tensor:
    """step·(q - center) (+ offset) with per-sub-block ``step``/``offset`` (rows, subs)."""
    sub = PerGroup(spec.sub)
    x = columns(step, sub, codes.shape[1]) * (codes.float() - spec.center)
    return x if offset is None else x + columns(offset, sub, codes.shape[1])


def sub_ranges(
    W: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, granularity: Granularity, sub: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each ``sub``-wide sub-block's min and max (out, in/sub), clipped to the range of the
    group of ``granularity`` it lies in (``lo``/``hi``: (out, groups))."""
    rows, in_f = W.shape
    blocks = W.reshape(rows, in_f // sub, sub)
    first = torch.arange(0, in_f, sub, device=W.device)
    group_lo, group_hi = columns(lo, granularity, in_f), columns(hi, granularity, in_f)
    lo_s = torch.maximum(blocks.amin(dim=-1), group_lo[:, first])
    hi_s = torch.minimum(blocks.amax(dim=-1), group_hi[:, first])
    return lo_s, torch.maximum(hi_s, lo_s)


_Encoded = tuple[torch.Tensor, torch.Tensor]  # parameter bytes, codes (as floats)


def _cover(W: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, kind: str) -> _Encoded:
    spec = KINDS[kind]
    rows, per = W.shape[0], spec.block // spec.sub
    lo, hi = lo.reshape(rows, -1, per), hi.reshape(rows, -1, per)
    if spec.center:  # Q6_K: signed scales, no minimum
        d = P.q6k_super(lo, hi)
        header = P.q6k_header(d, P.q6k_sub(lo, hi, d[..., None]))
    else:
        d, dmin = P.kquant_super(lo, hi, spec.qmax)
        sc, m = P.kquant_sub(lo, hi, d[..., None], dmin[..., None], spec.qmax)
        header = P.kquant_header(d, dmin, sc, m)
    step, offset = P.affine(kind, header)
    sub = PerGroup(spec.sub)
    off = None if offset is None else columns(offset, sub, W.shape[1])
    return header, nearest_codes(W, columns(step, sub, W.shape[1]), off, spec)


def _llama(W: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, kind: str) -> _Encoded:
    sub, width = PerGroup(KINDS[kind].sub), W.shape[1]
    clipped = torch.minimum(torch.maximum(W, columns(lo, sub, width)), columns(hi, sub, width))
    return search.encode(clipped, W, kind)


def _cover_refresh(kind: str, header: torch.Tensor, j: int, cols: torch.Tensor) -> torch.Tensor:
    lo, hi = cols.amin(dim=1), cols.amax(dim=1)
    return P.sub_header(kind, header, j, lo, hi, KINDS[kind].qmax)


@dataclass(frozen=True)
class KQuantRule:
    """How a k-quant chooses its parameters: ``encode`` (W, sub-block lo, hi, kind) → (header
    bytes, codes) for whole blocks; ``refresh`` (kind, one block's header, sub-block j, its
    columns (rows, sub)) → the header with sub-block j's parameters chosen anew (GPTQ)."""

    encode: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, str], _Encoded]
    refresh: Callable[[str, torch.Tensor, int, torch.Tensor], torch.Tensor]


KQUANT_RULES: Registry[KQuantRule] = Registry("GGML k-quant rule")
KQUANT_RULES.register("llama", KQuantRule(_llama, search.sub_params))
KQUANT_RULES.register("cover", KQuantRule(_cover, _cover_refresh))


def _inverse(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d == 0, 0.0, 1.0 / torch.where(d == 0, 1.0, d))


def _q5_0(W: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, spec: _Kind) -> _Encoded:
    """ggml: d = extreme / -16, q = trunc(x/d + 16.5) clamped to [0, 31]."""
    d = signed_extreme(W, lo, hi) / -16
    q = torch.trunc(W * columns(_inverse(d), PerGroup(32), W.shape[1]) + 16.5).clamp(0, 31)
    return P.fp16_bytes(d), q


def signed_extreme(W: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Each 32-block's end of largest magnitude, ``lo`` or ``hi`` (out, blocks). On a tie
    (|lo| = |hi|) ggml keeps the first weight of largest magnitude it meets, so the sign is
    that of the block's first weight at or beyond either end of its range."""
    rows, blocks = lo.shape
    x = W.reshape(rows, blocks, -1)
    at_lo, at_hi = x <= lo[..., None], x >= hi[..., None]
    width = x.shape[-1]
    first_lo = torch.where(at_lo.any(-1), at_lo.int().argmax(-1), width)
    first_hi = torch.where(at_hi.any(-1), at_hi.int().argmax(-1), width)
    low = (lo.abs() > hi.abs()) | ((lo.abs() == hi.abs()) & (first_lo <= first_hi))
    return torch.where(low, lo, hi)


def _q5_1(W: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, spec: _Kind) -> _Encoded:
    """ggml: d = (max - min) / 31, m = min, q = trunc((x - min)/d + 0.5) clamped to [0, 31]."""
    d = (hi - lo) / 31
    cols = PerGroup(32)
    x = (W - columns(lo, cols, W.shape[1])) * columns(_inverse(d), cols, W.shape[1])
    q = torch.trunc(x + 0.5).clamp(0, 31)
    return torch.cat([P.fp16_bytes(d), P.fp16_bytes(lo)], dim=-1), q


def _q8_0(W: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, spec: _Kind) -> _Encoded:
    """ggml: d = absmax / 127, q = x/d rounded half away from zero."""
    d = torch.maximum(lo.abs(), hi.abs()) / 127
    x = W * columns(_inverse(d), PerGroup(32), W.shape[1])
    a = x.abs()
    whole = torch.floor(a)
    q = torch.sign(x) * (whole + torch.floor(2 * (a - whole)))
    return P.fp16_bytes(d), q


_ENCODERS = {"q5_0": _q5_0, "q5_1": _q5_1, "q8_0": _q8_0}
