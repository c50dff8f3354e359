"""``lowbit plan``/``lowbit pareto --sensitivity in-context`` and ``--method greedy`` on a tiny
model: the plan fits the budget and records its rounds; bad input (a budget the menu cannot
reach, a table from other calibration windows) is named and leaves nothing behind."""

from __future__ import annotations

import json
import re

import pytest

from lowbit.plan import Plan
from tests.cli.test_commands import lowbit

CALIB = ["--calib-windows", "3", "--ctx", "32"]
IN_CONTEXT = ["--sensitivity", "in-context", "--rounds", "3", "--boundary", "3"]
PROBE = ["--probe-windows", "2", "--probe-ctx", "24"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """An evaluation and a calibration text, made once for this module."""
    from lowbit.evaluation.text import BuiltinText, load_text

    root = tmp_path_factory.mktemp("incontext-texts")
    ev, ca = root / "eval.txt", root / "calib.txt"
    ev.write_text(load_text(BuiltinText("python-docs", "eval"))[:30_000])
    ca.write_text(load_text(BuiltinText("python-docs", "calib"))[:30_000])
    return ev, ca


@pytest.fixture(scope="module")
def table(tiny_llama, tmp_path_factory, corpus):
    _, ca = corpus
    root = tmp_path_factory.mktemp("incontext-table")
    out = root / "sens.json"
    menu = ["--bits", "2", "--bits", "3", "--bits", "8", "--group-size", "16"]
    run = lowbit(
        "sensitivity", str(tiny_llama), *menu, "--algorithm", "rtn", "--proxies-only",
        "--calib-text", str(ca), *CALIB, "--probe-ctx", "16", "-o", str(out), cwd=root,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return out


def _plan(tiny_llama, table, tmp_path, ca, *args):
    return lowbit(
        "plan", str(tiny_llama), "--table", str(table), "--calib-text", str(ca), *args,
        cwd=tmp_path,
    )  # fmt: skip


def test_in_context_plan_fits_and_reports_rounds(table, tiny_llama, tmp_path, corpus):
    _, ca = corpus
    out = tmp_path / "plan.yaml"
    args = [*CALIB, *IN_CONTEXT, *PROBE, "--avg-bits", "4", "-o", str(out)]
    run = _plan(tiny_llama, table, tmp_path, ca, *args)
    assert run.returncode == 0, run.stderr
    text = " ".join(run.stderr.split())
    assert "round 1: predicted KL" in text and "decoder passes" in text
    assert "start plan: uniform" in text  # the default start, said
    plan = Plan.load(out)
    data = json.loads(table.read_text())
    bits = sum(
        e["bits"]
        for e in data["entries"]
        if plan.spec_for(e["layer"]).describe() == data["menu"][e["spec"]]["label"]
    )
    n = sum(x["out_features"] * x["in_features"] for x in data["layers"])
    assert bits <= 4.0 * n
    greedy = tmp_path / "greedy.yaml"
    greedy_args = ["--sensitivity", "in-context", "--method", "greedy"]  # no option of rounds
    args = [*CALIB, *greedy_args, *PROBE, "--avg-bits", "4"]
    run = _plan(tiny_llama, table, tmp_path, ca, *args, "-o", str(greedy))
    assert run.returncode == 0, run.stderr
    assert "greedy:" in run.stderr


def test_the_additive_start_and_selection_windows(table, tiny_llama, tmp_path, corpus):
    """``--start additive --metric hessian``: the exact plan on the table's Hessian proxies is
    measured first. ``--select-windows 1`` (uniform start): the start plan and every round's
    plan are scored on the calibration window after the two probe windows (other figures than
    the probe's), and the one of least KL there is chosen."""
    _, ca = corpus
    out, out2 = tmp_path / "plan.yaml", tmp_path / "selected.yaml"
    args = [*CALIB, *IN_CONTEXT, *PROBE, "--avg-bits", "4"]
    more = ["--start", "additive", "--metric", "hessian", "-o", str(out)]
    run = _plan(tiny_llama, table, tmp_path, ca, *args, *more)
    assert run.returncode == 0, run.stderr
    text = " ".join(run.stderr.split())
    start = re.search(
        r"start plan: additive \(the exact single-layer plan\), measured KL (\S+)", text
    )
    assert start and float(start.group(1)) > 0 and out.exists()
    run = _plan(tiny_llama, table, tmp_path, ca, *args, "--select-windows", "1", "-o", str(out2))
    assert run.returncode == 0, run.stderr
    text = " ".join(run.stderr.split())
    start = re.search(r"start plan: uniform [^,]+, measured KL (\S+)", text)
    rounds = re.findall(r"round \d+: predicted KL \S+ measured (\S+) \(", text)
    chosen = re.search(
        r"chosen on the selection windows \(1, 24 tokens\): round (\d+) \(KL (.*?); round 0", text
    )
    assert start and rounds and chosen, text
    scores = dict(re.findall(r"round (\d+): (\S+?)(?:,|$)", chosen.group(2)))
    assert set(scores) == {str(k) for k in range(len(rounds) + 1)}  # the start and each round
    assert scores["0"] != start.group(1)  # scored on other windows than the probe's
    best = min(scores, key=lambda k: (float(scores[k]), int(k)))
    assert chosen.group(1) == best


def test_a_held_out_probe_with_the_additive_start_and_selection(
    table, tiny_llama, tmp_path, corpus
):
    """``--probe-held-out``: the probe's and the selection's windows are drawn outside the
    calibration windows, so selection windows may go with a start fitted on the table; the
    plan records the probe's configuration."""
    _, ca = corpus
    out = tmp_path / "held.yaml"
    args = [*CALIB, *IN_CONTEXT, *PROBE, "--avg-bits", "4", "--probe-held-out"]
    more = ["--start", "additive", "--metric", "hessian", "--select-windows", "1"]
    run = _plan(tiny_llama, table, tmp_path, ca, *args, *more, "-o", str(out))
    assert run.returncode == 0, run.stderr
    text = " ".join(run.stderr.split())
    assert "chosen on the selection windows (1, 24 tokens)" in text and out.exists()
    assert "in-context probe: 2 × 24 tokens of held-out windows: seeded random offsets" in text
    assert "overlapping no calibration window" in text


def test_a_table_measured_on_held_out_windows(table, tiny_llama, tmp_path, corpus):
    """``lowbit sensitivity --probe-held-out`` measures the KL on held-out windows (recorded,
    with their hash) and the proxies on the calibration windows as before; selection windows
    that would overlap the table's held-out KL windows are refused with a start fitted on it."""
    _, ca = corpus
    out = tmp_path / "held.json"
    menu = ["--bits", "2", "--bits", "3", "--bits", "8", "--group-size", "16"]
    run = lowbit(
        "sensitivity", str(tiny_llama), *menu, "--algorithm", "rtn", "--calib-text", str(ca),
        *CALIB, "--probe-ctx", "16", "--probe-windows", "2", "--probe-held-out", "-o", str(out),
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    held, base = json.loads(out.read_text()), json.loads(table.read_text())
    assert held["probe"]["probe_held_out"] is True and base["probe"]["probe_held_out"] is False
    info = held["probe"]["calibration"]["held_out"]
    assert info["windows"] == 2 and len(info["sha256"]) == 16
    assert held["probe"]["calibration_sha256"] == base["probe"]["calibration_sha256"]
    hessians = {(e["layer"], e["spec"]): e["hessian"] for e in base["entries"]}
    assert all(e["kl"] > 0 for e in held["entries"])
    assert {(e["layer"], e["spec"]): e["hessian"] for e in held["entries"]} == hessians
    bad = tmp_path / "bad.yaml"
    args = [*CALIB, *IN_CONTEXT, "--probe-windows", "1", "--probe-ctx", "16", "--probe-held-out"]
    more = ["--start", "additive", "--metric", "kl", "--select-windows", "1", "--avg-bits", "4"]
    run = _plan(tiny_llama, out, tmp_path, ca, *args, *more, "-o", str(bad))
    assert run.returncode == 2, run.stderr
    assert "the table's KL was measured on the first 2 held-out windows" in run.stderr
    assert "give --probe-windows 2 or more" in " ".join(run.stderr.split()) and not bad.exists()


def test_in_context_bad_input_writes_nothing(table, tiny_llama, tmp_path, corpus):
    _, ca = corpus
    recorded = json.loads(table.read_text())["probe"]["calibration_sha256"]
    cases = [
        ([*CALIB, "--avg-bits", "1"], "smallest achievable is 3.0000 bits per weight"),
        ([*CALIB, "--avg-bits", "12"], "the largest useful one 9.0000 bits per weight"),
        (["--calib-windows", "4", "--ctx", "32", "--avg-bits", "4"], recorded),
        ([*CALIB, "--avg-bits", "4", "--rounds", "0"], "rounds must be at least 1"),
        ([*CALIB, "--avg-bits", "4", "--start", "middle"], "unknown in-context start plan"),
        # the additive start solves on the table's --metric values: a proxies-only table has no KL
        ([*CALIB, "--avg-bits", "4", "--start", "additive"], "has no 'kl' values"),
        ([*CALIB, "--avg-bits", "4", "--select-windows", "2"], "do not fit in the 3 calibration"),
        ([*CALIB, "--avg-bits", "4", "--select-windows", "-1"], "must be 0 (none) or more"),
        (
            [
                *CALIB,
                "--avg-bits",
                "4",
                "--start",
                "additive",
                "--metric",
                "hessian",
                "--select-windows",
                "1",
            ],
            "no window is held out from it",
        ),
    ]
    for args, message in cases:
        out = tmp_path / "bad.yaml"
        run = _plan(tiny_llama, table, tmp_path, ca, *IN_CONTEXT, *PROBE, *args, "-o", str(out))
        assert run.returncode == 2, (args, run.stderr)
        assert message in run.stderr, (args, run.stderr)
        assert not out.exists()
    # options the allocation would ignore are refused (before the model loads), by flag
    ignored = [
        (["--method", "greedy", *IN_CONTEXT], "--boundary 3: options of the iterated exact"),
        (["--method", "greedy", "--sensitivity", "in-context", "--start", "additive"],
         "--start additive: options of the iterated exact plan"),
        (["--method", "llamacpp", "--sensitivity", "in-context"],
         "--method llamacpp: the llama.cpp-style mix is fixed by rule"),
        (["--select-windows", "2", "--rounds", "4"],
         "--rounds 4, --probe-ctx 24, --select-windows 2: in-context options, which"),
        (["--probe-held-out"], "--probe-held-out: in-context options, which"),
    ]  # fmt: skip
    for args, message in ignored:
        out = tmp_path / "bad.yaml"
        run = _plan(tiny_llama, table, tmp_path, ca, *CALIB, *PROBE, *args, "--avg-bits", "4",
                    "-o", str(out))  # fmt: skip
        assert run.returncode == 2, (args, run.stderr)
        assert message in " ".join(run.stderr.split()), (args, run.stderr)
        assert not out.exists()
    # the other calibration set's hash is named beside the table's
    run = _plan(
        tiny_llama, table, tmp_path, ca, *IN_CONTEXT, *PROBE, "--calib-windows", "4",
        "--ctx", "32", "--avg-bits", "4", "-o", str(tmp_path / "bad.yaml"),
    )  # fmt: skip
    assert run.returncode == 2
    assert f"calibration windows {recorded}, not on the ones given here (" in run.stderr
    given = run.stderr.split("given here (")[1][:16]
    assert len(given) == 16 and given != recorded


def test_pareto_in_context_points_record_rounds(table, tiny_llama, tmp_path, corpus):
    ev, ca = corpus
    out = tmp_path / "sweep"
    run = lowbit(
        "pareto", str(tiny_llama), "--table", str(table), "-o", str(out), "--budget", "4",
        "--uniform-bits", "3", "--uniform-group", "16", "--algorithm", "rtn", "--metric",
        "fisher", "--eval-text", str(ev), "--windows", "2", "--calib-text", str(ca), *CALIB,
        *IN_CONTEXT, *PROBE, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    points = {p["name"]: p for p in json.loads((out / "pareto.json").read_text())["points"]}
    assert {"exact 4", "in-context 4", "greedy 4"} <= set(points)
    record = points["in-context 4"]["allocation"]
    assert record["sensitivity"] == "in-context" and record["wall_s"] > 0
    assert record["stats"]["decoder_passes"] > 0 and record["rounds"]
    assert 0 < record["cost"]["decoder_passes"] <= record["stats"]["decoder_passes"]
    best = min(r["measured_kl"] for r in record["rounds"])
    assert best <= record["rounds"][0]["measured_kl"]
    assert points["in-context 4"]["bits_per_weight_linear"] <= 4.0 + 1e-9
    assert points["greedy 4"]["bits_per_weight_linear"] <= 4.0 + 1e-9


@pytest.mark.parametrize("command", ["plan", "pareto"])
def test_the_commands_in_context_defaults_are_the_configurations(command):
    """A single-layer run refuses in-context options other than their defaults, which are
    InContext's: a command whose own defaults drifted from them would refuse every run."""
    import inspect

    from lowbit.cli.pareto import pareto
    from lowbit.cli.plan import plan
    from lowbit.workflows.incontext import InContext

    params = inspect.signature({"plan": plan, "pareto": pareto}[command]).parameters
    default = InContext()
    expected = {**vars(default), **vars(default.probe)}
    for name in ("rounds", "boundary", "probe_windows", "probe_ctx", "start", "select_windows"):
        assert params[name].default == expected[name], name
