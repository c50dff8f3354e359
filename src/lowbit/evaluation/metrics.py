"""Perplexity, KL divergence to a reference, top-1 agreement and Δp, streamed window by window.

Protocol: each window of ``ctx`` tokens predicts its tokens 1..ctx-1 from the tokens before them;
position 0 is never a target. A window is cut from the text tokenized once without special
tokens, and starts with the BOS token when the BOS policy says so (:mod:`lowbit.evaluation.text`):
then the scored tokens are exactly the window's ctx-1 text tokens. Perplexity is exp of the
mean negative log-likelihood over every predicted token.
KL(P_ref ‖ P_model) is computed per token over the full vocabulary.

One model in memory: the reference's log-probabilities are computed once and cached on disk
(:mod:`lowbit.evaluation.refcache`: exact target log-probabilities and argmax, so perplexity,
top-1 agreement and Δp are exact; the full distribution to about 1e-5 relative in the KL), and
each candidate is then scored against the cache one window at a time. This module receives
log-probabilities; it never loads a model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from lowbit.evaluation.refcache import (
    ReferenceCache,
    ReferenceKey,
    score_cached,
    score_reference,
    write_reference,
)
from lowbit.runtime import HOST


@dataclass
class Accumulator:
    nll: list[torch.Tensor] = field(default_factory=list)
    kl: list[torch.Tensor] = field(default_factory=list)
    agree: list[torch.Tensor] = field(default_factory=list)
    dp: list[torch.Tensor] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class EvalResult:
    """Figures for one model; KL fields are None for the reference itself."""

    perplexity: float
    nll: float
    tokens: int
    seconds: float
    kl: dict[str, float] | None = None
    top1_agreement: float | None = None
    top1_agreement_stderr: float | None = None
    ln_ppl_ratio: float | None = None  # ln(PPL(model) / PPL(reference)) over the same tokens
    delta_p: dict[str, float] | None = None
    kl_histogram: dict[str, list[float]] | None = None
    wall_seconds: float | None = None  # the whole evaluation, blocks read from disk included

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


Gather = Callable[[Accumulator], list[Accumulator]]  # every rank's accumulator, in rank order


def score_candidate(
    logps: Iterable[tuple[int, torch.Tensor]],
    reference: ReferenceCache,
    *,
    count: int | None = None,
    gather: Gather | None = None,
) -> EvalResult:
    """Figures of a candidate from its per-window log-probabilities ``logps`` ((window,
    (ctx−1, vocab)) in window order, e.g. computed layer-wise) against the cached reference:
    perplexity, KL divergence to the reference per token, top-1 agreement and Δp. ``count``:
    how many windows ``logps`` holds (default all of the reference's); ``gather``: the
    per-token figures of every rank's share of the windows, joined before the figures are
    computed (shares in window order)."""
    acc = Accumulator()
    ref_nll = _reference_nll(reference)
    stream = iter(logps)
    n = len(reference) if count is None else count
    for _ in range(n):
        t0 = time.perf_counter()
        w, logp = next(stream)
        acc.seconds += time.perf_counter() - t0
        ref = reference.window(w)
        score_cached(logp, ref, ref.target.to(logp.device), acc)
    result = _finish(_joined(acc, gather))
    return replace(result, ln_ppl_ratio=result.nll - ref_nll)


def score_alone(
    logps: Iterable[tuple[int, torch.Tensor]],
    windows: torch.Tensor,
    *,
    count: int | None = None,
    gather: Gather | None = None,
) -> EvalResult:
    """Perplexity of a model from its per-window log-probabilities, no reference (``count``,
    ``gather``: as for :func:`score_candidate`)."""
    acc = Accumulator()
    stream = iter(logps)
    for _ in range(windows.shape[0] if count is None else count):
        t0 = time.perf_counter()
        w, logp = next(stream)
        acc.seconds += time.perf_counter() - t0
        target = windows[w, 1:].to(logp.device)
        acc.nll.append(-logp.gather(1, target[:, None])[:, 0])
    return _finish(_joined(acc, gather))


def reference_result(reference: ReferenceCache, seconds: float = 0.0) -> EvalResult:
    """The reference's own perplexity, from the exact target log-probabilities of the cache."""
    acc = Accumulator(seconds=seconds)
    for ref in reference:
        score_reference(ref, acc)
    return _finish(acc)


def _reference_nll(reference: ReferenceCache) -> float:
    return reference_result(reference).nll


def write_reference_windows(
    logps: Iterable[tuple[int, torch.Tensor]],
    windows: torch.Tensor,
    path: Path,
    key: ReferenceKey,
    vocab: int,
) -> float:
    """Cache the reference's log-probabilities ``logps`` for ``windows`` (n, ctx) at ``path``
    (published only when complete); returns the seconds spent computing them."""
    seconds = 0.0
    with write_reference(path, key, vocab) as writer:
        stream = iter(logps)
        for _ in range(windows.shape[0]):
            t0 = time.perf_counter()
            w, logp = next(stream)
            seconds += time.perf_counter() - t0
            writer.add(logp, windows[w])
    return seconds


def _joined(acc: Accumulator, gather: Gather | None) -> Accumulator:
    """``acc`` joined with the other ranks' (their per-token figures in rank order, on the
    host; the slowest rank's seconds), or ``acc`` alone."""
    if gather is None:
        return acc
    mine = Accumulator(
        *([t.to(HOST) for t in getattr(acc, k)] for k in _PER_TOKEN), seconds=acc.seconds
    )
    every = gather(mine)
    return Accumulator(
        *([t for a in every for t in getattr(a, k)] for k in _PER_TOKEN),
        seconds=max(a.seconds for a in every),
    )


_PER_TOKEN = ("nll", "kl", "agree", "dp")  # Accumulator's fields, in order


def _finish(acc: Accumulator) -> EvalResult:
    nll = torch.cat(acc.nll).double()
    mean = float(nll.mean())
    result = dict(perplexity=math.exp(mean), nll=mean, tokens=int(nll.numel()), seconds=acc.seconds)
    if acc.kl:
        kl = torch.cat(acc.kl).double()
        dp = torch.cat(acc.dp).double()
        n = kl.numel()
        agree = torch.cat(acc.agree).double()
        result["kl"] = {
            "mean": float(kl.mean()),
            "stderr": float(kl.std() / math.sqrt(n)) if n > 1 else 0.0,
            "min": float(kl.min()),
            "p1": float(torch.quantile(kl, 0.01)),
            "p5": float(torch.quantile(kl, 0.05)),
            "p10": float(torch.quantile(kl, 0.10)),
            "median": float(kl.median()),
            "p90": float(torch.quantile(kl, 0.90)),
            "p95": float(torch.quantile(kl, 0.95)),
            "p99": float(torch.quantile(kl, 0.99)),
            "p999": float(torch.quantile(kl, 0.999)),
            "max": float(kl.max()),
        }
        result["kl_histogram"] = kl_histogram(kl)
        p = float(agree.mean())
        result["top1_agreement"] = p
        result["top1_agreement_stderr"] = math.sqrt(p * (1 - p) / n)
        result["delta_p"] = {
            "mean": float(dp.mean()),
            "stderr": float(dp.std() / math.sqrt(n)) if n > 1 else 0.0,
            "rms": float(dp.pow(2).mean().sqrt()),
            **{f"p{q}": float(torch.quantile(dp, q / 100)) for q in (1, 5, 50, 95, 99)},
        }
    return EvalResult(**result)


KL_HIST_EDGES = tuple(10.0 ** (e / 4) for e in range(-28, 9))  # 1e-7 … 100 nats, 4 per decade


def kl_histogram(kl: torch.Tensor) -> dict[str, list[float]]:
    """Counts of per-token KL divergence in log-spaced bins: ``counts[0]`` below the first
    edge, ``counts[i]`` in [edges[i-1], edges[i]), the last at or above the last edge."""
    edges = torch.tensor(KL_HIST_EDGES, dtype=kl.dtype, device=kl.device)
    idx = torch.bucketize(kl, edges, right=True)
    counts = torch.bincount(idx, minlength=len(KL_HIST_EDGES) + 1)
    return {"edges": list(KL_HIST_EDGES), "counts": [int(c) for c in counts]}
