"""Run one decoder block over many calibration chunks, pausing at each group of linears.

GPTQ needs the Hessian of a layer's inputs over *all* calibration windows before it can
quantize that layer, and the layers that come later in the block should see the quantized
earlier layers ("true sequential"). Instead of running the block once to collect statistics and
again to produce quantized outputs, each chunk's forward runs in its own greenlet (a coroutine
on the same thread) and pauses at the first linear of each group; when every chunk has paused
there, the group is quantized and the chunks go on. The block is computed exactly once, with
quantized weights, in the usual order, on one thread (so torch's own thread pool and the
allocator see one caller).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from greenlet import greenlet
from torch import nn

from lowbit.algorithms import HessianAccumulator
from lowbit.errors import LowbitError


@dataclass
class _Chunk:
    """One chunk's coroutine and where it has paused."""

    task: greenlet
    stage: int = -1
    group_input_ptr: int = 0
    result: Any = None


def run_block_staged(
    block: nn.Module,
    inputs: list[torch.Tensor],
    kwargs: Sequence[dict[str, Any]],
    groups: Sequence[Sequence[tuple[str, nn.Module]]],
    on_group: Callable[[int, HessianAccumulator], None],
) -> list[torch.Tensor]:
    """Run ``block`` on every chunk in ``inputs`` (consumed); call ``on_group(g, H)`` once all
    chunks reach group ``g``'s first linear, with the accumulated statistics of its inputs."""
    stats = [HessianAccumulator(_in_features(group[0][1])) for group in groups]
    chunks: dict[greenlet, _Chunk] = {}
    main = greenlet.getcurrent()
    for i in range(len(inputs)):
        task = greenlet(_make_call(block, inputs, i, kwargs[i]), parent=main)
        chunks[task] = _Chunk(task)
    handles = [
        module.register_forward_pre_hook(_make_hook(g, name, stats[g], chunks, main))
        for g, group in enumerate(groups)
        for name, module in group
    ]
    try:
        with torch.inference_mode():
            for g in range(len(groups)):
                for chunk in chunks.values():
                    chunk.result = chunk.task.switch()
                    if chunk.task.dead or chunk.stage != g:
                        raise LowbitError(
                            f"the block never called {groups[g][0][0]}: the architecture spec's "
                            "sequential groups do not match this model's forward"
                        )
                on_group(g, stats[g])
            for chunk in chunks.values():
                chunk.result = chunk.task.switch()
                if not chunk.task.dead:
                    raise LowbitError("a block called a linear layer twice; check the spec")
        return [_hidden(chunk.result) for chunk in chunks.values()]
    finally:
        for handle in handles:
            handle.remove()
        for chunk in chunks.values():
            if chunk.task and not chunk.task.dead:
                chunk.task.throw()  # GreenletExit: unwinds the paused forward


def _make_call(block: nn.Module, inputs: list, i: int, kwargs: dict[str, Any]) -> Callable[[], Any]:
    def call() -> Any:
        hidden, inputs[i] = inputs[i], None  # the chunk owns its input from here on
        return block(hidden, **kwargs)

    return call


def _make_hook(
    g: int, name: str, stat: HessianAccumulator, chunks: dict[greenlet, _Chunk], main: greenlet
) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple) -> None:
        chunk = chunks[greenlet.getcurrent()]
        x = args[0]
        if chunk.stage == g:
            if x.data_ptr() != chunk.group_input_ptr:
                raise LowbitError(f"{name} does not share its group's input; fix the arch spec")
            return
        if chunk.stage != g - 1:
            raise LowbitError(f"{name} was called out of the spec's order (group {g})")
        stat.add_batch(x)
        chunk.stage = g
        chunk.group_input_ptr = x.data_ptr()
        main.switch()  # pause until every chunk has reached this group and it is quantized

    return hook


def _in_features(module: nn.Module) -> int:
    return int(module.weight.shape[1])


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


class _StopForward(Exception):
    pass


def run_block_two_pass(
    block: nn.Module,
    inputs: list[torch.Tensor],
    kwargs: Sequence[dict[str, Any]],
    groups: Sequence[Sequence[tuple[str, nn.Module]]],
    on_group: Callable[[int, HessianAccumulator], None],
) -> list[torch.Tensor]:
    """The low-memory alternative: one pass collects every group's statistics with the block's
    original weights (stopping before the last group computes), ``on_group`` quantizes each
    group, and a second pass computes the outputs with the quantized weights. Only the chunk
    inputs are held, replaced by the outputs in place."""
    stats = [HessianAccumulator(_in_features(group[0][1])) for group in groups]
    seen: set[int] = set()

    def make_hook(g: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            if g in seen:
                return
            seen.add(g)
            stats[g].add_batch(args[0])
            if g == len(groups) - 1:
                raise _StopForward

        return hook

    handles = [
        module.register_forward_pre_hook(make_hook(g))
        for g, group in enumerate(groups)
        for _, module in group
    ]
    try:
        with torch.inference_mode():
            for i, hidden in enumerate(inputs):
                seen.clear()
                try:
                    block(hidden, **kwargs[i])
                except _StopForward:
                    pass
                if len(seen) != len(groups):
                    raise LowbitError("the block did not call every group of the spec")
    finally:
        for handle in handles:
            handle.remove()
    for g in range(len(groups)):
        on_group(g, stats[g])
    with torch.inference_mode():
        for i in range(len(inputs)):
            inputs[i] = _hidden(block(inputs[i], **kwargs[i]))
    return inputs
