"""Measure sensitivity: quantize one unit at a time, see what the model's output loses, without
ever holding the whole model.

A unit is a linear layer, or by default one projection of every expert of a block
(:mod:`~lowbit.sensitivity.units`; ``ProbeConfig.expert_units``). For every unit of the blocks
to probe and every spec of the menu: each of its linears is quantized (GPTQ with its group's
Hessian on the calibration windows, or RTN); the proxies come from the quantized weights alone
(Hessian diagonal; Fisher diagonal), summed over the unit's linears; the measured value is the
KL divergence of the model's next-token distribution to the original's on the probe windows,
with only that unit quantized (all its linears at once). One block is materialized at a time,
on the runtime's device:

1. the reference: the original model's log-probabilities on the probe windows, computed
   layer-wise once and cached on disk (``$LOWBIT_CACHE/references``);
2. the sweep (:mod:`~lowbit.sensitivity.sweep`): one pass of the original blocks records the
   inputs of the blocks to probe on the calibration and probe windows, and of every block from
   the lowest one probed on the Fisher windows;
3. blocks N−1 down to the lowest one probed, each materialized once: the Fisher backward step
   (:mod:`~lowbit.sensitivity.fisher`), the block's Hessians from its recorded calibration
   inputs, every candidate quantized, its proxies, and its block output on the probe windows;
   then every candidate of the block through blocks i+1 … N−1, each materialized once, and the
   model's final norm and head (:mod:`~lowbit.sensitivity.measured`).

The blocks are visited last first because the Fisher's backward goes that way; the candidates
of block i need blocks i+1 … N−1, so a full table loads a block about N²/2 times in all
(O(N²/2), plus one sweep, one backward and, once per model and probe windows, the reference).
Memory: one block (weights, one chunk in flight, its Hessians, its Fisher accumulators, one
unit's quantized candidates for ``batch`` specs) or the modules outside the blocks (with the
logits of up to ``measured.HEAD_ROWS`` tokens, one window at least), never two blocks; the
reference's log-probabilities on the probe windows and their exponentials (twice probe windows ×
tokens × vocabulary); and the recorded activations: per block to probe, its inputs on the
calibration, probe and Fisher windows (released as it is probed), one gradient per Fisher
window, and the hidden states of one block's candidates on the probe windows. These live on the
device or, by the runtime's offload policy, in CPU memory; ``timings["stored_bytes"]`` records
their size and ``timings["block_loads"]`` the blocks materialized (the reference's aside). The
whole model's weights, or its gradients, are never held at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.evaluation.bos import NO_BOS, BosChoice
from lowbit.models.capture import capture
from lowbit.models.lazy import LazyModel
from lowbit.models.sources import ModelHandle
from lowbit.plan import LayerSpec
from lowbit.runtime import Runtime
from lowbit.runtime.runner import Activations
from lowbit.sensitivity.candidates import Row, Unit
from lowbit.sensitivity.fisher import BlockwiseFisher
from lowbit.sensitivity.measured import KLProbe, probe_source, reference_windows
from lowbit.sensitivity.sweep import (
    CountingStore,
    Recorded,
    Streams,
    block_hessians,
    plan_memory,
    record_inputs,
)
from lowbit.sensitivity.table import Entry, LayerInfo, SensitivityTable, check_menu
from lowbit.sensitivity.units import (
    ExpertUnits,
    check_expert_units,
    layer_infos,
    relative_members,
    unit_groups,
    unit_modules,
)


@dataclass(frozen=True)
class ProbeConfig:
    """``probe_windows`` × ``probe_ctx`` tokens (the first calibration windows, cut; with
    ``held_out`` the first held-out windows, text outside every calibration window, so GPTQ's
    candidates are not scored on what they were fitted on) for the
    measured KL; ``fisher_windows`` × ``fisher_ctx`` for the Fisher estimate; the Hessians use
    every calibration window (``chunk_size`` windows per chunk); ``batch`` candidates share one
    run of a block. ``expert_units``: ``"projection"`` probes one projection of every expert of
    a block as one unit, ``"expert"`` each expert's linear alone."""

    probe_windows: int = 2
    probe_ctx: int = 192
    fisher_windows: int = 16
    fisher_ctx: int = 128
    batch: int = 4
    chunk_size: int = 8
    measure: bool = True
    fisher: bool = True
    blocks: tuple[int, ...] | None = None  # probe only these blocks (the table is then partial)
    expert_units: ExpertUnits = "projection"
    held_out: bool = False

    @property
    def held_out_windows(self) -> int:
        """Held-out windows to draw beside the calibration ones (the probe's, when held out)."""
        return self.probe_windows if self.held_out else 0

    def __post_init__(self) -> None:
        for name in ("probe_windows", "probe_ctx", "fisher_windows", "fisher_ctx", "batch"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"sensitivity {name} must be at least 1, got {getattr(self, name)}"
                )
        if self.probe_ctx < 2 or self.fisher_ctx < 2:
            raise ConfigError("probe and Fisher windows need at least 2 tokens")
        if self.held_out and not self.measure:
            raise ConfigError(
                "held-out probe windows with --proxies-only: no KL is measured on them; drop "
                "--probe-held-out or --proxies-only"
            )
        check_expert_units(self.expert_units)


