"""Fixtures of the command-line tests."""

from __future__ import annotations

import pytest


@pytest.fixture()
def corpus(tmp_path):
    """An evaluation and a calibration text (two different sources), 30,000 characters each."""
    from lowbit.evaluation.text import BuiltinText, load_text

    ev, ca = tmp_path / "eval.txt", tmp_path / "calib.txt"
    ev.write_text(load_text(BuiltinText("python-docs", "eval"))[:30_000])
    ca.write_text(load_text(BuiltinText("python-docs", "calib"))[:30_000])
    return ev, ca
