"""Smoothing of one decoder block: AWQ and SmoothQuant scales, folded into the block.

For each smoothing pair of the architecture spec (``ArchSpec.smoothing_pairs``: a norm, or a
linear, feeding some linears), per-channel statistics of the pair's input are collected by
running the block over every calibration chunk (its current weights, inputs kept), scales s are
chosen by the pure functions of ``lowbit.algorithms`` (``search_scales``, ``smoothquant_scales``),
and folded: the previous op is divided by s (a norm's weight and bias, or a linear's rows and
bias) and the linears' input columns multiplied by s, so the block computes the same function.

The driver (``lowbit.models.quantize``) calls :func:`smooth_block` on each block before its
linears are quantized; the tensors it changes outside the quantized linears (norm weights and
biases, the previous linears' biases, a kept previous linear's weight) are returned by name so
that the saved and the fake-quantized model carry them (:func:`load_smoothed`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from lowbit.algorithms import (
    AWQConfig,
    ChannelStats,
    HessianAccumulator,
    ScaleTarget,
    SmoothQuantConfig,
    search_scales,
    smoothquant_scales,
    weight_absmax,
)
from lowbit.errors import ConfigError, LowbitError
from lowbit.models.arch import ArchSpec, BlockSpec, SmoothingPair
from lowbit.runtime.runner import Activations, forward_chunks, group_inputs_hook


@dataclass(frozen=True)
class PairRecord:
    """What AWQ chose for one pair of one block: α and the objective at α (``loss``) and at
    α = 0 (``loss_rtn``, plain round to nearest), as mean squared output error per element."""

    prev: str
    linears: tuple[str, ...]
    alpha: float
    loss: float
    loss_rtn: float


@dataclass
class BlockSmoothing:
    """Tensors changed outside the quantized linears (parameter name → fp32 value) and, for
    AWQ, one record per smoothed pair."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    records: list[PairRecord] = field(default_factory=list)


class _Accumulator(Protocol):
    def add_batch(self, X: torch.Tensor) -> None: ...


_Stat = TypeVar("_Stat", bound=_Accumulator)


class _AWQStats:
    """Mean |x| and E[x xᵀ] of one pair's input."""

    def __init__(self, in_features: int) -> None:
        self.channels = ChannelStats(in_features)
        self.hessian = HessianAccumulator(in_features)

    def add_batch(self, X: torch.Tensor) -> None:
        self.channels.add_batch(X)
        self.hessian.add_batch(X)


def check_smoothing(arch: ArchSpec, specs: Mapping[str, Any], smoothquant: bool) -> None:
    """Refuse AWQ or SmoothQuant on an architecture whose spec declares no smoothing pairs
    (SmoothQuant needs a norm → linears pair), before any work."""
    uses_awq = any(s is not None and isinstance(s.algorithm, AWQConfig) for s in specs.values())
    pairs = [p for b in arch.blocks for p in b.smoothing_pairs]
    if uses_awq and not pairs:
        raise ConfigError(
            f"AWQ needs smoothing pairs, and no block of this {arch.name!r} model has one "
            "(`lowbit inspect MODEL` shows them); use GPTQ or RTN"
        )
    if smoothquant and not any(not p.prev_is_linear for p in pairs):
        raise ConfigError(
            f"SmoothQuant needs norm → linear smoothing pairs, and no block of this "
            f"{arch.name!r} model has one (`lowbit inspect MODEL` shows them); drop smoothquant "
            "from the plan"
        )


def pair_applies(block: nn.Module, pair: SmoothingPair) -> bool:
    """Whether ``pair`` can be folded in ``block``: a previous linear's output channels must be
    the next linears' input channels (not so for v_proj → o_proj under grouped-query
    attention, which is then skipped, as llm-awq does)."""
    if not pair.prev_is_linear:
        return True
    rows = int(block.get_submodule(pair.prev).weight.shape[0])
    return all(int(block.get_submodule(m).weight.shape[1]) == rows for m in pair.linears)


def fold_scales(block: nn.Module, pair: SmoothingPair, s: torch.Tensor, where: str = "") -> None:
    """Divide ``pair.prev`` by ``s`` (in,) and multiply the pair's linears' columns by it, in
    place; the block's function is unchanged. ``where`` names the block in errors."""
    prev = block.get_submodule(pair.prev)
    weight = getattr(prev, "weight", None)
    n = s.numel()
    if weight is None or (weight.shape[0] if pair.prev_is_linear else weight.numel()) != n:
        raise LowbitError(
            f"{where}{pair.prev}: cannot absorb {n} smoothing scales (it has no per-channel "
            "weight of that size); fix smoothing_pairs in the architecture spec"
        )
    with torch.no_grad():
        s = s.to(weight.dtype)
        if pair.prev_is_linear:
            weight.div_(s.view(-1, 1))
        else:  # a norm scaling by (offset + w): offset + w' = (offset + w) / s
            weight.add_(pair.norm_offset).div_(s.view_as(weight)).sub_(pair.norm_offset)
        bias = getattr(prev, "bias", None)
        if bias is not None:
            bias.div_(s)
        for member in pair.linears:
            block.get_submodule(member).weight.mul_(s.view(1, -1))