BlockDone = Callable[[int, list[Entry]], None]
Progress = Callable[[int, int], None]


def measure(
    handle: ModelHandle,
    menu: tuple[LayerSpec, ...],
    calib: torch.Tensor,
    cfg: ProbeConfig = ProbeConfig(),
    *,
    runtime: Runtime,
    done: dict[tuple[str, int], Entry] | None = None,
    on_block: BlockDone | None = None,
    progress: Progress | None = None,
    bos: BosChoice = NO_BOS,
    held_out: torch.Tensor | None = None,
) -> SensitivityTable:
    """The sensitivity table of ``handle`` for ``menu`` on calibration windows ``calib`` (n, ctx),
    cut with the BOS choice ``bos``, run on ``runtime`` one block at a time (see the module's
    docstring).

    ``done`` holds entries of an interrupted run: their layers are not probed again.
    ``on_block(i, entries)`` is called after each block, the last block first (to checkpoint);
    ``progress(blocks done, blocks)``. ``held_out``: the windows a ``cfg.held_out`` probe is
    cut from."""
    check_menu(menu)
    shape = (cfg.probe_windows, cfg.probe_ctx)
    probe_ids = probe_source(calib, held_out, cfg.held_out, shape, "probe")
    t_start = time.perf_counter()
    lazy = handle.lazy(runtime)
    infos = layer_infos(lazy.model, handle.arch, cfg.expert_units)
    entries: dict[tuple[str, int], Entry] = dict(done or {})
    todo: dict[int, list[LayerInfo]] = {}
    for x in infos:
        if _wanted(x, menu, entries, cfg):
            todo.setdefault(x.block, []).append(x)
    run = _Run(handle, lazy, menu, calib, probe_ids, cfg, bos)
    if todo:
        run.prepare(sorted(todo), max(len(x) for x in todo.values()))
    n_blocks = len(lazy)
    lowest = max(min(cfg.blocks, default=0), 0) if cfg.blocks is not None else 0
    for i in range(n_blocks - 1, lowest - 1, -1):
        new = run.block(i, todo.get(i)) if i in todo or run.passes(i) else []
        entries.update({(e.layer, e.spec): e for e in new})
        if on_block:
            on_block(i, new)
        if progress:
            progress(n_blocks - i, n_blocks)
    run.timings["block_loads"] = float(run.store.loads)
    run.timings["total_s"] = time.perf_counter() - t_start
    return _table(handle, menu, infos, entries, n_blocks, cfg, calib, run.timings)


def _wanted(info: LayerInfo, menu: tuple[LayerSpec, ...], entries: dict, cfg: ProbeConfig) -> bool:
    if cfg.blocks is not None and info.block not in cfg.blocks:
        return False
    return any((info.name, s) not in entries for s in range(len(menu)))


