"""Block-by-block quantization of a model under a plan, on the block runner.

The inputs of the first block are captured for every calibration window; then, one block at a
time (:func:`~lowbit.runtime.runner.for_each_block`), the block is read from disk to the
device, smoothed (AWQ / SmoothQuant scales folded in), and its linears are quantized group by
group, each group on the fp32 second moment of its inputs over every window (true-sequential:
later groups and later blocks see the quantized earlier ones). Each layer's codes are packed as
soon as it is done and, when saving, written to the block's shard before the next block
starts. RTN-only plans need no calibration and read each block once.

How a block's groups see their inputs (:class:`Strategy`): ``staged`` runs the block once with
every window in flight; ``recompute`` holds one chunk at a time and runs the block up to each
group (chosen when the staged pass would not fit the runtime's memory); ``two-pass`` takes
every group's statistics from the original block (the ``--propagation two-pass`` option).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit._tensor import all_finite
from lowbit.algorithms import HessianAccumulator, SmoothQuantConfig
from lowbit.errors import ConfigError, LowbitError, ModelSourceError
from lowbit.models.arch import BlockSpec, check_plan_routers, check_quantizable
from lowbit.models.budget import block_needs, check_fits
from lowbit.models.capture import capture
from lowbit.models.checkpoint import Checkpoint
from lowbit.models.embeddings import check_embedding_plan, is_tied, quantize_embeddings, unties
from lowbit.models.experts import routed_counts, set_calibration
from lowbit.models.layer_quant import LayerReport, dtype_name, quantize_weight
from lowbit.models.lazy import LazyModel, block_list
from lowbit.models.pipeline import DEFAULT_PIPELINE, PipelineConfig, Propagation
from lowbit.models.qstore import QuantizedLayers, block_shard
from lowbit.models.ranks import check_job, reduce_statistics, solve_group
from lowbit.models.resume import Quant, mark, record_block, replay_block, resume_info
from lowbit.models.smoothing import PairRecord, check_smoothing, smooth_block
from lowbit.models.sources import ModelHandle
from lowbit.plan import LayerSpec, Plan
from lowbit.runtime import Runtime
from lowbit.runtime.distributed import World
from lowbit.runtime.runner import (
    Activations,
    for_each_block,
    run_recompute,
    run_staged,
    run_two_pass,
)

Progress = Callable[[int, int], None]


class Strategy(str, Enum):
    STAGED = "staged"
    RECOMPUTE = "recompute"
    TWO_PASS = "two-pass"
    DATA_FREE = "data-free"


_RUNNERS = {Strategy.STAGED: run_staged, Strategy.RECOMPUTE: run_recompute}
_RUNNERS[Strategy.TWO_PASS] = run_two_pass


@dataclass(frozen=True)
class QuantizedModel:
    """The result of quantizing a model: its quantized layers (packed, in memory or in the
    shards of a saved directory) and everything needed to rebuild the fake-quantized model.

    ``smoothed``: tensors AWQ / SmoothQuant changed outside the quantized linears (norm weights
    and biases, previous linears' biases), by parameter name; ``smoothing``: AWQ's choice per
    pair; ``activation_ranges``: static activation thresholds (absmax) per linear;
    ``untied_head``: a tied embedding/head stored apart; ``execution``: where and how it ran."""

    handle: ModelHandle
    plan: Plan
    weights: QuantizedLayers
    kept: tuple[str, ...]
    layers: tuple[LayerReport, ...] = ()
    timings: Mapping[str, float] = field(default_factory=dict)
    smoothed: Mapping[str, torch.Tensor] = field(default_factory=dict)
    smoothing: tuple[PairRecord, ...] = ()
    activation_ranges: Mapping[str, float] = field(default_factory=dict)
    untied_head: bool = False
    execution: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class _Result:
    """What the driver collects while it runs (frozen into a QuantizedModel at the end)."""

    layers: QuantizedLayers
    reports: list[LayerReport] = field(default_factory=list)
    smoothed: dict[str, torch.Tensor] = field(default_factory=dict)
    smoothing: list[PairRecord] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    execution: dict[str, Any] = field(default_factory=dict)
    keep: bool = True  # False on the ranks other than 0: they apply results, rank 0 keeps them


def linear_names(model: nn.Module, handle: ModelHandle) -> list[str]:
    """Every block linear that a plan can quantize (routers excluded), block by block."""
    check_quantizable(handle.arch, handle.source)
    if len(block_list(model, handle.arch.blocks_path)) != len(handle.arch.blocks):
        raise ModelSourceError(f"{handle.source}: the architecture spec does not fit the model")
    return handle.arch.layer_names()


def quantize_model(
    handle: ModelHandle,
    plan: Plan,
    calibration: torch.Tensor | None,
    *,
    runtime: Runtime | None = None,
    pipeline: PipelineConfig = DEFAULT_PIPELINE,
    progress: Progress | None = None,
    smoothquant: SmoothQuantConfig | None = None,
    shard_dir: Path | None = None,
    checkpoint: Checkpoint | None = None,
) -> QuantizedModel:
    """Quantize every linear layer of ``handle``'s blocks as ``plan`` says, on ``runtime``.

    ``calibration`` (n, ctx) int64 token windows are needed when any layer uses GPTQ, AWQ or
    SqueezeLLM, or with ``smoothquant``. With ``shard_dir``, each block's packed layers are
    written there (``block_shard``) as soon as the block is done; with ``checkpoint`` (whose
    directory is then the shard directory), each finished block is recorded there and the
    blocks it already holds are restored and replayed, not quantized again. ``runtime``: this
    machine's default (:func:`~lowbit.runtime.resolve_runtime`) unless given."""
    from lowbit.runtime import resolve_runtime

    runtime = runtime or resolve_runtime()
    lazy = handle.lazy(runtime)
    names = linear_names(lazy.model, handle)
    check_plan_routers(plan.rules, handle.arch)
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
    if needs and runtime.world.distributed:
        assert calibration is not None
        check_job(runtime.world, handle.fingerprint, plan, calibration)
        calibration = calibration[runtime.world.shard(int(calibration.shape[0]))]
    result = _Result(
        QuantizedLayers(checkpoint.directory if checkpoint else shard_dir),
        keep=runtime.world.writes,
    )
    result.execution.update(runtime=runtime.describe(), **resume_info(checkpoint))
    start = time.perf_counter()
    with torch.no_grad():
        if needs:
            assert calibration is not None
            quant = Quant(specs, result, progress, checkpoint)
            _calibrated(lazy, quant, calibration, pipeline, smoothquant)
        else:
            _data_free(lazy, Quant(specs, result, progress, checkpoint))
        untied = _embeddings(handle, plan, result, runtime.device)
    result.timings["quantize_s"] = time.perf_counter() - start
    return QuantizedModel(
        handle,
        plan,
        result.layers,
        tuple(n for n, s in specs.items() if s is None),
        tuple(result.reports),
        result.timings,
        result.smoothed,
        tuple(result.smoothing),
        {},
        untied,
        result.execution,
    )


def _embeddings(handle: ModelHandle, plan: Plan, result: _Result, device: torch.device) -> bool:
    """The plan's embedding and head specs (RTN, read straight from the weight files)."""
    if plan.embedding is None and plan.head is None:
        return False
    t0 = time.perf_counter()
    for name, qw in quantize_embeddings(handle, plan, device).items():
        spec = plan.embedding if name == handle.arch.embed_path else plan.head
        assert spec is not None
        result.layers.add(name, qw)
        result.reports.append(
            LayerReport(name, spec.describe(), qw.shape, qw.bits_per_weight(), 0.0)
        )
    result.timings["embeddings_s"] = time.perf_counter() - t0
    return unties(plan, handle.config)


def _data_free(lazy: LazyModel, q: Quant) -> None:
    result = q.result
    result.execution["strategy"] = Strategy.DATA_FREE.value
    arch = lazy.arch
    n_blocks = len(lazy)
    for i in range(n_blocks):
        path = f"{arch.blocks_path}.{i}"
        if not q.done(i):
            since = mark(result)
            block = lazy.load(i)
            for member in arch.block(i).linear_names:
                name = f"{path}.{member}"
                _quantize_layer(name, block.get_submodule(member), q.specs[name], None, result)
            lazy.release(i)
            shard = result.layers.flush(block_shard(i))
            record_block(q.checkpoint, i, f"{path}.", result, since, shard)
        if q.progress:
            q.progress(i + 1, n_blocks)


def _calibrated(
    lazy: LazyModel,
    q: Quant,
    calibration: torch.Tensor,
    pipeline: PipelineConfig,
    smoothquant: SmoothQuantConfig | None,
) -> None:
    t0 = time.perf_counter()
    runtime, arch, specs, result = lazy.runtime, lazy.arch, q.specs, q.result
    if q.checkpoint is not None and q.checkpoint.done == len(lazy):
        for i in range(len(lazy)):  # every block is restored: nothing to run
            q.done(i)
        return
    strategy, home = _plan_execution(lazy, calibration, pipeline, result)
    acts = capture(lazy, calibration, pipeline.chunk_size, home)
    result.timings["capture_s"] = time.perf_counter() - t0
    run = _RUNNERS[strategy]
    world, loads = runtime.world, [0.0] * runtime.world.size

    def stage(i: int, block: nn.Module, inputs: Activations) -> Activations:
        path = f"{arch.blocks_path}.{i}"
        if q.done(i):
            return replay_block(lazy, i, block, inputs, result)
        since = mark(result)
        _smooth(block, path, inputs, specs, smoothquant, lazy.arch.block(i), result)
        spec = arch.block(i)
        groups = [
            [(f"{path}.{m}", block.get_submodule(m)) for m in group]
            for group in spec.sequential_groups
        ]
        no_clip = {f"{path}.{m}" for m in spec.no_clip}
        stats: dict[int, HessianAccumulator] = {}

        def observe(g: int, x: torch.Tensor) -> None:
            if g not in stats:
                stats[g] = HessianAccumulator(int(x.shape[-1]), device=runtime.device)
            stats[g].add_batch(x)

        def on_group(g: int) -> None:
            if world.distributed:
                return _on_ranks(world, stats.pop(g), groups[g], specs, no_clip, result, loads)
            H = stats.pop(g).hessian()
            shared: dict[tuple[object, ...], object] = {}  # e.g. GPTQ's factor of H
            for name, module in groups[g]:
                clip = name not in no_clip
                _quantize_layer(name, module, specs[name], H, result, clip=clip, shared=shared)

        outputs = run(block, inputs, groups, observe, on_group)
        for ep in spec.experts:
            counts = routed_counts(block.get_submodule(ep), len(inputs.chunks))
            result.execution.setdefault("experts", {})[f"{path}.{ep}"] = counts
        shard = result.layers.flush(block_shard(i))
        record_block(q.checkpoint, i, f"{path}.", result, since, shard)
        return outputs

    set_calibration(lazy.model, pipeline.experts)
    try:
        for_each_block(lazy, acts, stage, q.progress)
    finally:
        set_calibration(lazy.model, None)
    if "experts" in result.execution:
        result.execution["expert_calibration"] = pipeline.experts.to_dict()


def _on_ranks(
    world: World,
    acc: HessianAccumulator,
    group: list[tuple[str, nn.Module]],
    specs: dict[str, LayerSpec | None],
    no_clip: set[str],
    result: _Result,
    loads: list[float],
) -> None:
    """One group under torch.distributed: statistics summed over the ranks, each layer solved
    on its owner rank and applied on all (:mod:`lowbit.models.ranks`)."""
    t = result.timings
    t["all_reduce_s"] = t.get("all_reduce_s", 0.0) + reduce_statistics(world, acc)
    H = acc.hessian()
    for name, module in group:
        if specs[name] is None:
            _quantize_layer(name, module, None, H, result)

    def solve(name: str, W: torch.Tensor, spec: LayerSpec, clip: bool, shared: dict) -> Any:
        return quantize_weight(name, W, spec, H, clip=clip, shared=shared)

    def apply(name: str, module: nn.Module, spec: LayerSpec, out: Any, seconds: float) -> None:
        _apply(name, module, spec, out, seconds, result)

    waited = solve_group(world, group, specs, no_clip, loads, solve, apply)
    t["broadcast_s"] = t.get("broadcast_s", 0.0) + waited


def _plan_execution(
    lazy: LazyModel, calibration: torch.Tensor, pipeline: PipelineConfig, result: _Result
) -> tuple[Strategy, torch.device]:
    """The strategy and where activations live, from the runtime's memory; refuses a budget
    too small for one block."""
    runtime = lazy.runtime
    n, ctx = calibration.shape
    chunk_tokens = min(pipeline.chunk_size, n) * ctx
    needs = block_needs(
        block_list(lazy.model, lazy.arch.blocks_path), runtime, chunk_tokens, n * ctx
    )
    hidden_bytes = 2 * n * ctx * int(lazy.model.config.hidden_size) * _elt(runtime)
    on_cpu = hidden_bytes if runtime.on_cpu else 0  # else offloaded when they do not fit
    free = check_fits(
        needs.one_block + on_cpu,
        runtime,
        f"quantizing {lazy.where}",
        {"weights": needs.weights, "statistics and solver": max(needs.statistics, needs.solver),
         "one chunk of activations": needs.chunk, "every window's block inputs and outputs":
         on_cpu},
    )  # fmt: skip
    home = runtime.activations_device(hidden_bytes, needs.one_block)
    resident = hidden_bytes if home == runtime.device else 0
    if pipeline.propagation is Propagation.TWO_PASS:
        strategy = Strategy.TWO_PASS
    elif needs.one_block + needs.in_flight + resident <= free:
        strategy = Strategy.STAGED
    else:
        strategy = Strategy.RECOMPUTE
    result.execution.update(
        strategy=strategy.value,
        activations=str(home),
        activation_bytes=hidden_bytes,
        needs=needs.to_dict(),
        memory_available=free,
    )
    return strategy, home


def _elt(runtime: Runtime) -> int:
    return torch.empty(0, dtype=runtime.dtype).element_size()


def _smooth(
    block: nn.Module,
    path: str,
    inputs: Activations,
    specs: dict[str, LayerSpec | None],
    smoothquant: SmoothQuantConfig | None,
    spec: BlockSpec,
    result: _Result,
) -> None:
    """SmoothQuant and AWQ scales for this block, folded into it before it is quantized."""
    t0 = time.perf_counter()
    done = smooth_block(block, path, inputs, spec, specs, smoothquant)
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
    result: _Result,
    *,
    clip: bool = True,
    shared: dict[tuple[object, ...], object] | None = None,
) -> None:
    t0 = time.perf_counter()
    W = module.weight.data
    if not all_finite(W):
        raise LowbitError(f"layer {name} has NaN or infinite weights; the checkpoint is corrupt")
    if spec is None:
        shape = (int(W.shape[0]), int(W.shape[1]))
        bits = float(W.element_size() * 8)
        result.reports.append(LayerReport(name, f"kept ({dtype_name(W)})", shape, bits, 0.0))
        return
    out = quantize_weight(name, W, spec, H, clip=clip, shared=shared)
    _apply(name, module, spec, out, time.perf_counter() - t0, result)


def _apply(
    name: str, module: nn.Module, spec: LayerSpec, out: Any, seconds: float, result: _Result
) -> None:
    """Put a solved layer's dequantized weight in the block; keep its codes (rank 0)."""
    W = module.weight.data
    module.weight.data = out.weight.dequantize().to(W.device, W.dtype)
    if not result.keep:
        return
    result.layers.add(name, out.weight)
    shape = (int(W.shape[0]), int(W.shape[1]))
    result.reports.append(
        LayerReport(
            name, spec.describe(), shape, out.weight.bits_per_weight(), seconds, out.loss, out.damp
        )
    )
