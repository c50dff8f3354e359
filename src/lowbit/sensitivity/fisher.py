"""The diagonal empirical Fisher of every block linear, by a block-wise backward with
recomputation: no layer's gradient is held beside another block's.

Per Fisher window w (batch 1, T tokens predicted), g_w is the gradient of the window's mean
token negative log-likelihood; the Fisher of a weight is T · E_w[g_w²] (the per-token Fisher).
The whole-model autograd computes every g_w in one backward; here it is computed block by block:

- *forward* (the sensitivity sweep): each block's input on every Fisher window is recorded;
- *tail* (:func:`tail_gradients`): the gradient of the window's loss with respect to the last
  block's output, through the model's own final norm and head (the modules outside the blocks
  materialized, the blocks replaced by the stored outputs);
- *backward* (:meth:`BlockwiseFisher.step`, blocks N−1 down to the lowest one probed): the block
  is materialized, its forward recomputed per window from the stored input with autograd on the
  block's linear weights and the input, ``autograd.grad(out, [input, *weights], g_w)`` gives
  the weights' gradients (squared into fp32 accumulators on the device) and the input's, which
  is passed down as the next block's g_w.

The arithmetic is the whole-model backward's, operation for operation. Memory: one block, one
window's activations with their autograd graph, the stored inputs (one hidden state per window
per block, released as the backward passes) and one gradient per window, and the Fisher
accumulators of one block (fp32, the size of the block's linear weights).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from lowbit.models.capture import capture, replayed_head
from lowbit.models.lazy import LazyModel
from lowbit.runtime.runner import Activations, for_each_block, forward_chunks, hidden_of


class BlockwiseFisher:
    """Per-block Fisher of a model's linears from recorded block inputs, block N−1 first.

    ``inputs``: the inputs of each block from ``lowest`` on, one window per chunk;
    ``outputs``: the last block's outputs on the same windows; ``ids`` (n, ctx) the windows."""

    def __init__(
        self,
        lazy: LazyModel,
        inputs: dict[int, Activations],
        outputs: Activations,
        ids: torch.Tensor,
        lowest: int,
    ) -> None:
        self.inputs, self.lowest = inputs, lowest
        self.next = len(lazy) - 1
        self.scale = (ids.shape[1] - 1) / ids.shape[0]
        self.grads = tail_gradients(lazy, outputs, ids)

    def step(self, i: int, block: nn.Module, members: Sequence[str]) -> dict[str, torch.Tensor]:
        """The Fisher (out, in) fp32 of each linear ``members`` of block ``i`` (materialized
        as ``block``); blocks must come in order N−1, N−2, …, ``lowest``."""
        if i != self.next or i < self.lowest:
            raise ValueError(f"the Fisher backward is at block {self.next}, not {i}")
        inputs = self.inputs.pop(i)
        fisher, self.grads = block_fisher(
            block, members, inputs, self.grads, pass_down=i > self.lowest
        )
        self.next -= 1
        return {name: acc.mul_(self.scale) for name, acc in fisher.items()}


def tail_gradients(lazy: LazyModel, outputs: Activations, ids: torch.Tensor) -> list[torch.Tensor]:
    """Per window (chunk) of ``outputs`` (the last block's outputs, one window per chunk),
    the gradient (1, ctx, hidden) of the window's mean token NLL (the model's own loss on
    ``ids``) with respect to that output, kept where ``outputs`` are."""
    grads = []
    with replayed_head(lazy, outputs.block_returns_tuple) as run, torch.enable_grad():
        for c in range(len(outputs.chunks)):
            h = outputs.on_device(c).clone().requires_grad_(True)
            x = ids[c : c + 1].to(h.device)
            (g,) = torch.autograd.grad(run(h, x, labels=x).loss, [h])
            grads.append(g.to(outputs.home))
    return grads


def block_fisher(
    block: nn.Module,
    members: Sequence[str],
    inputs: Activations,
    grads: list[torch.Tensor],
    *,
    pass_down: bool,
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """(Σ_w g_w² (out, in) fp32 for each linear of ``members``, the gradients with respect to
    the block's input per window: empty unless ``pass_down``), from the block's ``inputs``
    (one window per chunk) and ``grads``, the gradients with respect to its output."""
    weights = [block.get_submodule(m).weight for m in members]
    acc = [torch.zeros(w.shape, dtype=torch.float32, device=w.device) for w in weights]
    below = []
    with _grad_only(block, weights), torch.enable_grad():
        for c, chunk in enumerate(inputs.chunks):
            x = inputs.on_device(c).clone().requires_grad_(pass_down)
            out = hidden_of(block(x, **_normal(chunk.kwargs)))
            wrt = [x, *weights] if pass_down else weights
            # an expert no token of this window is routed to has no gradient: it adds 0
            got = torch.autograd.grad(
                out, wrt, grad_outputs=grads[c].to(out.device), allow_unused=True
            )
            if pass_down:
                assert got[0] is not None
                below.append(got[0].to(inputs.home))
                got = got[1:]
            for a, g in zip(acc, got, strict=True):
                if g is not None:
                    a.add_(g.float().pow(2))
    return dict(zip(members, acc, strict=True)), below


@contextlib.contextmanager
def _grad_only(module: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Only ``params`` of ``module`` require grad meanwhile."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _normal(value: Any) -> Any:
    """``value`` with its inference-mode tensors (recorded by the sweep) cloned into normal
    ones, which autograd may save."""
    if isinstance(value, torch.Tensor):
        return value.clone() if value.is_inference() else value
    if isinstance(value, tuple | list):
        return type(value)(_normal(v) for v in value)
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    return value


def model_fisher(
    lazy: LazyModel, ids: torch.Tensor, home: torch.device
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """(block index, the Fisher (out, in) fp32 of each of its linears) for every block of
    ``lazy``, the last block first, on the windows ``ids`` (n, ctx): the forward, the tail and
    the backward alone, one block materialized at a time (stored activations on ``home``)."""
    inputs: dict[int, Activations] = {}

    def record(i: int, block: nn.Module, acts: Activations) -> Activations:
        inputs[i] = acts
        out = forward_chunks(block, acts)
        assert out is not None
        return out

    outputs = for_each_block(lazy, capture(lazy, ids, 1, home), record)
    fisher = BlockwiseFisher(lazy, inputs, outputs, ids, 0)
    for i in range(len(lazy) - 1, -1, -1):
        block = lazy.load(i)
        try:
            yield i, fisher.step(i, block, lazy.arch.block(i).linear_names)
        finally:
            lazy.release(i)