@dataclass
class _Run:
    """The state of one sensitivity run between the sweep and the probes."""

    handle: ModelHandle
    lazy: LazyModel
    menu: tuple[LayerSpec, ...]
    calib: torch.Tensor
    probe_ids: torch.Tensor
    cfg: ProbeConfig
    bos: BosChoice
    timings: dict[str, float] = field(default_factory=dict)
    recorded: Recorded | None = None
    fisher: BlockwiseFisher | None = None
    kl: KLProbe | None = None

    def __post_init__(self) -> None:
        self.store = CountingStore(self.lazy)

    def passes(self, i: int) -> bool:
        """Whether the Fisher backward still has to go through block ``i``."""
        return self.fisher is not None and i >= self.fisher.lowest

    def prepare(self, todo: list[int], units: int) -> None:
        """The reference, the sweep and the Fisher's tail, for the blocks ``todo`` (at most
        ``units`` units to probe in one block)."""
        cfg, calib, runtime = self.cfg, self.calib, self.lazy.runtime
        probe_ids = self.probe_ids
        fisher_ids = calib[: cfg.fisher_windows, : cfg.fisher_ctx]
        per_block = max(units * len(self.menu), 1)
        home, stored = plan_memory(
            self.lazy,
            {"calibration": calib, "probe": probe_ids, "fisher": fisher_ids},
            {
                "calibration": len(todo),
                "probe": len(todo) + (per_block if cfg.measure else 0),
                "fisher": (len(self.lazy) - todo[0] + 1) if cfg.fisher else 0,
            },
            cfg.chunk_size,
        )
        self.timings["stored_bytes"] = float(sum(stored.values()))
        if cfg.measure:
            t0 = time.perf_counter()
            reference, _ = reference_windows(self.handle, probe_ids, runtime, self.bos)
            self.kl = KLProbe(self.lazy, self.store, probe_ids, reference, cfg.batch, home)
            self.timings["reference_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        streams = Streams(
            capture(self.lazy, calib, cfg.chunk_size, home),
            capture(self.lazy, probe_ids, cfg.probe_windows, home) if cfg.measure else None,
            capture(self.lazy, fisher_ids, 1, home) if cfg.fisher else None,
        )
        self.recorded = record_inputs(self.store, streams, todo)
        self.timings["sweep_s"] = time.perf_counter() - t0
        if cfg.fisher:
            t0 = time.perf_counter()
            rec = self.recorded
            assert rec.fisher_out is not None
            self.fisher = BlockwiseFisher(
                self.lazy, rec.fisher, rec.fisher_out, fisher_ids, todo[0]
            )
            self.timings["fisher_s"] = time.perf_counter() - t0

    def block(self, i: int, infos: list[LayerInfo] | None) -> list[Entry]:
        """Block ``i``'s Fisher backward step and, for ``infos`` (its units to probe), every
        candidate's entry."""
        block = self.store.load(i)
        try:
            fisher = self._fisher_step(i, block)
            rows, outputs = self._candidates(i, block, infos or [], fisher)
            del fisher
        finally:
            self.store.release(i)
        if self.kl is not None and rows:
            t0 = time.perf_counter()
            kls = self.kl.kls(i, outputs)
            share = (time.perf_counter() - t0) / len(rows)
            for row, kl in zip(rows, kls, strict=True):
                row.kl, row.seconds = kl, row.seconds + share
            self.timings["probe_s"] = self.timings.get("probe_s", 0.0) + share * len(rows)
        return [row.entry() for row in rows]

    def _fisher_step(self, i: int, block: nn.Module) -> dict[str, torch.Tensor] | None:
        if not self.passes(i):
            return None
        assert self.fisher is not None
        t0 = time.perf_counter()
        fisher = self.fisher.step(i, block, self.handle.arch.block(i).linear_names)
        self.timings["fisher_s"] = self.timings.get("fisher_s", 0.0) + time.perf_counter() - t0
        return fisher

    def _candidates(
        self,
        i: int,
        block: nn.Module,
        infos: list[LayerInfo],
        fisher: dict[str, torch.Tensor] | None,
    ) -> tuple[list[Row], list[torch.Tensor]]:
        """Every candidate of ``infos`` (units of block ``i``): its row, and its block output
        on the probe windows when the KL is measured."""
        if not infos:
            return [], []
        assert self.recorded is not None
        arch = self.handle.arch
        t0 = time.perf_counter()
        hessians = block_hessians(
            block,
            self.recorded.calibration.pop(i),
            arch.block(i).sequential_groups,
            self.lazy.runtime.device,
        )
        self.timings["hessian_s"] = self.timings.get("hessian_s", 0.0) + time.perf_counter() - t0
        probe_in = self.recorded.probe.pop(i, None)
        rows: list[Row] = []
        outputs: list[torch.Tensor] = []
        factors: dict[int, dict[tuple[object, ...], object]] = {}  # per shared H: GPTQ factors
        n, batch = len(self.menu), self.cfg.batch
        for info in infos:
            members = relative_members(info, arch.blocks_path)
            F = None if fisher is None else {m: fisher[m] for m in members}
            for start in range(0, n, batch):
                specs = range(start, min(start + batch, n))
                unit = Unit(info, members, block, hessians, F, factors)
                part, weights = unit.quantize(self.menu, specs)
                if self.kl is not None:
                    assert probe_in is not None
                    outputs += self._block_outputs(block, part, weights, probe_in)
                rows += part
        return rows, outputs

    def _block_outputs(
        self,
        block: nn.Module,
        rows: list[Row],
        weights: dict[str, list[torch.Tensor]],
        probe_in: Activations,
    ) -> list[torch.Tensor]:
        """The block outputs of ``rows`` (one unit, at most ``batch`` specs)."""
        assert self.kl is not None
        t0 = time.perf_counter()
        outputs = self.kl.block_outputs(rows[0].info.block, block, weights, probe_in)
        share = (time.perf_counter() - t0) / len(rows)
        for row in rows:
            row.seconds += share
        return outputs


