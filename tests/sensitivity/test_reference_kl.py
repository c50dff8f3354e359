"""The probe's KL scorer (p taken once per reference window, the terms formed in place) against
the evaluation's term-by-term form and against float64 computed here."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import ArtefactError
from lowbit.evaluation.refcache import ReferenceWindow, kl_rows
from lowbit.sensitivity.measured import ReferenceKL

T, V = 31, 4099


def _window(ref_logits: torch.Tensor, tokens: torch.Tensor) -> ReferenceWindow:
    logp = torch.log_softmax(ref_logits, -1)
    return ReferenceWindow(tokens, logp, logp.argmax(-1), logp.gather(1, tokens[1:, None])[:, 0])


@pytest.fixture
def case():
    g = torch.Generator().manual_seed(0)
    ref_logits = torch.randn(T, V, generator=g) * 4
    cand = ref_logits + torch.randn(T, V, generator=g) * 0.05
    tokens = torch.randint(0, V, (T + 1,), generator=g)
    return _window(ref_logits, tokens), tokens, cand


def test_equals_the_term_by_term_form_bit_for_bit_and_float64_closely(case):
    ref, tokens, cand = case
    fast = ReferenceKL(ref, tokens[1:]).kl(cand)
    slow = kl_rows(ref.logp, torch.log_softmax(cand, -1)).clamp_min(0.0)
    assert fast.dtype == torch.float32 and fast.shape == (T,)
    assert torch.equal(fast, slow)
    p64 = ref.logp.double()
    exact = (p64.exp() * (p64 - torch.log_softmax(cand.double(), -1))).sum(-1)
    assert (fast.double() - exact).abs().max() < 2e-6  # float32 log q: about 1e-6 here
    assert exact.mean() > 1e-3  # the case is not trivially zero


def test_the_same_candidate_scores_zero(case):
    ref, tokens, _ = case
    logits = ref.logp + 3.0  # log-softmax is shift invariant
    assert ReferenceKL(ref, tokens[1:]).kl(logits).max() < 1e-6


def test_minus_infinity_where_p_is_zero_is_scored_term_by_term(case):
    _, tokens, cand = case
    ref_logits = torch.randn(T, V, generator=torch.Generator().manual_seed(1))
    ref_logits[:, :7] = float("-inf")  # tokens neither model can emit
    cand = cand.clone()
    cand[:, :7] = float("-inf")
    ref = _window(ref_logits, tokens.clamp_min(7))
    fast = ReferenceKL(ref, tokens.clamp_min(7)[1:]).kl(cand)
    slow = kl_rows(ref.logp, torch.log_softmax(cand, -1)).clamp_min(0.0)
    assert torch.isfinite(fast).all()
    assert torch.equal(fast, slow)


def test_a_nan_candidate_scores_nan_and_minus_infinity_where_p_is_not_zero_scores_inf(case):
    ref, tokens, cand = case
    bad = cand.clone()
    bad[3, 5] = float("nan")
    bad[4, int(ref.argmax[4])] = float("-inf")
    kl = ReferenceKL(ref, tokens[1:]).kl(bad)
    assert torch.isnan(kl[3]) and torch.isinf(kl[4])
    assert torch.isfinite(kl[[0, 1, 2, 5]]).all()


def test_other_tokens_or_vocabulary_are_refused(case):
    ref, tokens, cand = case
    with pytest.raises(ArtefactError, match="tokens differ"):
        ReferenceKL(ref, tokens[1:].flip(0))
    with pytest.raises(ArtefactError, match="another vocabulary"):
        ReferenceKL(ref, tokens[1:]).kl(cand[:, :-1])
