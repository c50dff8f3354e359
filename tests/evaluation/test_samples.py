"""Flip, overlap, FP/FN, McNemar and margin statistics on hand-made samples with known answers."""

from __future__ import annotations

import math

import pytest

from lowbit.errors import DataError
from lowbit.evaluation.samples import (
    SampleRecord,
    compare_samples,
    fp_fn,
    mcnemar,
    record_from_harness,
)


def rec(i: int, correct: bool, scores: tuple[float, ...], gold: int | None = None) -> SampleRecord:
    return SampleRecord(i, f"d{i}", f"p{i}", correct, scores, gold)


def two_way(i: int, pred: int, gold: int, margin: float = 1.0) -> SampleRecord:
    scores = (0.0, -margin) if pred == 0 else (-margin, 0.0)
    return rec(i, pred == gold, scores, gold)


def test_flips_jaccard_and_accuracy_on_known_items() -> None:
    # correctness:   ref  T T F F T F ; quant T F F T F F
    ref = [rec(i, c, (0.0, -1.0)) for i, c in enumerate([1, 1, 0, 0, 1, 0])]
    quant = [rec(i, c, (0.0, -1.0)) for i, c in enumerate([1, 0, 0, 1, 0, 0])]
    c = compare_samples(ref, quant, task="t")
    assert (c.n, c.flips_to_wrong, c.flips_to_right) == (6, 2, 1)
    assert c.flip_rate == pytest.approx(3 / 6)
    assert c.acc_ref == pytest.approx(3 / 6) and c.acc_quant == pytest.approx(2 / 6)
    assert c.delta == pytest.approx(-1 / 6)
    # errors: ref {2, 3, 5}, quant {1, 2, 4, 5}: intersection {2, 5}, union {1, 2, 3, 4, 5}
    assert c.error_jaccard == pytest.approx(2 / 5)


def test_identical_runs_have_no_flips_and_full_overlap() -> None:
    ref = [rec(i, i % 3 == 0, (0.0, -0.5, -2.0)) for i in range(9)]
    c = compare_samples(ref, list(reversed(ref)), task="t")
    assert c.flip_rate == 0 and c.error_jaccard == 1.0
    assert c.mcnemar["p_exact"] == 1.0


def _exact_two_sided(b: int, c: int) -> float:
    """Independent reference: the two-sided exact binomial p-value by direct summation."""
    n, k = b + c, min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize(("b", "c"), [(5, 1), (12, 3), (7, 7), (0, 4), (30, 18)])
def test_mcnemar_matches_direct_binomial_sum(b: int, c: int) -> None:
    out = mcnemar(b, c)
    assert out["p_exact"] == pytest.approx(_exact_two_sided(b, c), rel=1e-9)
    assert out["chi2"] == pytest.approx(max(abs(b - c) - 1, 0) ** 2 / (b + c))
    if b == c:
        assert out["chi2"] == 0 and out["p_chi2"] == 1.0


def test_fp_fn_against_gold_labels() -> None:
    # pred/gold: (1,0) FP, (1,0) FP, (0,1) FN, (1,1) TP, (0,0) TN
    recs = [
        two_way(0, 1, 0),
        two_way(1, 1, 0),
        two_way(2, 0, 1),
        two_way(3, 1, 1),
        two_way(4, 0, 0),
    ]
    assert fp_fn(recs) == {"fp": 2, "fn": 1, "ratio": 2.0}
    assert fp_fn([two_way(0, 1, 0)])["ratio"] is None


