"""The one block runner: every stage that runs a decoder block over many windows runs here.

A model is run one decoder block at a time over all its windows (:func:`for_each_block`): the
block is materialized on the device, a *stage* (a callback) runs it over every chunk of
windows with the hooks it needs, possibly changing the block's weights between groups of
linears, and the outputs become the next block's inputs; then the block is released. The
stages are calibration statistics, quantization (:func:`run_staged`, :func:`run_recompute`,
:func:`run_two_pass`), AWQ/SmoothQuant statistics and activation ranges
(:func:`forward_chunks` with hooks and an early stop), sensitivity probes and layer-wise
evaluation.

Activations between blocks (:class:`Activations`) live on the device, or in CPU memory and move
to the device one chunk at a time (the runtime's offload policy). Keyword arguments of the
blocks (rotary embeddings, masks, positions) stay on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from greenlet import greenlet
from torch import nn

from lowbit.errors import LowbitError
from lowbit.runtime.memory import trim

Group = Sequence[tuple[str, nn.Module]]
Observe = Callable[[int, torch.Tensor], None]  # (group index, its input (..., in))
OnGroup = Callable[[int], None]
Progress = Callable[[int, int], None]


@dataclass
class Chunk:
    """One chunk of windows: the hidden states entering a block and the block's keyword
    arguments (on the compute device); ``per_block[i]``: block i's keyword arguments where
    they differ by block (Gemma's sliding-window and global layers get different masks and
    rotary embeddings)."""

    hidden: torch.Tensor
    kwargs: dict[str, Any]
    per_block: tuple[dict[str, Any], ...] = ()


@dataclass
class Activations:
    """The hidden states of every chunk at one point of the model; ``home`` is where they are
    kept between blocks (the compute device, or the CPU when offloaded)."""

    chunks: list[Chunk]
    device: torch.device  # the compute device
    home: torch.device
    block_returns_tuple: bool = False  # what the blocks that made these returned

    @property
    def nbytes(self) -> int:
        return sum(c.hidden.numel() * c.hidden.element_size() for c in self.chunks)

    @property
    def tokens(self) -> int:
        return sum(c.hidden.shape[0] * c.hidden.shape[1] for c in self.chunks)

    def on_device(self, i: int) -> torch.Tensor:
        return self.chunks[i].hidden.to(self.device, non_blocking=True)

    def replaced(self, outputs: list[Any]) -> Activations:
        """The same chunks with the hidden states of a block's ``outputs`` (moved to ``home``)."""
        chunks = [
            Chunk(hidden_of(out).to(self.home, non_blocking=True), c.kwargs, c.per_block)
            for out, c in zip(outputs, self.chunks, strict=True)
        ]
        as_tuple = isinstance(outputs[0], tuple) if outputs else self.block_returns_tuple
        return Activations(chunks, self.device, self.home, as_tuple)

    def at_block(self, i: int) -> Activations:
        """These activations, their chunks set to block ``i``'s keyword arguments (in place:
        a stage that consumes its inputs frees them)."""
        for c in self.chunks:
            if c.per_block:
                c.kwargs = c.per_block[i]
        return self

    def single(self, i: int) -> Activations:
        """Chunk ``i`` alone."""
        return Activations([self.chunks[i]], self.device, self.home, self.block_returns_tuple)


class BlockStore(Protocol):
    """Decoder blocks that can be materialized one at a time (on the runtime's device)."""

    def __len__(self) -> int: ...
    def load(self, i: int) -> nn.Module: ...
    def release(self, i: int) -> None: ...


Stage = Callable[[int, nn.Module, Activations], Activations]


def for_each_block(
    store: BlockStore, acts: Activations, stage: Stage, progress: Progress | None = None
) -> Activations:
    """Run ``stage(i, block, inputs) -> outputs`` on every block in order, one block
    materialized at a time; returns the last block's outputs."""
    n = len(store)
    for i in range(n):
        block = store.load(i)
        try:
            acts = stage(i, block, acts.at_block(i))
        finally:
            store.release(i)
            trim()
        if progress:
            progress(i + 1, n)
    return acts


class _Stop(Exception):
    pass


def hidden_of(output: Any) -> torch.Tensor:
    """A block's hidden-state output (blocks return a tensor or a tuple starting with it)."""
    return output[0] if isinstance(output, tuple) else output


def forward_chunks(
    block: nn.Module,
    acts: Activations,
    hooks: Sequence[tuple[nn.Module, Callable[..., Any]]] = (),
    *,
    until: Callable[[], bool] | None = None,
) -> Activations | None:
    """Run ``block`` on every chunk with forward pre-hooks ``(module, hook)`` attached.

    With ``until`` (checked after each hook call), a chunk's forward stops as soon as it
    returns True and nothing is returned; otherwise the outputs, kept like the inputs."""
    stopping = [_stopping(h, until) for _, h in hooks] if until else [h for _, h in hooks]
    handles = [m.register_forward_pre_hook(h) for (m, _), h in zip(hooks, stopping, strict=True)]
    outputs = []
    try:
        with torch.inference_mode():
            for i, chunk in enumerate(acts.chunks):
                try:
                    out = block(acts.on_device(i), **chunk.kwargs)
                except _Stop:
                    continue
                if until is None:
                    outputs.append(out)
    finally:
        for handle in handles:
            handle.remove()
    return None if until is not None else acts.replaced(outputs)


def _stopping(hook: Callable[..., Any], until: Callable[[], bool]) -> Callable[..., Any]:
    def wrapped(module: nn.Module, args: tuple) -> Any:
        result = hook(module, args)
        if until():
            raise _Stop
        return result

    return wrapped


