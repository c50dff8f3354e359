"""The measured KL divergence of candidates (one layer of block i replaced by a quantized
weight) to the original model on the probe windows, run from stored block inputs.

The original model's log-probabilities on the probe windows come from the on-disk reference
cache (:mod:`lowbit.evaluation.refcache`, computed layer-wise once). For block i, each
candidate's block-i output is computed from the block's stored probe inputs, ``batch`` specs of
one unit at a time, each of the unit's linears replaced by a stacked linear (the batch's k-th
slice uses the k-th weight; an expert's routed rows are ordered by batch entry, and when the
unit is experts' linears the copies of the windows route alike: they differ after the router);
then all of block i's candidates go through blocks i+1 … N−1, each later block materialized
once (batches of up to ``batch`` candidates), and the model's own final norm and head turn the
last outputs into log-probabilities, scored against the cache per token.

Precision: a candidate's KL is the mean over every probe token of Σ_v p_v (log p_v − log q_v),
in float32 as the evaluation computes it (the same operations in the same order, formed in place
with p taken once per reference window: identical on a CPU, tested; 4.0–4.6× faster than the
evaluation's scorer, which also forms the NLL, top-1 agreement and Δp the probe does not use;
``bench/probe_scoring.py``). Against the KL taken in float64 from both models' logits, on the
built-in model: 1e-3 relative for an INT8 layer (1.6717e-5 against 1.6734e-5 nats), 4e-6 for
INT3, from the cache's encoding and each side's float32 normalisation (a floor of about 1e-7
nats on the tiny Llama, whose unchanged weights score 8e-8). Float64 removes the floor but costs
20–40% of the probe time on a CPU, for values far below any layer's real sensitivity.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.evaluation.bos import NO_BOS, BosChoice
from lowbit.evaluation.metrics import write_reference_windows
from lowbit.evaluation.refcache import (
    ReferenceKey,
    ReferenceWindow,
    cache_path,
    check_window,
    kl_rows,
    open_reference,
)
from lowbit.models.capture import capture, chunk_logits
from lowbit.models.layerwise import window_logprobs
from lowbit.models.lazy import LazyModel
from lowbit.models.sources import ModelHandle, cache_root
from lowbit.models.views import original_view
from lowbit.runtime import Runtime
from lowbit.runtime.runner import Activations, BlockStore, Chunk, hidden_of
from lowbit.sensitivity.proxies import thread_invariant_sum


def reference_windows(
    handle: ModelHandle, ids: torch.Tensor, runtime: Runtime, bos: BosChoice = NO_BOS
) -> tuple[list[ReferenceWindow], float]:
    """(the original model's cached log-probabilities on the probe windows ``ids`` (n, ctx),
    cut with the BOS choice ``bos``, one per window, on the runtime's device; seconds spent
    computing them: 0 when cached)."""
    key = reference_key(handle, ids, runtime, bos)
    vocab = int(handle.config.vocab_size)
    path = cache_path(cache_root() / "references", key)
    seconds = 0.0
    if not path.exists():
        logps = window_logprobs(original_view(handle), ids, runtime)
        seconds = write_reference_windows(logps, ids, path, key, vocab)
    device = runtime.device
    with open_reference(path, key, vocab=vocab) as ref:
        windows = [
            replace(
                w,
                logp=w.logp.to(device),
                argmax=w.argmax.to(device),
                target_logp=w.target_logp.to(device),
            )
            for w in (ref.window(i) for i in range(len(ref)))
        ]
    return windows, seconds


def reference_key(
    handle: ModelHandle, ids: torch.Tensor, runtime: Runtime, bos: BosChoice = NO_BOS
) -> ReferenceKey:
    """The cache key of the probe windows ``ids`` cut with the BOS choice ``bos``: the text is
    fingerprinted by the token ids themselves (the windows are the first calibration windows,
    cut, so a BOS token stays first)."""
    digest = hashlib.sha256(ids.to(torch.int64).cpu().numpy().tobytes()).hexdigest()
    n, ctx = ids.shape
    return ReferenceKey(
        model=handle.fingerprint,
        text=f"token-ids:{digest[:32]}",
        ctx=int(ctx),
        windows=int(n),
        selection=f"sensitivity probe: the first {n} calibration windows cut to {ctx} tokens",
        bos=bos.cache_key,
        dtype=str(runtime.dtype).removeprefix("torch."),
        device=runtime.device.type,
    )


# tokens whose logits the head forms in one call (one window at least): on a CPU the product of
# 192 rows by the vocabulary costs 1.2-1.3x per row that of 768 (bench/probe_scoring.py)
HEAD_ROWS = 768


class StackedLinear(nn.Module):
    """A linear layer with weight k for the k-th of len(weights) equal slices of the batch."""

    def __init__(self, weights: list[torch.Tensor], bias: torch.Tensor | None) -> None:
        super().__init__()
        self.W = torch.stack([w.T for w in weights])  # (k, in, out)
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # rows of x are ordered by batch entry whether x is (batch, T, in) or flattened
        y = torch.bmm(x.reshape(self.W.shape[0], -1, x.shape[-1]), self.W)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.W.shape[-1])


class KLProbe:
    """Measured KL of candidates on the probe windows ``ids`` (n, ctx) against ``reference``
    (one cached window each); ``batch`` candidates share one run of a block. Candidate
    hidden states are kept on ``home``."""

    def __init__(
        self,
        lazy: LazyModel,
        store: BlockStore,
        ids: torch.Tensor,
        reference: list[ReferenceWindow],
        batch: int,
        home: torch.device,
    ) -> None:
        self.lazy, self.store, self.ids = lazy, store, ids
        self.reference = [ReferenceKL(ref, ids[r, 1:]) for r, ref in enumerate(reference)]
        self.batch, self.home, self.n = batch, home, int(ids.shape[0])
        self.device = lazy.runtime.device
        self.as_tuple = False  # the blocks return tuples (seen at the first block run)
        # the blocks' keyword arguments (masks, positions) for k stacked copies of the windows
        # per stack size k, every block's keyword arguments
        self.kwargs = {
            k: capture(lazy, ids.repeat(k, 1), k * self.n, home).chunks[0].per_block
            for k in range(1, batch + 1)
        }

    def block_outputs(
        self,
        i: int,
        block: nn.Module,
        weights: dict[str, list[torch.Tensor]],
        inputs: Activations,
    ) -> list[torch.Tensor]:
        """Block outputs (n, ctx, hidden) on the probe windows with every member of
        ``weights`` (names inside the block: one unit's linears) replaced at once by its k-th
        weight in the k-th candidate (k ≤ ``batch``), from the block's probe ``inputs``."""
        k = len(next(iter(weights.values())))
        originals = {member: block.get_submodule(member) for member in weights}
        x = inputs.on_device(0).repeat(k, 1, 1)
        try:
            for member, ws in weights.items():
                parent, attr = _parent(block, member)
                setattr(parent, attr, StackedLinear(ws, originals[member].bias))
            with torch.inference_mode():
                out = block(x, **self.kwargs[k][i])
        finally:
            for member, module in originals.items():
                parent, attr = _parent(block, member)
                setattr(parent, attr, module)
        self.as_tuple = isinstance(out, tuple)
        return [part.to(self.home) for part in hidden_of(out).split(self.n)]

    def kls(self, i: int, outputs: list[torch.Tensor]) -> list[float]:
        """Mean per-token KL divergence to the reference of each candidate whose block-``i``
        outputs are ``outputs``: blocks i+1 … N−1 are each materialized once."""
        outputs = list(outputs)
        for j in range(i + 1, len(self.store)):
            block = self.store.load(j)
            try:
                self._run(j, block, outputs)
            finally:
                self.store.release(j)
        return self._score(outputs)

    def _run(self, j: int, block: nn.Module, outputs: list[torch.Tensor]) -> None:
        with torch.inference_mode():
            for start in range(0, len(outputs), self.batch):
                part = outputs[start : start + self.batch]
                x = torch.cat([h.to(self.device) for h in part])
                y = hidden_of(block(x, **self.kwargs[len(part)][j]))
                outputs[start : start + len(part)] = [h.to(self.home) for h in y.split(self.n)]

    def _score(self, outputs: list[torch.Tensor]) -> list[float]:
        # the head forms the logits of up to HEAD_ROWS tokens per call (one window at least),
        # the windows of several candidates when they fit
        per_call = max(1, HEAD_ROWS // int(self.ids.shape[1]))
        group = max(1, per_call // self.n)
        chunks = [
            Chunk(torch.cat(outputs[a : a + group]), {}) for a in range(0, len(outputs), group)
        ]
        acts = Activations(chunks, self.device, self.home, self.as_tuple)
        per_token: list[list[torch.Tensor]] = [[] for _ in outputs]
        ids = self.ids.repeat(len(outputs), 1)
        for w, logits in chunk_logits(self.lazy, acts, ids, windows_per_call=per_call):
            for k in range(logits.shape[0]):
                c, r = divmod(w + k, self.n)
                per_token[c].append(self.reference[r].kl(logits[k, :-1]))
        # the mean per-token KL, its sum the same at any thread count (proxies.py)
        kls = [torch.cat(parts) for parts in per_token]
        return [thread_invariant_sum(kl) / kl.numel() for kl in kls]


class ReferenceKL:
    """One cached reference window ``ref`` prepared to score many candidates predicting
    ``target`` (T,): p = exp(log p) (T, V) taken once, so that a candidate's KL per token is
    −Σ_v p_v (log q_v − log p_v), formed in place in its log-probabilities (see the module's
    docstring). Holds p beside the reference's log p: twice the reference's memory."""

    def __init__(self, ref: ReferenceWindow, target: torch.Tensor) -> None:
        check_window(tuple(ref.logp.shape), ref, target)  # the tokens
        self.ref, self.target = ref, target
        self.p = ref.logp.exp()

    def kl(self, logits: torch.Tensor) -> torch.Tensor:
        """KL divergence per token (T,), nats clamped at 0, of the candidate whose logits
        (T, V) are ``logits`` (not modified). Where log p = −inf (p = 0: ∞ · 0) the window is
        scored term by term, as the evaluation scores it, and those tokens taken from there;
        NaN logits stay NaN."""
        if logits.shape != self.p.shape:
            check_window(tuple(logits.shape), self.ref, self.target)
        logq = torch.log_softmax(logits.float(), dim=-1)
        kl = logq.sub_(self.ref.logp).mul_(self.p).sum(-1).neg_()
        nan = torch.isnan(kl)
        if bool(nan.any()):  # the whole window, as a row's sum may depend on the rows beside it
            whole = kl_rows(self.ref.logp, torch.log_softmax(logits.float(), dim=-1))
            kl[nan] = whole[nan]
        return kl.clamp_min_(0.0)


def _parent(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    if "." not in path:
        return root, path
    head, attr = path.rsplit(".", 1)
    return root.get_submodule(head), attr


def probe_source(
    calib: torch.Tensor,
    held_out: torch.Tensor | None,
    use_held_out: bool,
    shape: tuple[int, int],
    who: str,
) -> torch.Tensor:
    """The probe's windows, ``shape`` = (windows, ctx): the first calibration windows ``calib``
    cut, or with ``use_held_out`` the first held-out ones (text outside every calibration
    window: :func:`lowbit.evaluation.text.held_out_windows`); checked to fit. ``who`` names the
    probe in errors."""
    what = "calibration"
    if held_out is not None and not use_held_out:
        raise ConfigError(
            f"held-out windows given to the {who}, which measures on the calibration windows: "
            "set held_out=True in its configuration (--probe-held-out), or draw none"
        )
    if use_held_out:
        if held_out is None:
            raise ConfigError(
                f"{who} on held-out windows, but none were drawn: draw them beside the "
                "calibration windows (lowbit.api.text_windows(..., held_out=N))"
            )
        calib, what = held_out, "held-out"
    n, ctx = shape
    if n > calib.shape[0] or ctx > calib.shape[1]:
        raise ConfigError(
            f"{who} windows {n} × {ctx} do not fit in the {calib.shape[0]} × {calib.shape[1]} "
            f"{what} windows; give more or shorter ones"
        )
    return calib[:n, :ctx]
