"""The two ends of a model run block by block: what enters the first block, and the logits
that come out of the last one.

:func:`capture` runs the model's own forward on each chunk of token ids with only the modules
outside the blocks materialized, and stops it at the first block, recording that block's
hidden states and keyword arguments (rotary embeddings, mask, positions: exactly what the
model passes). :func:`chunk_logits` runs the model's own forward again with its block list
replaced by one module that replays the last block's stored outputs, so the final norm, any
output projection and the head are the model's own code. Both are exactly what the whole
model computes, chunk for chunk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from lowbit.errors import ModelSourceError
from lowbit.models.lazy import LazyModel, block_list
from lowbit.runtime.runner import Activations, Chunk


class _StopForward(Exception):
    pass


class _Recorder(nn.Module):
    """Stands in for block ``i`` while the inputs are captured: records the hidden states
    (block 0) and the keyword arguments the model passes to the block, and runs nothing.
    Attributes the model's loop reads from its blocks (e.g. ``attention_type``) are the
    block's."""

    def __init__(self, i: int, block: nn.Module, seen: list[tuple[Any, dict[str, Any]]]) -> None:
        super().__init__()
        self.i, self.last = i, False
        self.__dict__["_block"], self.__dict__["_seen"] = block, seen

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_block"], name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        self.__dict__["_seen"].append((hidden, rest))
        if self.last:
            raise _StopForward
        return hidden


def capture(lazy: LazyModel, ids: torch.Tensor, chunk_size: int, home: torch.device) -> Activations:
    """Inputs of the first block for each chunk of ``ids`` (n, ctx), with every block's
    keyword arguments; hidden states are kept on ``home``, keyword arguments on the compute
    device."""
    device = lazy.runtime.device
    chunks: list[Chunk] = []
    parent_path, attr = lazy.arch.blocks_path.rsplit(".", 1)
    parent = lazy.model.get_submodule(parent_path)
    blocks = block_list(lazy.model, lazy.arch.blocks_path)
    seen: list[tuple[Any, dict[str, Any]]] = []
    recorders = nn.ModuleList(_Recorder(i, b, seen) for i, b in enumerate(blocks))
    recorders[-1].last = True
    paths = lazy.materialize_outside(head=False)
    setattr(parent, attr, recorders)
    try:
        with torch.inference_mode():
            for part in torch.split(ids, chunk_size):
                seen.clear()
                try:
                    lazy.model(input_ids=part.to(device), use_cache=False)
                except _StopForward:
                    pass
                except (ValueError, TypeError, RuntimeError, IndexError) as exc:
                    raise ModelSourceError(
                        f"{lazy.where}: its decoder loop cannot be run one block at a time "
                        f"({type(exc).__name__}: {exc}); a block whose inputs come from the "
                        "previous block's extra outputs is not supported yet"
                    ) from exc
                if len(seen) != len(blocks):
                    raise ModelSourceError(
                        f"{lazy.where}: the model called {len(seen)} of its {len(blocks)} "
                        "decoder blocks; it cannot be run one block at a time"
                    )
                per_block = _shared(kw for _, kw in seen)
                chunks.append(Chunk(seen[0][0].to(home), per_block[0], per_block))
    finally:
        setattr(parent, attr, blocks)
        lazy.release_outside(paths)
    return Activations(chunks, device, home)


def _shared(kwargs: Iterator[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """The blocks' keyword arguments, one dict object for blocks whose arguments are the same
    objects (most models: every block)."""
    out: list[dict[str, Any]] = []
    for kw in kwargs:
        prev = out[-1] if out else None
        same = prev is not None and prev.keys() == kw.keys() and all(prev[k] is kw[k] for k in kw)
        out.append(prev if same and prev is not None else kw)
    return tuple(out)


class _Replay(nn.Module):
    """Stands in for the whole block list: returns the stored output of the last block."""

    def __init__(self, as_tuple: bool) -> None:
        super().__init__()
        self.output: torch.Tensor | None = None
        self.as_tuple = as_tuple

    def forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        assert self.output is not None
        return (self.output,) if self.as_tuple else self.output


@contextlib.contextmanager
def replayed_head(lazy: LazyModel, as_tuple: bool) -> Iterator[Callable[..., Any]]:
    """The model's own forward from stored last-block outputs: yields ``run(hidden, ids,
    **kwargs)``, the model's output for windows ``ids`` (w, ctx) whose last block returned
    ``hidden`` (w, ctx, hidden) (``as_tuple``: the blocks return tuples); extra keyword
    arguments go to the model (e.g. ``labels``). The modules outside the blocks are
    materialized meanwhile. The caller chooses the grad mode: inference for logits, autograd
    for the gradient of a loss with respect to ``hidden``."""
    parent_path, attr = lazy.arch.blocks_path.rsplit(".", 1)
    parent = lazy.model.get_submodule(parent_path)
    blocks = getattr(parent, attr)
    replay = _Replay(as_tuple)
    paths = lazy.materialize_outside(head=True)
    setattr(parent, attr, nn.ModuleList([replay]))

    def run(hidden: torch.Tensor, ids: torch.Tensor, **kwargs: Any) -> Any:
        replay.output = hidden
        try:
            return lazy.model(input_ids=ids.to(hidden.device), use_cache=False, **kwargs)
        finally:
            replay.output = None

    try:
        yield run
    finally:
        setattr(parent, attr, blocks)
        lazy.release_outside(paths)


def chunk_logits(
    lazy: LazyModel, acts: Activations, ids: torch.Tensor, windows_per_call: int = 1
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first window index, logits (w, ctx, vocab)) for the windows of ``ids`` (n, ctx) whose
    last-block outputs are ``acts`` (chunks in the order of ``ids``), ``windows_per_call`` at a
    time; the modules outside the blocks are materialized meanwhile."""
    with replayed_head(lazy, acts.block_returns_tuple) as run, torch.inference_mode():
        start = 0
        for i in range(len(acts.chunks)):
            hidden = acts.on_device(i)
            for part in torch.split(hidden, windows_per_call):
                yield start, run(part, ids[start : start + part.shape[0]]).logits
                start += part.shape[0]
