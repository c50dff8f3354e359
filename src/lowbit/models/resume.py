"""The quantization driver's side of a checkpoint (:mod:`lowbit.models.checkpoint`).

After each block, :func:`record_block` stores what the block added to the driver's result.
On resume, :func:`restore_block` puts a finished block's record back into the result (its
layers stay in their shard) and :func:`replay_block` runs the block with its stored weights
over the calibration windows: the next block's inputs are those the uninterrupted run gave
it (the quantized prefix, true-sequential), without quantizing anything again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from lowbit.models.checkpoint import BlockRecord, Checkpoint
from lowbit.models.experts import routed_counts
from lowbit.models.qstore import LayerLayout
from lowbit.models.smoothing import PairRecord, load_smoothed
from lowbit.runtime.runner import Activations, forward_chunks

if TYPE_CHECKING:
    from pathlib import Path

    from lowbit.models.lazy import LazyModel
    from lowbit.models.quantize import _Result


@dataclass
class Quant:
    """One run's layer specs, result, progress callback and checkpoint."""

    specs: dict[str, Any]  # layer name → LayerSpec, None: kept
    result: _Result
    progress: Callable[[int, int], None] | None
    checkpoint: Checkpoint | None

    def done(self, i: int) -> bool:
        """Whether block ``i`` was finished by an earlier run (then restored into the result)."""
        if self.checkpoint is None or i >= self.checkpoint.done:
            return False
        restore_block(self.checkpoint, i, self.result)
        return True


def mark(result: _Result) -> tuple[int, int]:
    """Where the result's lists stand before a block starts."""
    return len(result.reports), len(result.smoothing)


def record_block(
    ckpt: Checkpoint | None,
    i: int,
    prefix: str,
    result: _Result,
    since: tuple[int, int],
    shard: Path | None,
) -> None:
    """Checkpoint block ``i`` (its layers under ``prefix``, e.g. ``model.layers.3.``)."""
    if ckpt is None:
        return
    inside = lambda name: name.startswith(prefix)  # noqa: E731
    experts = {k: v for k, v in result.execution.get("experts", {}).items() if inside(k)}
    rec = BlockRecord(
        None,
        None,
        {n: lay.to_dict() for n, lay in result.layers.layouts.items() if inside(n)},
        [asdict(r) for r in result.reports[since[0] :]],
        [asdict(p) for p in result.smoothing[since[1] :]],
        experts=experts or None,
    )
    smoothed = {k: v for k, v in result.smoothed.items() if inside(k)}
    ckpt.record(i, shard, rec, smoothed)


def restore_block(ckpt: Checkpoint, i: int, result: _Result) -> None:
    """Put finished block ``i``'s record back into ``result``."""
    from lowbit.models.quantize import LayerReport

    rec = ckpt.blocks[i]
    if rec.shard is not None:
        layouts = {n: LayerLayout.from_dict(d) for n, d in rec.layouts.items()}
        result.layers.attach(layouts, ckpt.directory / rec.shard)
    for r in rec.reports:
        result.reports.append(LayerReport(**{**r, "shape": tuple(r["shape"])}))
    for p in rec.pairs:
        result.smoothing.append(PairRecord(**{**p, "linears": tuple(p["linears"])}))
    result.smoothed.update(ckpt.smoothed(i))
    if rec.experts:
        result.execution.setdefault("experts", {}).update(rec.experts)


def replay_block(
    lazy: LazyModel, i: int, block: nn.Module, inputs: Activations, result: _Result
) -> Activations:
    """Block ``i`` (restored) run on ``inputs`` with its smoothed tensors and stored weights,
    dequantized as the run that quantized it set them."""
    prefix = f"{lazy.arch.blocks_path}.{i}."
    load_smoothed(lazy.model, {k: v for k, v in result.smoothed.items() if k.startswith(prefix)})
    for name in [n for n in result.layers.layouts if n.startswith(prefix)]:
        module = block.get_submodule(name[len(prefix) :])
        W = module.weight.data
        module.weight.data = result.layers.dequantized(name, W.device, W.dtype)
    out = forward_chunks(block, inputs)
    assert out is not None
    for ep in lazy.arch.block(i).experts:
        routed_counts(block.get_submodule(ep), 0)  # drop the replay's routing record
    return out


def resume_info(ckpt: Checkpoint | None) -> dict[str, Any]:
    if ckpt is None or not (ckpt.done or ckpt.discarded):
        return {}
    return {"resumed": {"blocks_restored": ckpt.done, "blocks_discarded": ckpt.discarded}}
