"""Independent references for the block-wise sensitivity code: the whole model in memory, plain
Hugging Face forwards and autograd (allowed in tests only)."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.evaluation.metrics import EvalResult


def whole_model_kl(reference: nn.Module, candidate: nn.Module, ids: torch.Tensor) -> float:
    """Mean over every predicted token of ``ids`` (n, ctx) of KL(P_reference ‖ P_candidate)
    (nats), from whole-model forwards (log-softmax in float64)."""
    with torch.inference_mode():
        ref = _logp(reference, ids)
        cand = _logp(candidate, ids)
    return float((ref.exp() * (ref - cand)).sum(-1).clamp_min(0.0).mean())


def _logp(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), use_cache=False).logits[:, :-1]
    return torch.log_softmax(logits.double(), dim=-1)


def whole_model_fisher(
    model: nn.Module, names: list[str], ids: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The diagonal empirical Fisher T · E_w[g_w²] of the weights ``names`` by whole-model
    autograd, g_w the gradient of window w's mean token NLL (what lowbit computed before its
    block-wise backward)."""
    weights = {name: model.get_submodule(name).weight for name in names}
    for p in model.parameters():
        p.requires_grad_(False)
    for w in weights.values():
        w.requires_grad_(True)
    acc = {name: torch.zeros_like(w) for name, w in weights.items()}
    device = next(model.parameters()).device
    for row in ids:
        x = row[None].to(device)
        loss = model(input_ids=x, labels=x, use_cache=False).loss
        grads = torch.autograd.grad(loss, list(weights.values()))
        for name, g in zip(weights, grads, strict=True):
            acc[name].add_(g.float().pow(2))
    scale = (ids.shape[1] - 1) / ids.shape[0]
    return {name: a.mul_(scale) for name, a in acc.items()}


def direct_scores(reference: nn.Module, candidate: nn.Module, ids: torch.Tensor) -> EvalResult:
    """Perplexity, KL, top-1 and Δp of ``candidate`` against ``reference`` on ``ids`` (n, ctx),
    both models held in memory and scored window by window in float32 (what lowbit evaluated
    before the cached reference): the direct side of the cached-vs-direct tests."""
    from lowbit.evaluation.metrics import Accumulator, _finish

    acc = Accumulator()
    with torch.inference_mode():
        for w in ids:
            r, q = (_logp32(model, w[None]) for model in (reference, candidate))
            t = w[1:]
            lp = q.gather(1, t[:, None])[:, 0]
            acc.nll.append(-lp)
            acc.kl.append((r.exp() * (r - q)).sum(-1).clamp_min_(0.0))
            acc.agree.append(r.argmax(-1) == q.argmax(-1))
            acc.dp.append(lp.exp() - r.gather(1, t[:, None])[:, 0].exp())
    return _finish(acc)


def _logp32(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(model(input_ids=x, use_cache=False).logits[0, :-1].float(), -1)
