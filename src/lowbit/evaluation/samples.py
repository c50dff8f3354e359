"""Per-sample comparison of a reference and a quantized model on the same task items.

Pure functions on :class:`SampleRecord` lists: flips (correct → wrong, wrong → correct), the
Jaccard overlap of the two error sets, false positives against false negatives for two-way
tasks (choice 1 is the positive class), McNemar's test of the accuracy change, and the flip rate
by the reference model's margin between its top two choices.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from lowbit.errors import DataError

# margin buckets, in nats of log-likelihood between the reference's top two choices
MARGIN_EDGES = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, math.inf)


@dataclass(frozen=True)
class SampleRecord:
    """One task item: its identity, the model's per-choice scores and whether it was right.

    ``scores`` are log-likelihoods (one per choice; one in all for a loglikelihood task; none
    for a generation task, which keeps its ``generated`` text and the answer its filter
    ``extracted``); ``pred`` and ``margin`` (top minus second score) are None where there are
    no choices.
    """

    doc_id: int
    doc_hash: str
    prompt_hash: str
    correct: bool
    scores: tuple[float, ...]
    gold: int | None = None
    correct_norm: bool | None = None
    generated: str | None = None
    extracted: str | None = None

    @property
    def pred(self) -> int | None:
        if len(self.scores) < 2:
            return None
        return max(range(len(self.scores)), key=lambda i: (self.scores[i], -i))

    @property
    def margin(self) -> float | None:
        if len(self.scores) < 2:
            return None
        top = sorted(self.scores, reverse=True)
        return top[0] - top[1]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "scores": list(self.scores)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SampleRecord:
        try:
            return cls(**{**data, "scores": tuple(float(x) for x in data["scores"])})
        except (KeyError, TypeError) as exc:
            raise DataError(f"malformed sample record {data!r}: {exc}") from exc


def record_from_harness(sample: dict[str, Any]) -> SampleRecord:
    """A record from one entry of the harness's logged samples: the harness's own verdict
    (``acc``; ``exact_match`` of its filtered answer for a generation task)."""
    if "acc" not in sample:
        return _generated(sample)
    scores = tuple(float(r[0]) for r in sample["filtered_resps"])
    correct = bool(sample["acc"])
    norm = sample.get("acc_norm")
    return SampleRecord(
        doc_id=int(sample["doc_id"]),
        doc_hash=str(sample.get("doc_hash", "")),
        prompt_hash=str(sample.get("prompt_hash", "")),
        correct=correct,
        scores=scores,
        gold=_gold(sample, scores, correct),
        correct_norm=None if norm is None else bool(norm),
    )


def _generated(sample: dict[str, Any]) -> SampleRecord:
    verdict = sample.get("exact_match")
    if verdict not in (0, 1, 0.0, 1.0, True, False):
        raise DataError(
            f"document {sample.get('doc_id')}: the harness's exact_match is {verdict!r}, not a "
            "0/1 verdict; lowbit compares generation tasks scored by exact_match"
        )
    (text,) = sample["resps"][0]  # one generation per document (repeats: 1)
    (answer,) = sample["filtered_resps"]
    return SampleRecord(
        doc_id=int(sample["doc_id"]),
        doc_hash=str(sample.get("doc_hash", "")),
        prompt_hash=str(sample.get("prompt_hash", "")),
        correct=bool(verdict),
        scores=(),
        generated=str(text),
        extracted=str(answer),
    )


def _gold(sample: dict[str, Any], scores: tuple[float, ...], correct: bool) -> int | None:
    """The gold choice as the harness scores it: an index target, or a text target that is
    exactly one of the choices; for a two-way task whose target is shared by both choices
    (WinoGrande's partial scoring), the verdict and the prediction determine it."""
    target = sample.get("target")
    if len(scores) < 2:
        return None
    if isinstance(target, int) and not isinstance(target, bool):
        return target
    choices = [str(arg[1]).removeprefix(" ") for arg in sample.get("arguments", [])]
    matches = [i for i, c in enumerate(choices) if c == target]
    if len(matches) == 1:
        return matches[0]
    if len(scores) == 2:
        best = 0 if scores[0] >= scores[1] else 1
        return best if correct else 1 - best
    return None


@dataclass(frozen=True)
class Comparison:
    """Reference against quantized on one task."""

    n: int
    acc_ref: float
    acc_quant: float
    flips_to_wrong: int
    flips_to_right: int
    flip_rate: float
    error_jaccard: float
    mcnemar: dict[str, float]
    flips_by_margin: list[dict[str, Any]]
    fp_fn: dict[str, Any] | None = None
    acc_norm: dict[str, Any] | None = None

    @property
    def delta(self) -> float:
        return self.acc_quant - self.acc_ref

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "delta": self.delta}


