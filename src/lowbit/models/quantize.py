"""Block-by-block quantization of a model under a plan.

Calibration: capture the inputs of the first decoder block for every calibration chunk, then for
each block: load it from disk, run it over all chunks with :func:`run_block_staged` (each group
of linears is quantized when every chunk has reached it, so later layers and later blocks see
the quantized earlier ones, as in GPTQ's sequential mode), keep its outputs as the next block's
inputs, and release it. RTN-only plans need no calibration and skip all of that.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lowbit.algorithms import GPTQConfig, HessianAccumulator, gptq_quantize, rtn_quantize
from lowbit.algorithms.awq import awq_quantize
from lowbit.algorithms.config import AWQConfig, SmoothQuantConfig, SqueezeLLMConfig
from lowbit.algorithms.squeezellm import squeezellm_quantize
from lowbit.errors import ConfigError, DataError, LowbitError
from lowbit.formats import QuantizedWeight
from lowbit.models.capture import capture_inputs
from lowbit.models.embeddings import check_embedding_plan, is_tied, quantize_embeddings, unties
from lowbit.models.lazy import LazyModel, block_list
from lowbit.models.memory import fix_mmap_threshold
from lowbit.models.pipeline import DEFAULT_PIPELINE, PipelineConfig, Propagation
from lowbit.models.smoothing import PairRecord, check_smoothing, smooth_block
from lowbit.models.sources import ModelHandle
from lowbit.models.staged import run_block_staged, run_block_two_pass
from lowbit.plan import LayerSpec, Plan

Progress = Callable[[int, int], None]


@dataclass
class LayerReport:
    name: str
    spec: str
    shape: tuple[int, int]
    bits_per_weight: float
    seconds: float
    gptq_loss: float | None = None
    damp: float | None = None


@dataclass
class QuantizedModel:
    """The result of quantizing a model: one QuantizedWeight per quantized linear layer."""

    handle: ModelHandle
    plan: Plan
    weights: dict[str, QuantizedWeight]
    kept: list[str]
    layers: list[LayerReport] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    # tensors AWQ / SmoothQuant changed outside the quantized linears (norm weights and
    # biases, previous linears' biases), by parameter name; and AWQ's choice per pair
    smoothed: dict[str, torch.Tensor] = field(default_factory=dict)
    smoothing: list[PairRecord] = field(default_factory=list)
    # static activation thresholds (absmax) per linear, when the plan's activations are static
    activation_ranges: dict[str, float] = field(default_factory=dict)
    # a tied embedding/head stored apart (plan untie_embeddings); the head is its own tensor
    untied_head: bool = False


def linear_names(model: nn.Module, handle: ModelHandle) -> list[str]:
    blocks = block_list(model, handle.arch.blocks_path)
    return [
        f"{handle.arch.blocks_path}.{i}.{m}"
        for i in range(len(blocks))
        for m in handle.arch.linear_names
    ]


def quantize_model(
    handle: ModelHandle,
    plan: Plan,
    calibration: torch.Tensor | None,
    *,
    pipeline: PipelineConfig = DEFAULT_PIPELINE,
    progress: Progress | None = None,
    smoothquant: SmoothQuantConfig | None = None,
) -> QuantizedModel:
    """Quantize every linear layer of ``handle``'s blocks as ``plan`` says.

    ``calibration`` (n, ctx) int64 token windows are needed when any layer uses GPTQ or AWQ,
    or with ``smoothquant`` (each block is smoothed before its weights are quantized).
    """
    lazy = LazyModel(handle)
    names = linear_names(lazy.model, handle)
    specs = plan.resolve(names)
    check_embedding_plan(plan, is_tied(handle.config), handle.source)  # before any work
    check_smoothing(handle.arch, specs, smoothquant is not None)
    needs = sorted(
        {s.algorithm.name for s in specs.values() if s and s.algorithm.needs_calibration}
    )
    needs += ["smoothquant"] if smoothquant is not None else []
    if needs and (calibration is None or calibration.numel() == 0):
        raise ConfigError(
            f"the plan uses {', '.join(needs)}, which needs calibration windows; give --calib text"
        )
    needs_data = bool(needs)
    result = QuantizedModel(handle, plan, {}, [n for n, s in specs.items() if s is None])
    start = time.perf_counter()
    with torch.no_grad():
        if needs_data:
            fix_mmap_threshold()
            _calibrated(lazy, handle, specs, calibration, pipeline, result, progress, smoothquant)
        else:
            _data_free(lazy, handle, specs, result, progress)
        _embeddings(handle, plan, result)
    result.timings["quantize_s"] = time.perf_counter() - start
    return result


def _embeddings(handle: ModelHandle, plan: Plan, result: QuantizedModel) -> None:
    """The plan's embedding and head specs (RTN, read straight from the weight files)."""
    if plan.embedding is None and plan.head is None:
        return
    t0 = time.perf_counter()
    for name, qw in quantize_embeddings(handle, plan).items():
        spec = plan.embedding if name == handle.arch.embed_path else plan.head
        result.weights[name] = qw
        result.layers.append(
            LayerReport(name, spec.describe(), qw.shape, qw.bits_per_weight(), 0.0)  # type: ignore[union-attr]
        )
    result.untied_head = unties(plan, handle.config)
    result.timings["embeddings_s"] = time.perf_counter() - t0


