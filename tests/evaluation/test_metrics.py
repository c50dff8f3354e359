"""Perplexity and KL statistics against an independent computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lowbit.errors import DataError
from lowbit.evaluation.metrics import evaluate_models
from lowbit.models.sources import resolve_model


@pytest.fixture(scope="module")
def models(tiny_llama):
    handle = resolve_model(str(tiny_llama))
    ref = handle.load_model()
    noisy = handle.load_model()
    torch.manual_seed(3)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return ref, noisy


def _windows(n=5, ctx=40):
    torch.manual_seed(7)
    return torch.randint(0, 320, (n, ctx))


def test_perplexity_and_kl_match_an_independent_computation(models):
    ref, noisy = models
    windows = _windows()
    res = evaluate_models(ref, {"noisy": noisy}, windows)
    with torch.no_grad():
        lr = ref(input_ids=windows).logits[:, :-1]
        ln = noisy(input_ids=windows).logits[:, :-1]
    tgt = windows[:, 1:]
    nll_ref = F.cross_entropy(lr.reshape(-1, lr.shape[-1]), tgt.reshape(-1))
    nll_noisy = F.cross_entropy(ln.reshape(-1, ln.shape[-1]), tgt.reshape(-1))
    kl = F.kl_div(ln.log_softmax(-1), lr.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    assert res["reference"].perplexity == pytest.approx(math.exp(nll_ref), rel=1e-5)
    assert res["noisy"].perplexity == pytest.approx(math.exp(nll_noisy), rel=1e-5)
    assert res["noisy"].kl["mean"] == pytest.approx(float(kl.mean()), rel=1e-4)
    assert res["noisy"].kl["max"] == pytest.approx(float(kl.max()), rel=1e-4)
    agree = (lr.argmax(-1) == ln.argmax(-1)).double().mean()
    assert res["noisy"].top1_agreement == pytest.approx(float(agree))
    assert res["noisy"].tokens == windows.shape[0] * (windows.shape[1] - 1)
    flat = kl.reshape(-1).double()
    for q in (1, 5, 10, 90, 95, 99):
        assert res["noisy"].kl[f"p{q}"] == pytest.approx(float(flat.quantile(q / 100)), rel=1e-4)
    assert res["noisy"].kl["stderr"] == pytest.approx(
        float(flat.std() / flat.numel() ** 0.5), rel=1e-3
    )
    assert res["noisy"].ln_ppl_ratio == pytest.approx(
        float(nll_noisy - nll_ref), rel=1e-4, abs=1e-7
    )
    # the histogram, checked against numpy's: counts[0] below the first edge, the last at or above
    import numpy as np

    hist = res["noisy"].kl_histogram
    edges = np.array(hist["edges"])
    inner, _ = np.histogram(flat.numpy(), bins=edges)
    assert hist["counts"][1:-1] == inner.tolist()[:-1] + [
        inner[-1] - int((flat.numpy() == edges[-1]).sum())
    ]
    assert hist["counts"][0] == int((flat.numpy() < edges[0]).sum())
    assert sum(hist["counts"]) == flat.numel()


def test_a_model_against_itself(models):
    ref, _ = models
    res = evaluate_models(ref, {"same": ref}, _windows(2))
    assert res["same"].kl["max"] == pytest.approx(0.0, abs=1e-6)
    assert res["same"].top1_agreement == 1.0
    assert res["same"].delta_p["rms"] == pytest.approx(0.0, abs=1e-7)
    assert res["same"].perplexity == res["reference"].perplexity


def test_kl_percentiles_are_ordered(models):
    ref, noisy = models
    kl = evaluate_models(ref, {"n": noisy}, _windows())["n"].kl
    assert 0 <= kl["median"] <= kl["p90"] <= kl["p99"] <= kl["max"]


def test_ctx_longer_than_the_model_supports(models):
    ref, _ = models
    with pytest.raises(DataError, match="longer than .* supports"):
        evaluate_models(ref, {}, torch.zeros(1, 300, dtype=torch.long))