def compare_samples(
    ref: list[SampleRecord], quant: list[SampleRecord], *, task: str, two_way: bool = False
) -> Comparison:
    """Compare two runs over the same items (same ids and prompts, in any order) on ``acc``;
    on ``acc_norm`` too where the task has it (in ``acc_norm``, without margins or FP/FN)."""
    pairs = _pair(ref, quant, task)
    stats = verdict_stats([a.correct for a, _ in pairs], [b.correct for _, b in pairs])
    norm = None
    if all(a.correct_norm is not None and b.correct_norm is not None for a, b in pairs):
        norm = verdict_stats(
            [bool(a.correct_norm) for a, _ in pairs], [bool(b.correct_norm) for _, b in pairs]
        )
    return Comparison(
        **stats,
        flips_by_margin=flips_by_margin(pairs),
        fp_fn=fp_fn_change(ref, quant) if two_way else None,
        acc_norm=norm,
    )


def verdict_stats(r: list[bool], q: list[bool]) -> dict[str, Any]:
    """Accuracies, flips both ways, flip rate, error-set Jaccard and McNemar of two verdict
    lists over the same items."""
    n = len(r)
    to_wrong = sum(a and not b for a, b in zip(r, q, strict=True))
    to_right = sum(b and not a for a, b in zip(r, q, strict=True))
    err_r = {i for i, ok in enumerate(r) if not ok}
    err_q = {i for i, ok in enumerate(q) if not ok}
    union = err_r | err_q
    return {
        "n": n,
        "acc_ref": sum(r) / n,
        "acc_quant": sum(q) / n,
        "flips_to_wrong": to_wrong,
        "flips_to_right": to_right,
        "flip_rate": (to_wrong + to_right) / n,
        "error_jaccard": len(err_r & err_q) / len(union) if union else 1.0,
        "mcnemar": mcnemar(to_wrong, to_right),
    }


def _pair(
    ref: list[SampleRecord], quant: list[SampleRecord], task: str
) -> list[tuple[SampleRecord, SampleRecord]]:
    if not ref:
        raise DataError(f"task {task}: no samples to compare")
    by_id = {s.doc_id: s for s in quant}
    if len(by_id) != len(ref) or any(s.doc_id not in by_id for s in ref):
        raise DataError(
            f"task {task}: the reference has {len(ref)} samples and the quantized run "
            f"{len(quant)}, with different document ids; evaluate both with the same --limit"
        )
    pairs = [(s, by_id[s.doc_id]) for s in sorted(ref, key=lambda s: s.doc_id)]
    for a, b in pairs:
        if (a.doc_hash, a.prompt_hash) != (b.doc_hash, b.prompt_hash):
            raise DataError(
                f"task {task}, document {a.doc_id}: the two runs saw different documents or "
                "prompts (different data files, harness versions or few-shot settings)"
            )
        if len(a.scores) != len(b.scores):
            raise DataError(f"task {task}, document {a.doc_id}: different numbers of choices")
    return pairs


def mcnemar(b: int, c: int) -> dict[str, float]:
    """McNemar's test on the discordant pairs (b: right → wrong, c: wrong → right): the exact
    two-sided binomial p-value and the continuity-corrected chi-square statistic
    max(|b − c| − 1, 0)² / (b + c) and its p-value."""
    from scipy.stats import binomtest, chi2

    n = b + c
    if n == 0:
        return {"b": b, "c": c, "p_exact": 1.0, "chi2": 0.0, "p_chi2": 1.0}
    stat = max(abs(b - c) - 1, 0) ** 2 / n  # continuity-corrected; 0 when b = c
    return {
        "b": b,
        "c": c,
        "p_exact": float(binomtest(min(b, c), n, 0.5).pvalue),
        "chi2": float(stat),
        "p_chi2": float(chi2.sf(stat, 1)),
    }


def flips_by_margin(pairs: list[tuple[SampleRecord, SampleRecord]]) -> list[dict[str, Any]]:
    """Flip counts and rates in buckets of the reference model's top-two margin."""
    rows = []
    for lo, hi in zip(MARGIN_EDGES[:-1], MARGIN_EDGES[1:], strict=True):
        inside = [(a, b) for a, b in pairs if a.margin is not None and lo <= a.margin < hi]
        flips = sum(a.correct != b.correct for a, b in inside)
        rows.append(
            {
                "lo": lo,
                "hi": None if math.isinf(hi) else hi,
                "n": len(inside),
                "flips": flips,
                "rate": flips / len(inside) if inside else None,
            }
        )
    return rows


def fp_fn(records: list[SampleRecord]) -> dict[str, float | None]:
    """False positives (predicted 1, gold 0) and false negatives (predicted 0, gold 1) of a
    two-way task, and their ratio (None when there is no false negative)."""
    known = [s for s in records if s.gold is not None and s.pred is not None]
    fp = sum(s.pred == 1 and s.gold == 0 for s in known)
    fn = sum(s.pred == 0 and s.gold == 1 for s in known)
    return {"fp": fp, "fn": fn, "ratio": fp / fn if fn else None}


def fp_fn_change(ref: list[SampleRecord], quant: list[SampleRecord]) -> dict[str, Any]:
    """FP/FN of both runs and the change in their ratio (None where a ratio is undefined)."""
    r, q = fp_fn(ref), fp_fn(quant)
    change = None if r["ratio"] is None or q["ratio"] is None else q["ratio"] - r["ratio"]
    return {"reference": r, "quantized": q, "ratio_change": change}


def accuracy(records: list[SampleRecord]) -> float:
    return sum(s.correct for s in records) / len(records) if records else math.nan
