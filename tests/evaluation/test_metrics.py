"""Perplexity and KL statistics, evaluated layer-wise against the cached reference, equal an
independent whole-model computation: perplexity, top-1 and Δp exactly, KL within the cache's
precision."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lowbit import api
from lowbit.errors import ArtefactError, DataError
from lowbit.models.sources import resolve_model


@pytest.fixture(scope="module")
def models(tiny_llama, tmp_path_factory):
    """The tiny model and a noisy copy of it, saved as model directories."""
    handle = resolve_model(str(tiny_llama))
    noisy = handle.load_model()
    torch.manual_seed(3)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("noisy") / "noisy"
    noisy.save_pretrained(path)
    handle.load_tokenizer().save_pretrained(path)
    return handle, resolve_model(str(path))


def _windows(n=5, ctx=40):
    torch.manual_seed(7)
    ids = torch.randint(0, 320, (n, ctx))
    return api.Windows(ids, {"fingerprint": f"random-{n}-{ctx}", "selection": "test"})


def _evaluate(ref, cands, windows, tmp_path, **kw):
    views = {name: api.model_view(h) for name, h in cands.items()}
    return api.evaluate(api.model_view(ref), views, windows, cache=tmp_path / "ref.lbref", **kw)


def test_perplexity_and_kl_match_an_independent_computation(models, tmp_path):
    ref, noisy = models
    windows = _windows()
    res = _evaluate(ref, {"noisy": noisy}, windows, tmp_path)
    ids = windows.ids
    with torch.no_grad():
        lr = ref.load_model()(input_ids=ids).logits[:, :-1]
        ln = noisy.load_model()(input_ids=ids).logits[:, :-1]
    tgt = ids[:, 1:]
    nll_ref = F.cross_entropy(lr.reshape(-1, lr.shape[-1]), tgt.reshape(-1))
    nll_noisy = F.cross_entropy(ln.reshape(-1, ln.shape[-1]), tgt.reshape(-1))
    kl = F.kl_div(ln.log_softmax(-1), lr.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    assert res["reference"].perplexity == pytest.approx(math.exp(nll_ref), rel=1e-5)
    assert res["noisy"].perplexity == pytest.approx(math.exp(nll_noisy), rel=1e-5)
    assert res["noisy"].kl["mean"] == pytest.approx(float(kl.mean()), rel=1e-4)
    assert res["noisy"].kl["max"] == pytest.approx(float(kl.max()), rel=1e-3)
    agree = (lr.argmax(-1) == ln.argmax(-1)).double().mean()
    assert res["noisy"].top1_agreement == pytest.approx(float(agree))
    assert res["noisy"].tokens == ids.shape[0] * (ids.shape[1] - 1)
    flat = kl.reshape(-1).double()
    for q in (50, 90, 95, 99):
        key = "median" if q == 50 else f"p{q}"
        assert res["noisy"].kl[key] == pytest.approx(float(flat.quantile(q / 100)), rel=1e-3)
    assert res["noisy"].kl["stderr"] == pytest.approx(
        float(flat.std() / flat.numel() ** 0.5), rel=1e-3
    )
    assert res["noisy"].ln_ppl_ratio == pytest.approx(
        float(nll_noisy - nll_ref), rel=1e-4, abs=1e-7
    )
    hist = res["noisy"].kl_histogram
    assert sum(hist["counts"]) == flat.numel()


def test_exact_figures_from_the_cache_equal_the_direct_ones_bit_for_bit(models, tmp_path):
    """Perplexity, top-1 agreement and Δp come from exact cached fields: the same numbers as
    scoring against the reference's log-probabilities held in memory."""
    from tests.helpers.whole_model import direct_scores

    ref, noisy = models
    windows = _windows(3, 24)
    res = _evaluate(ref, {"noisy": noisy}, windows, tmp_path)["noisy"]
    direct = direct_scores(ref.load_model(), noisy.load_model(), windows.ids)
    assert res.perplexity == direct.perplexity
    assert res.top1_agreement == direct.top1_agreement
    assert res.delta_p == direct.delta_p
    assert res.kl["mean"] == pytest.approx(direct.kl["mean"], rel=1e-4)


def test_a_model_against_itself(models, tmp_path):
    ref, _ = models
    res = _evaluate(ref, {"same": ref}, _windows(2), tmp_path)
    assert res["same"].kl["max"] == pytest.approx(0.0, abs=1e-4)
    assert res["same"].top1_agreement == 1.0
    assert res["same"].delta_p["rms"] == 0.0
    assert res["same"].perplexity == res["reference"].perplexity


def test_the_cache_is_reused_and_refused_for_another_text(models, tmp_path):
    ref, noisy = models
    first = _evaluate(ref, {"n": noisy}, _windows(), tmp_path)
    cache = tmp_path / "ref.lbref"
    stamp = cache.stat().st_mtime_ns
    again = _evaluate(ref, {"n": noisy}, _windows(), tmp_path)
    assert cache.stat().st_mtime_ns == stamp  # reused, not recomputed
    assert again["n"].kl == first["n"].kl
    other = api.Windows(_windows().ids, {"fingerprint": "another-text", "selection": "test"})
    with pytest.raises(ArtefactError, match="text fingerprint"):
        _evaluate(ref, {"n": noisy}, other, tmp_path)
    with pytest.raises(ArtefactError, match="model fingerprint"):
        _evaluate(noisy, {"n": ref}, _windows(), tmp_path)


def test_perplexity_alone_equals_the_reference_perplexity(models, tmp_path):
    ref, _ = models
    alone = api.perplexity(api.model_view(ref), _windows())
    assert alone.perplexity == _evaluate(ref, {}, _windows(), tmp_path)["reference"].perplexity


def test_ctx_longer_than_the_model_supports(models, tmp_path):
    ref, _ = models
    windows = api.Windows(torch.zeros(1, 300, dtype=torch.long), {"fingerprint": "z"})
    with pytest.raises(DataError, match="longer than .* supports"):
        _evaluate(ref, {}, windows, tmp_path)