def group_inputs_hook(g: int, observe: Observe, seen: set[int]) -> Callable[..., None]:
    """A pre-hook for the members of group ``g``: the first call per chunk feeds
    ``observe(g, x)`` (members of a group read the same input)."""

    def hook(module: nn.Module, args: tuple) -> None:
        if g not in seen:
            seen.add(g)
            observe(g, args[0])

    return hook


def run_two_pass(
    block: nn.Module,
    acts: Activations,
    groups: Sequence[Group],
    observe: Observe,
    on_group: OnGroup,
) -> Activations:
    """Statistics of every group from the block as it is (stopping once the last group has
    been seen), ``on_group`` for each group, then the outputs with the new weights. Holds only
    the block inputs (the lowest-memory mode; later groups do not see earlier groups' new
    weights within the block)."""
    seen: set[int] = set()
    hooks = [
        (module, group_inputs_hook(g, observe, seen))
        for g, group in enumerate(groups)
        for _, module in group
    ]
    for i in range(len(acts.chunks)):
        seen.clear()
        one = acts.single(i)
        forward_chunks(block, one, hooks, until=lambda: len(seen) == len(groups))
        _check_all_seen(seen, groups)
    for g in range(len(groups)):
        on_group(g)
    out = forward_chunks(block, acts)
    assert out is not None
    return out


def run_recompute(
    block: nn.Module,
    acts: Activations,
    groups: Sequence[Group],
    observe: Observe,
    on_group: OnGroup,
) -> Activations:
    """True-sequential with bounded memory: for each group, every chunk runs the block (with
    the earlier groups' new weights) up to that group, feeding its statistics, then
    ``on_group``; a last pass computes the outputs. Only one chunk is in flight at a time; the
    block runs about (groups + 1) / 2 + 1 times instead of once (:func:`run_staged`)."""
    for g, group in enumerate(groups):
        seen: set[int] = set()
        hooks = [(m, group_inputs_hook(g, observe, seen)) for _, m in group]
        for i in range(len(acts.chunks)):
            seen.clear()
            one = acts.single(i)
            forward_chunks(block, one, hooks, until=seen.__len__)
            if not seen:
                raise LowbitError(
                    f"the block never called {group[0][0]}: the architecture spec's "
                    "sequential groups do not match this model's forward"
                )
        on_group(g)
    out = forward_chunks(block, acts)
    assert out is not None
    return out


def _check_all_seen(seen: set[int], groups: Sequence[Group]) -> None:
    if len(seen) != len(groups):
        missing = [groups[g][0][0] for g in range(len(groups)) if g not in seen]
        raise LowbitError(
            f"the block never called {', '.join(missing)}: the architecture spec's sequential "
            "groups do not match this model's forward"
        )


@dataclass
class _Paused:
    """One chunk's coroutine and where it has paused."""

    task: greenlet
    stage: int = -1
    group_input_ptr: int = 0
    result: Any = None


def run_staged(
    block: nn.Module,
    acts: Activations,
    groups: Sequence[Group],
    observe: Observe,
    on_group: OnGroup,
) -> Activations:
    """True-sequential in one pass: each chunk's forward runs in its own greenlet (a coroutine
    on this thread) and pauses at the first linear of each group; when every chunk has paused
    there, ``on_group(g)`` runs (it may change the group's weights) and the chunks go on. The
    block is computed once, in the usual order; every chunk's in-flight activations are held
    at once (:func:`run_recompute` bounds them). The inputs are consumed."""
    main = greenlet.getcurrent()
    paused: dict[greenlet, _Paused] = {}
    for i in range(len(acts.chunks)):
        task = greenlet(_make_call(block, acts, i), parent=main)
        paused[task] = _Paused(task)
    handles = [
        module.register_forward_pre_hook(_pause_hook(g, name, observe, paused, main))
        for g, group in enumerate(groups)
        for name, module in group
    ]
    try:
        with torch.inference_mode():
            for g in range(len(groups)):
                for chunk in paused.values():
                    chunk.result = chunk.task.switch()
                    if chunk.task.dead or chunk.stage != g:
                        raise LowbitError(
                            f"the block never called {groups[g][0][0]}: the architecture spec's "
                            "sequential groups do not match this model's forward"
                        )
                on_group(g)
            for chunk in paused.values():
                chunk.result = chunk.task.switch()
                if not chunk.task.dead:
                    raise LowbitError("a block called a linear layer twice; check the spec")
        return acts.replaced([chunk.result for chunk in paused.values()])
    finally:
        for handle in handles:
            handle.remove()
        for chunk in paused.values():
            if chunk.task and not chunk.task.dead:
                chunk.task.throw()  # GreenletExit: unwinds the paused forward


def _make_call(block: nn.Module, acts: Activations, i: int) -> Callable[[], Any]:
    def call() -> Any:
        chunk = acts.chunks[i]
        hidden = acts.on_device(i)
        chunk.hidden = hidden.new_empty(0)  # the running chunk owns its input from here on
        return block(hidden, **chunk.kwargs)

    return call


def _pause_hook(
    g: int, name: str, observe: Observe, paused: dict[greenlet, _Paused], main: greenlet
) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple) -> None:
        chunk = paused[greenlet.getcurrent()]
        x = args[0]
        if chunk.stage == g:
            if x.data_ptr() != chunk.group_input_ptr:
                raise LowbitError(f"{name} does not share its group's input; fix the arch spec")
            return
        if chunk.stage != g - 1:
            raise LowbitError(f"{name} was called out of the spec's order (group {g})")
        observe(g, x)
        chunk.stage = g
        chunk.group_input_ptr = x.data_ptr()
        main.switch()  # pause until every chunk has reached this group and it is quantized

    return hook
