"""The forward sweep of a sensitivity run: every block's inputs that the probes need, recorded
from the original model one block at a time, and the Hessians of a block from its inputs.

One :func:`~lowbit.runtime.runner.for_each_block` pass runs the original blocks, outputs
propagated unchanged, over three sets of windows at once: the calibration windows (their
inputs are kept for the blocks to probe: each block's Hessians are computed from them when the
block is probed), the probe windows (kept for the blocks to probe) and the Fisher windows (kept
for every block from the lowest one to probe; the last block's outputs feed the Fisher's tail).
The sweep stops at the last block whose inputs are needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from lowbit.algorithms import HessianAccumulator
from lowbit.errors import LowbitError
from lowbit.models.budget import block_needs, check_fits
from lowbit.models.experts import set_calibration
from lowbit.models.lazy import LazyModel, block_list
from lowbit.models.pipeline import ExpertCalibration
from lowbit.runtime.runner import (
    Activations,
    for_each_block,
    forward_chunks,
    group_inputs_hook,
)


class CountingStore:
    """The blocks of a :class:`LazyModel`, counting how many times one is materialized."""

    def __init__(self, lazy: LazyModel, n: int | None = None) -> None:
        self.lazy, self.loads = lazy, 0
        self.n = len(lazy) if n is None else n

    def __len__(self) -> int:
        return self.n

    def load(self, i: int) -> nn.Module:
        self.loads += 1
        return self.lazy.load(i)

    def release(self, i: int) -> None:
        self.lazy.release(i)

    def first(self, n: int) -> _First:
        """The first ``n`` blocks, counted here."""
        return _First(self, n)


class _First:
    def __init__(self, store: CountingStore, n: int) -> None:
        self.store, self.n = store, n

    def __len__(self) -> int:
        return self.n

    def load(self, i: int) -> nn.Module:
        return self.store.load(i)

    def release(self, i: int) -> None:
        self.store.release(i)


@dataclass
class Streams:
    """The inputs of the first block on each set of windows (None: not needed)."""

    calibration: Activations
    probe: Activations | None
    fisher: Activations | None


@dataclass
class Recorded:
    """Block inputs by block index, and the last block's outputs on the Fisher windows."""

    calibration: dict[int, Activations] = field(default_factory=dict)
    probe: dict[int, Activations] = field(default_factory=dict)
    fisher: dict[int, Activations] = field(default_factory=dict)
    fisher_out: Activations | None = None


def record_inputs(store: CountingStore, streams: Streams, todo: Sequence[int]) -> Recorded:
    """Run the original blocks over ``streams``, keeping the inputs of the blocks in ``todo``
    (calibration and probe windows) and of every block from ``min(todo)`` on (Fisher windows)."""
    rec = Recorded()
    wanted, lowest, last = set(todo), min(todo), max(todo)
    state = {"probe": streams.probe, "fisher": streams.fisher}

    def keep(i: int, calib: Activations) -> None:
        if i in wanted:
            rec.calibration[i] = calib
            if state["probe"] is not None:
                rec.probe[i] = state["probe"]
        if state["fisher"] is not None and i >= lowest:
            rec.fisher[i] = state["fisher"]

    def stage(i: int, block: nn.Module, calib: Activations) -> Activations:
        keep(i, calib)
        if state["fisher"] is not None:
            state["fisher"] = _forward(block, state["fisher"])
        if i >= last:
            return calib
        if state["probe"] is not None:
            state["probe"] = _forward(block, state["probe"])
        return _forward(block, calib)

    stop = len(store) if streams.fisher is not None else last
    calib = for_each_block(store.first(stop), streams.calibration, stage)
    if stop < len(store):
        keep(stop, calib)
    rec.fisher_out = state["fisher"]
    return rec


def _forward(block: nn.Module, acts: Activations) -> Activations:
    out = forward_chunks(block, acts)
    assert out is not None
    return out


def block_hessians(
    block: nn.Module, inputs: Activations, groups: Sequence[Sequence[str]], device: torch.device
) -> dict[str, torch.Tensor]:
    """The fp32 second moment (in, in) of each sequential group's input over every chunk of
    ``inputs`` (the block's inputs), keyed by member name; each chunk's forward stops once the
    last group has been seen. Experts are calibrated as quantization calibrates them (every
    token through every expert: :class:`~lowbit.models.pipeline.ExpertCalibration`)."""
    stats: dict[int, HessianAccumulator] = {}

    def observe(g: int, x: torch.Tensor) -> None:
        if g not in stats:
            stats[g] = HessianAccumulator(int(x.shape[-1]), device)
        stats[g].add_batch(x)

    seen: set[int] = set()
    hooks = [
        (block.get_submodule(group[0]), group_inputs_hook(g, observe, seen))
        for g, group in enumerate(groups)
    ]
    set_calibration(block, ExpertCalibration())
    try:
        for c in range(len(inputs.chunks)):
            seen.clear()
            forward_chunks(block, inputs.single(c), hooks, until=lambda: len(seen) == len(groups))
    finally:
        set_calibration(block, None)
    hessians = {}
    for g, group in enumerate(groups):
        if g not in stats:
            raise LowbitError(f"the block never called {group[0]}; its spec does not fit it")
        H = stats.pop(g).hessian()
        hessians.update({member: H for member in group})
    return hessians


def plan_memory(
    lazy: LazyModel,
    windows: dict[str, torch.Tensor],
    counts: dict[str, int],
    chunk_size: int,
) -> tuple[torch.device, dict[str, int]]:
    """Where the recorded activations live, and the bytes of each kind; refuses a memory
    budget below one block's needs (weights, statistics, solver, one chunk in flight, the
    block's Fisher accumulators). ``windows``: token ids (n, ctx) by kind; ``counts``: how
    many copies of each kind's hidden states are kept at once (blocks, candidates)."""
    runtime = lazy.runtime
    elt = torch.empty(0, dtype=runtime.dtype).element_size()
    hidden = int(lazy.model.config.hidden_size)
    stored = {
        kind: counts.get(kind, 0) * ids.numel() * hidden * elt for kind, ids in windows.items()
    }
    blocks = block_list(lazy.model, lazy.arch.blocks_path)
    n, ctx = windows["calibration"].shape
    needs = block_needs(blocks, runtime, min(chunk_size, n) * ctx, n * ctx)
    fisher = _linear_params(blocks[0]) * 4
    one_block = needs.one_block + fisher
    check_fits(
        one_block,
        runtime,
        f"the sensitivity of {lazy.where}",
        {"weights": needs.weights, "statistics": needs.statistics, "solver": needs.solver,
         "one chunk of activations": needs.chunk, "Fisher accumulators": fisher},
    )  # fmt: skip
    home = runtime.activations_device(sum(stored.values()), one_block)
    return home, stored


def _linear_params(block: nn.Module) -> int:
    return sum(m.weight.numel() for m in block.modules() if isinstance(m, nn.Linear))