def _table(
    handle: ModelHandle,
    menu: tuple[LayerSpec, ...],
    infos: tuple[LayerInfo, ...],
    entries: dict[tuple[str, int], Entry],
    n_blocks: int,
    cfg: ProbeConfig,
    calib: torch.Tensor,
    timings: dict[str, float],
) -> SensitivityTable:
    arch = handle.arch
    fused = unit_groups(
        (
            tuple(f"{arch.blocks_path}.{i}.{m}" for m in group)
            for i in range(n_blocks)
            for group in arch.block(i).fused_groups
        ),
        infos,
    )
    value_and_down = unit_modules(
        (m for b in arch.blocks for m in b.value_and_down), infos, arch.blocks_path
    )
    probe: dict[str, object] = {
        "calibration_windows": int(calib.shape[0]),
        "calibration_ctx": int(calib.shape[1]),
        "probe_windows": cfg.probe_windows if cfg.measure else 0,
        "probe_ctx": cfg.probe_ctx,
        "probe_held_out": cfg.held_out,
        "fisher_windows": cfg.fisher_windows if cfg.fisher else 0,
        "fisher_ctx": cfg.fisher_ctx,
    }
    if any(b.experts for b in arch.blocks):
        probe["expert_units"] = cfg.expert_units
    return SensitivityTable(
        model={"source": handle.source, "fingerprint": handle.fingerprint},
        menu=menu,
        layers=infos,
        entries=entries,
        fused=fused,
        value_and_down=value_and_down,
        n_blocks=n_blocks,
        other_bytes=_other_bytes(handle, infos),
        probe=probe,
        timings=timings,
    )


def _other_bytes(handle: ModelHandle, infos: tuple[LayerInfo, ...]) -> int:
    """Stored bytes of every tensor that is not one of the table's linear weights."""
    from lowbit.models.footprint import stored_bits

    linear = {f"{m}.weight" for x in infos for m in x.member_names}
    return (sum(bits for key, _, bits in stored_bits(handle) if key not in linear) + 7) // 8