def test_flips_by_reference_margin_buckets() -> None:
    ref = [two_way(0, 0, 0, 0.05), two_way(1, 0, 0, 0.05), two_way(2, 0, 0, 3.0)]
    quant = [two_way(0, 1, 0, 0.05), two_way(1, 0, 0, 0.05), two_way(2, 0, 0, 3.0)]
    c = compare_samples(ref, quant, task="t", two_way=True)
    first, last = c.flips_by_margin[0], c.flips_by_margin[-1]
    assert (first["n"], first["flips"], first["rate"]) == (2, 1, 0.5)
    assert (last["n"], last["flips"], last["rate"], last["hi"]) == (1, 0, 0.0, None)
    assert sum(b["n"] for b in c.flips_by_margin) == 3
    assert c.fp_fn == {
        "reference": {"fp": 0, "fn": 0, "ratio": None},
        "quantized": {"fp": 1, "fn": 0, "ratio": None},
        "ratio_change": None,
    }
    ref[2], quant[2] = two_way(2, 0, 1, 3.0), two_way(2, 0, 1, 3.0)  # a false negative in both
    c = compare_samples(ref, quant, task="t", two_way=True)
    assert c.fp_fn["reference"]["ratio"] == 0.0 and c.fp_fn["quantized"]["ratio"] == 1.0
    assert c.fp_fn["ratio_change"] == 1.0


def test_different_samples_are_refused() -> None:
    ref = [rec(i, True, (0.0, -1.0)) for i in range(3)]
    with pytest.raises(DataError, match="different document ids"):
        compare_samples(ref, ref[:2], task="piqa")
    other = [SampleRecord(i, "other", f"p{i}", True, (0.0, -1.0)) for i in range(3)]
    with pytest.raises(DataError, match="different documents or prompts"):
        compare_samples(ref, other, task="piqa")


def test_record_from_harness_sample() -> None:
    mc = {"doc_id": 4, "target": 2, "filtered_resps": [(-3.0, False), (-1.0, True), (-2.0, False)],
          "acc": 0.0, "acc_norm": 1.0, "doc_hash": "h", "prompt_hash": "p"}  # fmt: skip
    r = record_from_harness(mc)
    assert (r.pred, r.gold, r.correct, r.correct_norm) == (1, 2, False, True)
    assert r.margin == pytest.approx(1.0)
    args = [("A sat", " cont"), ("B sat", " cont")]
    wino = {"doc_id": 0, "target": "cont", "filtered_resps": [(-5.0, False), (-4.0, False)],
            "acc": 0.0, "arguments": args}  # fmt: skip
    assert record_from_harness(wino).gold == 0  # predicted 1 and wrong: gold is the other
    resps = [(-3.0, 0), (-1.0, 0), (-2.0, 0)]
    text = {"doc_id": 2, "target": "7", "acc": 1.0, "filtered_resps": resps,
            "arguments": [("q", " 3"), ("q", " 7"), ("q", " 5")]}  # fmt: skip
    assert record_from_harness(text).gold == 1  # a numeric answer text is a choice, not an index
    lam = {"doc_id": 1, "target": " word", "filtered_resps": [(-2.0, True)], "acc": 1}
    r = record_from_harness(lam)
    assert (r.pred, r.margin, r.gold, r.correct) == (None, None, None, True)
    assert SampleRecord.from_dict(r.to_dict()) == r


def test_acc_norm_is_compared_where_present() -> None:
    ref = [SampleRecord(i, f"d{i}", f"p{i}", True, (0.0, -1.0), None, n) for i, n in
           enumerate([True, False, True])]  # fmt: skip
    quant = [SampleRecord(i, f"d{i}", f"p{i}", True, (0.0, -1.0), None, n) for i, n in
             enumerate([False, False, True])]  # fmt: skip
    c = compare_samples(ref, quant, task="t")
    assert c.flip_rate == 0.0  # acc did not change
    assert c.acc_norm is not None and c.acc_norm["flips_to_wrong"] == 1
    assert c.acc_norm["acc_ref"] == pytest.approx(2 / 3) and c.acc_norm[
        "acc_quant"
    ] == pytest.approx(1 / 3)
    assert compare_samples(ref[:1], ref[:1], task="t").acc_norm["flip_rate"] == 0.0
    plain = [rec(0, True, (0.0, -1.0))]
    assert compare_samples(plain, plain, task="t").acc_norm is None
