"""The README's task of one's own (examples/tasks/facts.yaml), end to end on the built-in
model, run as the README runs it (from the repository root): every statement scored, the
harness's accuracy the mean of the per-sample verdicts, "yes" stated as the positive label."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.test_commands import lowbit
from tests.conftest import require_builtin_model

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
COMMAND = ("eval", "smollm2-135m", "--tasks", "examples/tasks/facts.yaml")


def test_readme_task_of_ones_own(tmp_path: Path) -> None:
    require_builtin_model()
    assert "lowbit " + " ".join(COMMAND) in (ROOT / "README.md").read_text()
    out = tmp_path / "facts.json"
    run = lowbit(*COMMAND, "-o", str(out), cwd=ROOT)
    assert run.returncode == 0, run.stderr
    tasks = json.loads(out.read_text())["tasks"]
    samples = tasks["samples"]["yesno_facts"]
    lines = (ROOT / "examples" / "tasks" / "facts.jsonl").read_text().splitlines()
    assert len(samples) == len(lines) == 32
    gold = [int(json.loads(line)["answer"] == "yes") for line in lines]
    assert [s["gold"] for s in samples] == gold
    verdicts = [s["correct"] for s in samples]
    assert verdicts == [max((0, 1), key=lambda i: s["scores"][i]) == s["gold"] for s in samples]
    assert tasks["metrics"]["yesno_facts"]["acc"] == pytest.approx(sum(verdicts) / len(samples))
    assert tasks["info"]["positive_label"] == {"yesno_facts": "'yes' (choice 2)"}
