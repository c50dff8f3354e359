"""Non-additivity arithmetic: pair terms, ratios by kind, the log error."""

from __future__ import annotations

import math

import pytest

from lowbit.allocation.interactions import log_error, pair_rows, pair_terms, summarise
from lowbit.errors import ConfigError

A, B, C = "model.layers.0.a", "model.layers.0.b", "model.layers.3.c"
SINGLES = {(A, 0): 1.0, (B, 0): 2.0, (C, 0): 0.5}
PAIRS = {(A, 0, B, 0): 4.5, (A, 0, C, 0): 1.5, (B, 0, C, 0): 2.0}


def block(name: str) -> int:
    return int(name.split(".")[2])


def test_pair_terms_are_the_excess_over_the_singles():
    assert pair_terms(SINGLES, PAIRS) == {(A, 0, B, 0): 1.5, (A, 0, C, 0): 0.0, (B, 0, C, 0): -0.5}
    with pytest.raises(ConfigError, match="no single measurement"):
        pair_terms({(A, 0): 1.0}, PAIRS)


def test_rows_and_summary_by_kind():
    rows = pair_rows(SINGLES, PAIRS, block)
    assert [(r.kind, r.ratio) for r in rows] == [
        ("within block", 1.5), ("across blocks", 1.0), ("across blocks", 0.8)
    ]  # fmt: skip
    s = summarise(rows)
    assert s["within block"] == {
        "pairs": 1, "median_ratio": 1.5, "min_ratio": 1.5, "max_ratio": 1.5, "share_above_1": 1.0
    }  # fmt: skip
    assert s["across blocks"]["median_ratio"] == pytest.approx(0.9)
    assert s["all"]["pairs"] == 3 and s["all"]["share_above_1"] == pytest.approx(1 / 3)


def test_log_error_is_symmetric_and_refuses_non_positive():
    assert log_error(2.0, 1.0) == log_error(1.0, 2.0) == pytest.approx(math.log(2))
    with pytest.raises(ConfigError, match="positive"):
        log_error(0.0, 1.0)
