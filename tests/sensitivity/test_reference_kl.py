"""The probe's KL scorer (p taken once per reference window, the terms formed in place) against
the evaluation's term-by-term form, bit for bit, and against float64 computed here."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import ArtefactError
from lowbit.evaluation.refcache import ReferenceWindow, kl_rows
from lowbit.sensitivity.measured import ReferenceKL

# more rows than kl_rows forms at once (64) and a vocabulary above torch's reduction grain
T, V = 130, 40_000


def _window(ref_logits: torch.Tensor, tokens: torch.Tensor) -> ReferenceWindow:
    logp = torch.log_softmax(ref_logits, -1)
    return ReferenceWindow(tokens, logp, logp.argmax(-1), logp.gather(1, tokens[1:, None])[:, 0])


def _term_by_term(ref: ReferenceWindow, logits: torch.Tensor) -> torch.Tensor:
    return kl_rows(ref.logp, torch.log_softmax(logits.float(), -1)).clamp_min(0.0)


@pytest.fixture(scope="module")
def case():
    g = torch.Generator().manual_seed(0)
    ref_logits = torch.randn(T, V, generator=g) * 4
    cand = ref_logits + torch.randn(T, V, generator=g) * 0.05
    tokens = torch.randint(7, V, (T + 1,), generator=g)
    return _window(ref_logits, tokens), tokens, cand


def test_equals_the_term_by_term_form_bit_for_bit_and_float64_closely(case):
    ref, tokens, cand = case
    before, ref_before = cand.clone(), ref.logp.clone()
    fast = ReferenceKL(ref, tokens[1:]).kl(cand)
    assert fast.dtype == torch.float32 and fast.shape == (T,)
    assert torch.equal(fast, _term_by_term(ref, cand))
    assert torch.equal(cand, before) and torch.equal(ref.logp, ref_before)  # nothing modified
    p64 = ref.logp.double()
    exact = (p64.exp() * (p64 - torch.log_softmax(cand.double(), -1))).sum(-1)
    assert (fast.double() - exact).abs().max() < 2e-5  # float32 log q over 40,000: 8e-6 here
    assert exact.mean() > 1e-3  # the case is not trivially zero


def test_bfloat16_logits_are_scored_in_float32(case):
    ref, tokens, cand = case
    low = cand.bfloat16()
    assert torch.equal(ReferenceKL(ref, tokens[1:]).kl(low), _term_by_term(ref, low))


def test_the_same_candidate_scores_zero(case):
    ref, tokens, _ = case
    logits = ref.logp + 3.0  # log-softmax is shift invariant
    assert ReferenceKL(ref, tokens[1:]).kl(logits).max() < 1e-6


def test_minus_infinity_where_p_is_zero_in_some_rows_only(case):
    ref, tokens, cand = case
    ref_logits = torch.log_softmax(ref.logp, -1).clone()
    rows = torch.tensor([3, 64, 100])
    ref_logits[rows, :7] = float("-inf")  # tokens the reference cannot emit in these rows
    cand = cand.clone()
    cand[rows[:2], :7] = float("-inf")  # the candidate neither (rows 3, 64), or it can (100)
    masked = _window(ref_logits, tokens)
    fast = ReferenceKL(masked, tokens[1:]).kl(cand)
    assert torch.isfinite(fast).all()
    assert torch.equal(fast, _term_by_term(masked, cand))


def test_nan_logits_score_nan_and_minus_infinity_where_p_is_not_zero_scores_inf(case):
    ref, tokens, cand = case
    bad = cand.clone()
    bad[3, 5] = float("nan")
    bad[4, int(ref.argmax[4])] = float("-inf")
    kl = ReferenceKL(ref, tokens[1:]).kl(bad)
    assert torch.isnan(kl[3]) and torch.isinf(kl[4])
    keep = torch.ones(T, dtype=torch.bool)
    keep[[3, 4]] = False
    assert torch.equal(kl[keep], _term_by_term(ref, bad)[keep])


def test_other_tokens_or_vocabulary_are_refused(case):
    ref, tokens, cand = case
    with pytest.raises(ArtefactError, match="tokens differ"):
        ReferenceKL(ref, tokens[1:].flip(0))
    with pytest.raises(ArtefactError, match="another vocabulary"):
        ReferenceKL(ref, tokens[1:]).kl(cand[:, :-1])