def _data_free(
    lazy: LazyModel,
    handle: ModelHandle,
    specs: dict,
    result: QuantizedModel,
    progress: Progress | None,
) -> None:
    n_blocks = len(block_list(lazy.model, handle.arch.blocks_path))
    for i in range(n_blocks):
        path = f"{handle.arch.blocks_path}.{i}"
        block = lazy.materialize(path)
        for member in handle.arch.linear_names:
            name = f"{path}.{member}"
            _quantize_layer(name, block.get_submodule(member), specs[name], None, result)
        lazy.release(path)
        if progress:
            progress(i + 1, n_blocks)


def _calibrated(
    lazy: LazyModel,
    handle: ModelHandle,
    specs: dict,
    calibration: torch.Tensor,
    pipeline: PipelineConfig,
    result: QuantizedModel,
    progress: Progress | None,
    smoothquant: SmoothQuantConfig | None = None,
) -> None:
    t0 = time.perf_counter()
    hidden, kwargs = capture_block_inputs(lazy, handle, calibration, pipeline.chunk_size)
    run = (
        run_block_staged
        if pipeline.propagation is Propagation.TRUE_SEQUENTIAL
        else run_block_two_pass
    )
    result.timings["capture_s"] = time.perf_counter() - t0
    arch = handle.arch
    n_blocks = len(block_list(lazy.model, arch.blocks_path))
    for i in range(n_blocks):
        path = f"{arch.blocks_path}.{i}"
        block = lazy.materialize(path)
        _smooth(block, path, hidden, kwargs, arch, specs, smoothquant, result)
        groups = [
            [(f"{path}.{m}", block.get_submodule(m)) for m in group]
            for group in arch.sequential_groups
        ]
        no_clip = {f"{path}.{m}" for m in arch.no_clip}

        def on_group(
            g: int, stat: HessianAccumulator, groups: list = groups, no_clip: set = no_clip
        ) -> None:
            H = stat.hessian()
            for name, module in groups[g]:
                _quantize_layer(name, module, specs[name], H, result, clip=name not in no_clip)

        hidden = run(block, hidden, kwargs, groups, on_group)
        lazy.release(path)
        if progress:
            progress(i + 1, n_blocks)


