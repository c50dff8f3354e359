"""Per-token log-probabilities of a model, computed layer-wise on the block runner.

Every window goes through block 0, then every window through block 1, and so on, one block
materialized at a time; then the final norm and head turn the last hidden states into
log-probabilities, one window at a time. Peak memory is one block, the hidden states of the
windows (on the device, or offloaded to CPU memory) and one window's logits, so a model larger
than RAM or GPU memory is evaluated exactly as one that fits: each window's computation is the
whole model's forward, operation for operation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from lowbit.errors import DataError
from lowbit.models.budget import check_fits
from lowbit.models.capture import capture, chunk_logits
from lowbit.models.lazy import LazyModel, block_list
from lowbit.models.views import ModelView
from lowbit.runtime import Runtime
from lowbit.runtime.runner import Activations, for_each_block, forward_chunks

Progress = Callable[[int, int], None]


def window_logprobs(
    view: ModelView,
    ids: torch.Tensor,
    runtime: Runtime,
    *,
    chunk_size: int = 4,
    progress: Progress | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(window index, log-probabilities (ctx−1, vocab) fp32 of tokens 1…ctx−1) for each window
    of ``ids`` (n, ctx), in order. ``progress(done, total)`` counts blocks, then windows."""
    lazy = view.lazy(runtime)
    home = _plan_memory(lazy, ids, chunk_size)
    acts = capture(lazy, ids, chunk_size, home)
    n_blocks = len(lazy)
    total = n_blocks + ids.shape[0]

    def block_progress(done: int, _: int) -> None:
        if progress:
            progress(done, total)

    acts = for_each_block(lazy, acts, _forward, block_progress)
    for w, logits in chunk_logits(lazy, acts, ids):
        if not bool(torch.isfinite(logits).all()):
            raise DataError(
                f"{view.name}: window {w} gives non-finite logits (NaN or Inf) although its "
                "stored weights are finite; run in float32 (--dtype float32)"
            )
        yield w, torch.log_softmax(logits[0, :-1].float(), dim=-1)
        if progress:
            progress(n_blocks + w + 1, total)


def _forward(i: int, block: torch.nn.Module, acts: Activations) -> Activations:
    out = forward_chunks(block, acts)
    assert out is not None
    return out


def _plan_memory(lazy: LazyModel, ids: torch.Tensor, chunk_size: int) -> torch.device:
    """Where the windows' hidden states live; refuses a budget below one block's needs."""
    runtime = lazy.runtime
    elt = torch.empty(0, dtype=runtime.dtype).element_size()
    n, ctx = ids.shape
    hidden = int(lazy.model.config.hidden_size)
    vocab = int(lazy.model.config.vocab_size)
    blocks = block_list(lazy.model, lazy.arch.blocks_path)
    weights = max(sum(p.numel() for p in b.parameters()) for b in blocks) * elt
    chunk = min(chunk_size, n) * ctx * hidden * elt * 8
    logits = ctx * vocab * 4 * 4  # logits, log-softmax and the scoring temporaries
    head = vocab * hidden * elt
    needs = max(weights + chunk, head + logits)
    check_fits(
        needs,
        runtime,
        f"evaluating {lazy.where}",
        {"block weights": weights, "one chunk": chunk, "head": head, "one window's logits": logits},
    )
    return runtime.activations_device(2 * n * ctx * hidden * elt, needs)