def collect_pair_stats(
    block: nn.Module,
    inputs: Activations,
    pairs: Sequence[SmoothingPair],
    make: Callable[[int], _Stat],
) -> list[_Stat]:
    """Run ``block`` on every chunk of ``inputs`` (kept) and feed each pair's input (the first
    call of its first linear) to its accumulator ``make(in_features)``; each chunk's forward
    stops once every pair has been seen."""
    firsts = [block.get_submodule(p.linears[0]) for p in pairs]
    stats = [make(int(m.weight.shape[1])) for m in firsts]
    seen: set[int] = set()
    hooks = [
        (m, group_inputs_hook(i, lambda i, x: stats[i].add_batch(x), seen))
        for i, m in enumerate(firsts)
    ]
    for c in range(len(inputs.chunks)):
        seen.clear()
        forward_chunks(block, inputs.single(c), hooks, until=lambda: len(seen) == len(pairs))
        if len(seen) != len(pairs):
            missing = [p.linears[0] for i, p in enumerate(pairs) if i not in seen]
            raise LowbitError(
                f"the block never called {', '.join(missing)}; the architecture "
                "spec's smoothing pairs do not match this model"
            )
    return stats


def smooth_block(
    block: nn.Module,
    path: str,
    inputs: Activations,
    arch: BlockSpec,
    specs: Mapping[str, Any],
    smoothquant: SmoothQuantConfig | None = None,
) -> BlockSmoothing:
    """Smooth block ``path`` in place before its linears are quantized: SmoothQuant's norm
    pairs when ``smoothquant`` is given, then AWQ's pairs whose linears all use AWQ in
    ``specs`` (full layer name → LayerSpec; None or absent: kept in full precision)."""
    out = BlockSmoothing()
    if smoothquant is not None:
        _smoothquant(block, path, inputs, arch, smoothquant, specs, out)
    pairs = [
        p
        for p in arch.smoothing_pairs
        if all(_is_awq(specs.get(f"{path}.{m}")) for m in p.linears) and pair_applies(block, p)
    ]
    if pairs:
        _awq(block, path, inputs, pairs, specs, out)
    return out


def _is_awq(spec: Any) -> bool:
    return spec is not None and isinstance(spec.algorithm, AWQConfig)


def _awq(
    block: nn.Module,
    path: str,
    inputs: Activations,
    pairs: Sequence[SmoothingPair],
    specs: Mapping[str, Any],
    out: BlockSmoothing,
) -> None:
    """Search every pair's scales on the block as it is (llm-awq searches all, then folds)."""
    stats = collect_pair_stats(block, inputs, pairs, _AWQStats)
    chosen = []
    for pair, stat in zip(pairs, stats, strict=True):
        member_specs = [specs[f"{path}.{m}"] for m in pair.linears]
        targets = [
            ScaleTarget(block.get_submodule(m).weight.detach(), sp.fmt, sp.granularity)
            for m, sp in zip(pair.linears, member_specs, strict=True)
        ]
        found = search_scales(
            stat.channels.abs_mean(),
            stat.hessian.hessian(),
            targets,
            member_specs[0].algorithm.grid,
        )
        chosen.append((pair, found.scales))
        out.records.append(
            PairRecord(
                f"{path}.{pair.prev}",
                tuple(f"{path}.{m}" for m in pair.linears),
                found.alpha,
                found.loss,
                found.losses[0],
            )
        )
    for pair, s in chosen:
        fold_scales(block, pair, s, f"{path}.")
        _record(block, path, pair, specs, out)


def _smoothquant(
    block: nn.Module,
    path: str,
    inputs: Activations,
    arch: BlockSpec,
    cfg: SmoothQuantConfig,
    specs: Mapping[str, Any],
    out: BlockSmoothing,
) -> None:
    """SmoothQuant folds into norms only (as its reference code does)."""
    pairs = [p for p in arch.smoothing_pairs if not p.prev_is_linear]
    stats = collect_pair_stats(block, inputs, pairs, ChannelStats)
    for pair, stat in zip(pairs, stats, strict=True):
        w_max = weight_absmax([block.get_submodule(m).weight for m in pair.linears])
        fold_scales(block, pair, smoothquant_scales(stat.abs_max, w_max, cfg.alpha), f"{path}.")
        _record(block, path, pair, specs, out)


def _record(
    block: nn.Module, path: str, pair: SmoothingPair, specs: Mapping[str, Any], out: BlockSmoothing
) -> None:
    """Keep the changed tensors that no quantized weight carries: a norm's weight and bias, a
    previous linear's bias, and the weight of every linear of the pair (previous or next)
    that stays in full precision (no spec in ``specs``)."""
    prev = block.get_submodule(pair.prev)
    name = f"{path}.{pair.prev}"
    if not pair.prev_is_linear or specs.get(name) is None:
        out.tensors[f"{name}.weight"] = prev.weight.detach().cpu().clone()
    if getattr(prev, "bias", None) is not None:
        out.tensors[f"{name}.bias"] = prev.bias.detach().cpu().clone()
    for member in pair.linears:
        if specs.get(f"{path}.{member}") is None:
            weight = block.get_submodule(member).weight
            out.tensors[f"{path}.{member}.weight"] = weight.detach().cpu().clone()


def load_smoothed(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> nn.Module:
    """Set the parameters that smoothing changed (name → value) in ``model``, in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            if name not in params or tuple(params[name].shape) != tuple(value.shape):
                raise LowbitError(
                    f"smoothed tensor {name} does not fit this model; the tensors are from "
                    "another model"
                )
            params[name].copy_(value)
    return model
