"""Perplexity, KL divergence to a reference, top-1 agreement and Δp, streamed window by window.

Protocol: each window of ``ctx`` tokens predicts its tokens 1..ctx-1 from the tokens before them
(no BOS is inserted: the text is tokenized once without special tokens, as the windows are cut
from it); perplexity is exp of the mean negative log-likelihood over every predicted token.
KL(P_ref ‖ P_model) is computed per token over the full vocabulary from the two models' logits
on the same window; no more than one window of logits per model is ever held.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from lowbit.errors import DataError


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

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def evaluate_models(
    reference: Any,
    candidates: dict[str, Any],
    windows: torch.Tensor,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, EvalResult]:
    """Evaluate ``reference`` (may be None) and each candidate on ``windows`` (n, ctx).

    Returns results keyed ``"reference"`` and by candidate name.
    """
    if "reference" in candidates:
        raise DataError("a candidate model may not be named 'reference'; rename it")
    models = ({"reference": reference} if reference is not None else {}) | candidates
    _check_ctx(models, windows)
    acc = {name: Accumulator() for name in models}
    with torch.inference_mode():
        for w in range(windows.shape[0]):
            x = windows[w : w + 1]
            target = x[:, 1:].reshape(-1)
            ref_logp = None
            if reference is not None:
                ref_logp = _log_probs(reference, x, acc["reference"])
                acc["reference"].nll.append(-ref_logp.gather(1, target[:, None])[:, 0])
            for name, model in candidates.items():
                logp = _log_probs(model, x, acc[name])
                _score(logp, ref_logp, target, acc[name])
                del logp
            if progress:
                progress(w + 1, windows.shape[0])
    results = {name: _finish(a) for name, a in acc.items()}
    if "reference" in results:
        ref_nll = results["reference"].nll
        for name in candidates:
            results[name] = replace(results[name], ln_ppl_ratio=results[name].nll - ref_nll)
    return results


def _log_probs(model: Any, x: torch.Tensor, acc: Accumulator) -> torch.Tensor:
    t0 = time.perf_counter()
    logits = model(input_ids=x, use_cache=False).logits[0, :-1].float()
    out = torch.log_softmax(logits, dim=-1)
    acc.seconds += time.perf_counter() - t0
    return out


def _score(
    logp: torch.Tensor, ref_logp: torch.Tensor | None, target: torch.Tensor, acc: Accumulator
) -> None:
    lp_target = logp.gather(1, target[:, None])[:, 0]
    acc.nll.append(-lp_target)
    if ref_logp is None:
        return
    ref_p = ref_logp.exp()
    acc.kl.append((ref_p * (ref_logp - logp)).sum(-1).clamp_min_(0.0))
    acc.agree.append(ref_logp.argmax(-1) == logp.argmax(-1))
    ref_target = ref_logp.gather(1, target[:, None])[:, 0]
    acc.dp.append(lp_target.exp() - ref_target.exp())


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
    edges = torch.tensor(KL_HIST_EDGES, dtype=kl.dtype)
    idx = torch.bucketize(kl, edges, right=True)
    counts = torch.bincount(idx, minlength=len(KL_HIST_EDGES) + 1)
    return {"edges": list(KL_HIST_EDGES), "counts": [int(c) for c in counts]}


def _check_ctx(models: dict[str, Any], windows: torch.Tensor) -> None:
    ctx = int(windows.shape[1])
    for name, model in models.items():
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if limit is not None and ctx > limit:
            raise DataError(
                f"ctx {ctx} is longer than {name} supports ({limit} positions); use --ctx {limit} "
                "or less"
            )
