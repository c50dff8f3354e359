"""The bad-input catalogue (issue 18): every case gives a message naming the input and the fix,
a non-zero exit (2 for usage), no traceback, and writes nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cli.test_commands import lowbit
from tests.helpers.bad_inputs import CASES, FAST, Case
from tests.helpers.tiny import make_tiny_model


@pytest.fixture(scope="module")
def places(tiny_llama, tiny_root, tmp_path_factory) -> dict[str, str]:
    """The placeholders of the catalogue, made once for the module."""
    from lowbit.evaluation.text import BuiltinText, load_text

    root = tmp_path_factory.mktemp("catalogue")
    ev, ca = root / "eval.txt", root / "calib.txt"
    ev.write_text(load_text(BuiltinText("python-docs", "eval"))[:20_000])
    ca.write_text(load_text(BuiltinText("python-docs", "calib"))[:20_000])
    saved = root / "saved"
    run = lowbit("quantize", str(tiny_llama), "-o", str(saved), "--algorithm", "rtn", cwd=root)
    assert run.returncode == 0, run.stderr
    table = root / "sens.json"
    run = lowbit(
        "sensitivity", str(tiny_llama), "--bits", "4", "--bits", "8", "--group-size", "32",
        "--calib-text", str(ca), *FAST, "--probe-ctx", "16", "--probe-windows", "1",
        "-o", str(table), cwd=root,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return {
        "{model}": str(tiny_llama),
        "{other}": str(make_tiny_model(tiny_root, "qwen3")),
        "{saved}": str(saved),
        "{table}": str(table),
        "{ev}": str(ev),
        "{ca}": str(ca),
    }


def _fill(text: str, subs: dict[str, str]) -> str:
    for key, value in subs.items():
        text = text.replace(key, value)
    return text


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))}


def _flat(text: str) -> str:
    """The message with rich's panel borders and line wrapping undone."""
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text))


def test_the_catalogue_is_large_and_distinct():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)
    assert len({(c.args, c.expect) for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case: Case, places, tiny_llama, tmp_path):
    inputs, work = tmp_path / "in", tmp_path / "work"
    inputs.mkdir()
    work.mkdir()
    subs = {**places, "{in}": str(inputs)}
    if case.setup is not None:
        case.setup(inputs, tiny_llama)
    before = _tree(inputs)
    run = lowbit(*[_fill(a, subs) for a in case.args], cwd=work)
    message = _flat(run.stderr)
    assert "Traceback" not in run.stderr + run.stdout, run.stderr
    assert run.returncode == case.code, run.stdout + run.stderr
    for fragment in case.expect:
        assert _flat(_fill(fragment, subs)) in message, run.stderr
    assert not list(work.iterdir()), "written in the working directory"
    assert _tree(inputs) == before, "the inputs' folder changed"
    for out in case.outputs:
        assert not (work / _fill(out, subs)).exists()
