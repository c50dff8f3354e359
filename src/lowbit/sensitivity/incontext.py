"""In-context sensitivity: the measured KL of the model with one unit at each option of the menu
while every other unit is already quantized as a plan (the *context*) says, as ExLlamaV3
measures it, so the measurement includes the error of every other layer.

Every unit of the table is quantized with every spec of the menu once (:class:`WeightCache`;
GPTQ with its block's Hessian from the original model's calibration inputs, as the
single-layer probes do), so a plan is a weight swap: a block materialized from the store gets
the cached weights of its units' options (:class:`PlannedStore`). For a context and the units
to measure, one pass of the planned blocks records each needed block's input on the probe
windows; then per block i its units' candidates (``batch`` options of one unit per run, as
:class:`~lowbit.sensitivity.measured.KLProbe` stacks them) go through blocks i+1 … N−1 of the
plan and the model's head, scored against the original model's cached log-probabilities.

Cost, counted in :meth:`ContextProbe.stats`: ``block_forwards`` (one block run on the probe
windows for one candidate or plan) and ``decoder_passes`` = block forwards / N, the
equivalent number of whole-model forwards on the probe windows; ``heads`` (runs of the final
norm and head). Memory: the cached weights (every unit × every spec, in the runtime's dtype),
one block, the probe windows' hidden states of one block's candidates.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.evaluation.bos import NO_BOS, BosChoice
from lowbit.models.capture import capture
from lowbit.models.lazy import LazyModel
from lowbit.models.quantize import quantize_weight
from lowbit.models.sources import ModelHandle
from lowbit.plan import LayerSpec
from lowbit.runtime import Runtime
from lowbit.runtime.runner import Activations, Chunk, hidden_of
from lowbit.sensitivity.measured import KLProbe, probe_source, reference_windows
from lowbit.sensitivity.sweep import (
    CountingStore,
    Streams,
    block_hessians,
    plan_memory,
    record_inputs,
)
from lowbit.sensitivity.table import LayerInfo
from lowbit.sensitivity.units import relative_members


@dataclass(frozen=True)
class ContextConfig:
    """``probe_windows`` × ``probe_ctx`` tokens for the measured KL: the first calibration
    windows, cut, or with ``held_out`` the first windows of the calibration text that overlap no
    calibration window (:func:`lowbit.evaluation.text.held_out_windows`), so the GPTQ
    candidates are not scored on the text they were fitted on; ``batch`` options of one unit
    share one run of a block; GPTQ's Hessians use every calibration window, ``chunk_size`` per
    chunk."""

    probe_windows: int = 2
    probe_ctx: int = 128
    batch: int = 2
    chunk_size: int = 8
    held_out: bool = False

    def __post_init__(self) -> None:
        for name in ("probe_windows", "batch", "chunk_size"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"in-context {name} must be at least 1, got {getattr(self, name)}"
                )
        if self.probe_ctx < 2:
            raise ConfigError(f"in-context probe_ctx must be at least 2, got {self.probe_ctx}")


class WeightCache:
    """Each unit of ``layers`` quantized with each spec of ``menu``: by (unit name, spec index),
    the dequantized weight of each member (named inside its block)."""

    def __init__(
        self,
        lazy: LazyModel,
        store: CountingStore,
        menu: tuple[LayerSpec, ...],
        layers: Sequence[LayerInfo],
        calib: torch.Tensor,
        chunk_size: int,
        home: torch.device,
    ) -> None:
        t0 = time.perf_counter()
        self.weights: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
        path = lazy.arch.blocks_path
        blocks = sorted({x.block for x in layers})
        calibrate = any(s.algorithm.needs_calibration for s in menu)
        inputs = {}
        if calibrate:
            stream = Streams(capture(lazy, calib, chunk_size, home), None, None)
            inputs = record_inputs(store, stream, blocks).calibration
        for i in blocks:
            block = store.load(i)
            try:
                H = None
                if calibrate:
                    groups = lazy.arch.block(i).sequential_groups
                    H = block_hessians(block, inputs.pop(i), groups, lazy.runtime.device)
                for info in (x for x in layers if x.block == i):
                    self._unit(block, info, menu, H, path)
            finally:
                store.release(i)
        self.seconds = time.perf_counter() - t0

    def _unit(
        self,
        block: nn.Module,
        info: LayerInfo,
        menu: tuple[LayerSpec, ...],
        hessians: dict[str, torch.Tensor] | None,
        blocks_path: str,
    ) -> None:
        members = relative_members(info, blocks_path)
        shared: dict[int, dict[tuple[object, ...], object]] = {}
        with torch.no_grad():
            for s, spec in enumerate(menu):
                out = {}
                for member, name in zip(members, info.member_names, strict=True):
                    W = block.get_submodule(member).weight.data
                    H = None if hessians is None else hessians[member]
                    cache = shared.setdefault(id(H), {})
                    qw = quantize_weight(name, W, spec, H, shared=cache).weight
                    out[member] = qw.dequantize().to(W.dtype)
                self.weights[(info.name, s)] = out


class PlannedStore(CountingStore):
    """The blocks of ``lazy`` with every unit's cached weight for the option ``choice`` gives
    it (by unit name)."""

    def __init__(self, lazy: LazyModel, layers: Sequence[LayerInfo]) -> None:
        super().__init__(lazy)
        self.by_block: dict[int, list[LayerInfo]] = {}
        for x in layers:
            self.by_block.setdefault(x.block, []).append(x)
        self.cache: WeightCache | None = None
        self.choice: dict[str, int] = {}

    def load(self, i: int) -> nn.Module:
        block = super().load(i)
        assert self.cache is not None
        for info in self.by_block.get(i, []):
            for member, W in self.cache.weights[(info.name, self.choice[info.name])].items():
                _set_weight(block, member, W)
        return block


def _set_weight(block: nn.Module, member: str, W: torch.Tensor) -> None:
    block.get_submodule(member).weight = nn.Parameter(W, requires_grad=False)


class ContextProbe:
    """Measured KL of plans of ``units`` (each a tuple of unit names of ``layers`` that share
    one option) on the probe windows; see the module's docstring."""

    def __init__(
        self,
        handle: ModelHandle,
        menu: tuple[LayerSpec, ...],
        layers: Sequence[LayerInfo],
        units: Sequence[tuple[str, ...]],
        calib: torch.Tensor,
        cfg: ContextConfig,
        runtime: Runtime,
        bos: BosChoice = NO_BOS,
        held_out: torch.Tensor | None = None,
    ) -> None:
        shape = (cfg.probe_windows, cfg.probe_ctx)
        ids = probe_source(calib, held_out, cfg.held_out, shape, "in-context probe")
        self.menu, self.cfg, self.handle = menu, cfg, handle
        self.layers = {x.name: x for x in layers}
        self.units = [tuple(u) for u in units]
        lazy = handle.lazy(runtime)
        self.lazy, self.n = lazy, len(lazy)
        home, _ = plan_memory(
            lazy,
            {"calibration": calib, "probe": ids},
            {"calibration": self.n, "probe": self.n + cfg.batch},
            cfg.chunk_size,
        )
        self.originals = CountingStore(lazy)
        self.store = PlannedStore(lazy, layers)
        self.store.cache = WeightCache(
            lazy, self.originals, menu, layers, calib, cfg.chunk_size, home
        )
        reference, _ = reference_windows(handle, ids, runtime, bos)
        self.probe = KLProbe(lazy, self.store, ids, reference, cfg.batch, home)
        self.inputs = capture(lazy, ids, cfg.probe_windows, home)
        self.progress: Callable[[int, int], None] | None = None  # (blocks done, blocks)
        self.counts = {"block_forwards": 0, "heads": 0, "candidates": 0, "plans": 0}
        self.timer = {"measure_s": 0.0}  # shared, like the counts, with on_windows' copies
        self.plan_kl: dict[tuple[int, ...], float] = {}
        self.option_kl: dict[tuple[tuple[int, ...], int, int], float] = {}  # (plan, unit, option)

    def on_windows(self, ids: torch.Tensor, bos: BosChoice = NO_BOS) -> ContextProbe:
        """This probe scoring plans on other windows ``ids`` (n, ctx), e.g. held-out text,
        with the same cached weights, counters and clock."""
        other = copy.copy(self)
        reference, _ = reference_windows(self.handle, ids, self.lazy.runtime, bos)
        home = self.probe.home
        other.probe = KLProbe(self.lazy, self.store, ids, reference, 1, home)
        other.inputs = capture(self.lazy, ids, int(ids.shape[0]), home)
        other.plan_kl, other.option_kl = {}, {}
        return other

    def stats(self) -> dict[str, float]:
        assert self.store.cache is not None
        return {
            **{k: float(v) for k, v in self.counts.items()},
            "decoder_passes": self.counts["block_forwards"] / self.n,
            "block_loads": float(self.store.loads + self.originals.loads),
            "quantize_s": self.store.cache.seconds,
            "measure_s": self.timer["measure_s"],
        }

    def _use(self, context: tuple[int, ...]) -> None:
        if len(context) != len(self.units):
            raise ConfigError(f"a plan gives {len(context)} options for {len(self.units)} units")
        self.store.choice = {n: s for u, s in zip(self.units, context, strict=True) for n in u}

    def kl(self, context: tuple[int, ...]) -> float:
        """The measured KL of the plan ``context`` (one option per unit; measured once)."""
        if context in self.plan_kl:
            return self.plan_kl[context]
        t0 = time.perf_counter()
        self._use(context)
        block = self.store.load(0)
        try:
            out = self._forward(0, block, self.inputs.on_device(0))
        finally:
            self.store.release(0)
        (kl,) = self.probe.kls(0, [out])
        self.counts["block_forwards"] += self.n
        self.counts["heads"] += 1
        self.counts["plans"] += 1
        self.timer["measure_s"] += time.perf_counter() - t0
        self.plan_kl[context] = kl
        return kl

    def curves(self, context: tuple[int, ...], units: list[int]) -> dict[int, dict[int, float]]:
        """For each of ``units`` (indices), the measured KL with that unit at each option and
        every other unit at ``context``'s (the context's own option: the plan's KL); what was
        measured in this context before is not measured again."""
        base = self.kl(context)  # timed by kl
        t0 = time.perf_counter()
        self._use(context)
        todo: dict[int, list[tuple[int, int]]] = {}  # block → (unit, option)
        for u in units:
            block = self.layers[self.units[u][0]].block
            todo.setdefault(block, []).extend(
                (u, s)
                for s in range(len(self.menu))
                if s != context[u] and (context, u, s) not in self.option_kl
            )
        todo = {i: t for i, t in todo.items() if t}
        inputs = self._record(sorted(todo))
        out = {u: {context[u]: base} for u in units}
        for k, i in enumerate(sorted(todo)):
            for (u, s), kl in zip(todo[i], self._block_kls(i, todo[i], inputs.pop(i)), strict=True):
                self.option_kl[(context, u, s)] = kl
            if self.progress:
                self.progress(k + 1, len(todo))
        for u in units:
            for s in range(len(self.menu)):
                if s != context[u]:
                    out[u][s] = self.option_kl[(context, u, s)]
        self.timer["measure_s"] += time.perf_counter() - t0
        return out

    def _record(self, blocks: list[int]) -> dict[int, torch.Tensor]:
        """The plan's inputs of ``blocks`` on the probe windows."""
        kept: dict[int, torch.Tensor] = {}
        if not blocks:
            return kept
        x = self.inputs.on_device(0)
        for i in range(max(blocks) + 1):
            if i in blocks:
                kept[i] = x.to(self.probe.home)
            if i == max(blocks):
                break
            block = self.store.load(i)
            try:
                x = self._forward(i, block, x)
            finally:
                self.store.release(i)
            self.counts["block_forwards"] += 1
        return kept

    def _block_kls(self, i: int, todo: list[tuple[int, int]], x: torch.Tensor) -> list[float]:
        acts = Activations([Chunk(x, {})], self.lazy.runtime.device, self.probe.home)
        by_unit: dict[int, list[int]] = {}
        for u, s in todo:
            by_unit.setdefault(u, []).append(s)
        outputs: list[torch.Tensor] = []
        block = self.store.load(i)
        try:
            for u, specs in by_unit.items():
                for start in range(0, len(specs), self.cfg.batch):
                    part = specs[start : start + self.cfg.batch]
                    outputs += self.probe.block_outputs(i, block, self._stacked(u, part), acts)
        finally:
            self.store.release(i)
        self.counts["block_forwards"] += len(outputs) * (self.n - i)
        self.counts["heads"] += len(outputs)
        self.counts["candidates"] += len(outputs)
        return self.probe.kls(i, outputs)

    def _stacked(self, u: int, specs: list[int]) -> dict[str, list[torch.Tensor]]:
        assert self.store.cache is not None
        weights: dict[str, list[torch.Tensor]] = {}
        for name in self.units[u]:
            for s in specs:
                for member, W in self.store.cache.weights[(name, s)].items():
                    weights.setdefault(member, []).append(W)
        return weights

    def _forward(self, i: int, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = block(x.to(self.lazy.runtime.device), **self.probe.kwargs[1][i])
        self.probe.as_tuple = isinstance(out, tuple)
        return hidden_of(out).to(self.probe.home)