def _smooth(
    block: nn.Module,
    path: str,
    hidden: list[torch.Tensor],
    kwargs: list[dict[str, Any]],
    arch: Any,
    specs: dict,
    smoothquant: SmoothQuantConfig | None,
    result: QuantizedModel,
) -> None:
    """SmoothQuant and AWQ scales for this block, folded into it before it is quantized."""
    t0 = time.perf_counter()
    done = smooth_block(block, path, hidden, kwargs, arch, specs, smoothquant)
    result.smoothed.update(done.tensors)
    result.smoothing.extend(done.records)
    if done.tensors:
        result.timings["smoothing_s"] = (
            result.timings.get("smoothing_s", 0.0) + time.perf_counter() - t0
        )


def _quantize_layer(
    name: str,
    module: nn.Module,
    spec: LayerSpec | None,
    H: torch.Tensor | None,
    result: QuantizedModel,
    *,
    clip: bool = True,
) -> None:
    t0 = time.perf_counter()
    W = module.weight.data
    if not torch.isfinite(W).all():
        raise LowbitError(f"layer {name} has NaN or infinite weights; the checkpoint is corrupt")
    shape = (int(W.shape[0]), int(W.shape[1]))
    if spec is None:
        result.layers.append(LayerReport(name, "kept (fp32)", shape, 32.0, 0.0))
        return
    try:
        qw, loss, damp = quantize_weight(name, W, spec, H, clip=clip)
    except DataError as exc:
        raise DataError(f"layer {name}: {exc}") from None
    module.weight.data = qw.dequantize().to(W.dtype)
    result.weights[name] = qw
    result.layers.append(
        LayerReport(
            name, spec.describe(), shape, qw.bits_per_weight(), time.perf_counter() - t0, loss, damp
        )
    )


def quantize_weight(
    name: str, W: torch.Tensor, spec: LayerSpec, H: torch.Tensor | None, *, clip: bool = True
) -> tuple[QuantizedWeight, float | None, float | None]:
    """Quantize ``W`` (out, in) as ``spec`` says; GPTQ needs ``H`` (in, in). Returns the weight,
    GPTQ's loss and the damping it used (None for RTN).

    AWQ here is its clip search (``H`` given, ``clip`` and the config's ``clip``) and round to
    nearest: its scales are folded into the block before (:func:`smooth_block`); a layer
    quantized alone (sensitivity probes) gets no scales."""
    if isinstance(spec.algorithm, AWQConfig):
        awq = spec.algorithm
        return awq_quantize(W, H, spec.fmt, spec.granularity, awq, clip=clip, name=name), None, None
    if isinstance(spec.algorithm, GPTQConfig):
        if H is None:
            raise LowbitError(f"layer {name}: GPTQ needs calibration statistics")
        if not torch.isfinite(H).all():
            raise LowbitError(f"layer {name}: its calibration inputs contain NaN or infinity")
        out = gptq_quantize(W, H, spec.fmt, spec.granularity, spec.algorithm)
        return out.weight, out.loss, out.damp
    if isinstance(spec.algorithm, SqueezeLLMConfig):  # sensitivity: the Hessian diagonal
        if H is None:
            raise LowbitError(f"layer {name}: SqueezeLLM needs calibration statistics")
        if not torch.isfinite(H).all():
            raise LowbitError(f"layer {name}: its calibration inputs contain NaN or infinity")
        sensitivity = torch.diagonal(H)
        qw = squeezellm_quantize(W, sensitivity, spec.fmt, spec.granularity, spec.algorithm, name)
        return qw, None, None
    return rtn_quantize(W, spec.fmt, spec.granularity, spec.algorithm.clipping, name), None, None


def capture_block_inputs(
    lazy: LazyModel, handle: ModelHandle, ids: torch.Tensor, chunk_size: int
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Inputs (hidden states and keyword arguments) of the first block for each chunk of ``ids``,
    with only the modules outside the blocks loaded."""
    outside = list(lazy.outside_blocks(handle.arch.blocks_path))
    for path in outside:
        lazy.materialize(path)
    try:
        first = block_list(lazy.model, handle.arch.blocks_path)[0]
        return capture_inputs(lazy.model, first, ids, chunk_size)
    finally:
        for path in outside:
            lazy.release(path)
