"""``lowbit report``: one self-contained page from the results of real commands on a tiny model,
opened in headless Chromium: the scripts run without a console error, every section and chart
is there, a screenshot is kept, and XSS payloads in a model's name and in a text's name are
shown as text, never executed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cli.test_commands import lowbit
from tests.conftest import require_chromium
from tests.helpers.taskdata import make_task_data

# executed, either payload would change the page's title (an <img> whose source fails to load
# runs its onerror; an <svg> runs its onload)
MODEL_XSS = "<img src=x onerror=document.title='pwned-model'>"
TEXT_XSS = "<svg onload=document.title='pwned-text'>.txt"
CALIB = ["--calib-windows", "4", "--ctx", "32"]


@pytest.fixture(scope="module")
def results(tiny_llama, tmp_path_factory, corpus_texts) -> tuple[Path, list[str]]:
    """Results of quantize, compare (tasks and text), eval, sensitivity, pareto and perf."""
    root = tmp_path_factory.mktemp("report")
    mp = pytest.MonkeyPatch()
    mp.setenv("LOWBIT_DATA_DIR", str(make_task_data(root / "data")))
    model = root / MODEL_XSS
    shutil.copytree(tiny_llama, model)
    ev, ca = corpus_texts
    text = root / TEXT_XSS
    shutil.copy(ev, text)
    commands = [
        ["quantize", str(model), "-o", "q", "--bits", "3", "--group-size", "32",
         "--algorithm", "rtn"],
        ["compare", str(model), "q", "--tasks", "piqa,mmlu", "--batch-size", "4",
         "--eval-text", str(text), "--windows", "2", "--ctx", "64", "-o", "cmp.json"],
        ["eval", "q", "--eval-text", str(text), "--windows", "2", "--ctx", "64", "-o",
         "eval.json"],
        ["sensitivity", str(model), "--bits", "2", "--bits", "4", "--group-size", "16",
         "--calib-text", str(ca), *CALIB, "--probe-ctx", "16", "-o", "sens.json"],
        ["pareto", str(model), "--table", "sens.json", "-o", "sweep", "--budget", "3.5",
         "--uniform-bits", "4", "--uniform-group", "16", "--eval-text", str(ev), "--windows",
         "2", "--calib-text", str(ca), *CALIB],
        ["perf", str(model), "--hw", "a100-40gb", "--batch", "4", "--prompt", "64", "--gen",
         "8", "-o", "perf.json"],
    ]  # fmt: skip
    try:
        for args in commands:
            run = lowbit(*args, cwd=root)
            assert run.returncode == 0, (args[0], run.stderr)
    finally:
        mp.undo()
    files = ["q.result.json", "cmp.json", "eval.json", "sens.json", "sweep/pareto.json",
             "perf.json"]  # fmt: skip
    return root, files


@pytest.fixture(scope="module")
def corpus_texts(tmp_path_factory) -> tuple[Path, Path]:
    from lowbit.evaluation.text import BuiltinText, load_text

    root = tmp_path_factory.mktemp("texts")
    ev, ca = root / "eval.txt", root / "calib.txt"
    ev.write_text(load_text(BuiltinText("python-docs", "eval"))[:30_000])
    ca.write_text(load_text(BuiltinText("python-docs", "calib"))[:30_000])
    return ev, ca


def chromium(page: Path, out: Path) -> tuple[str, list[str]]:
    """The DOM after the page's scripts ran, its console messages and errors (Chromium's log),
    and a screenshot at ``out``."""
    exe = require_chromium()
    profile = f"--user-data-dir={page.parent / 'chromium-profile'}"
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--enable-logging=stderr", "--v=0", profile]  # fmt: skip
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = subprocess.run([*base, f"--screenshot={out}", "--window-size=1280,4000",
                           page.as_uri()], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert shot.returncode == 0 and out.is_file(), shot.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    return dom.stdout, console


def test_chromium_check_sees_console_errors_and_executed_payloads(tmp_path):
    """The browser check itself: a page whose script fails and a raw payload are caught."""
    page = tmp_path / "bad.html"
    page.write_text(f"<html><head><title>t</title></head><body>{MODEL_XSS}"
                    "<script>undefinedFunction()</script></body></html>")  # fmt: skip
    dom, console = chromium(page, tmp_path / "bad.png")
    assert any("undefinedFunction" in line for line in console)
    assert "<title>pwned-model</title>" in dom


def test_report_page_in_headless_chromium(results, tmp_path):
    root, files = results
    out = root / "report.html"
    run = lowbit("report", *files, "-o", str(out), "--title", "tiny run", cwd=root)
    assert run.returncode == 0, run.stderr
    html = out.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing fetched
    artefacts = Path(os.environ.get("LOWBIT_ARTEFACTS", tmp_path))
    artefacts.mkdir(parents=True, exist_ok=True)
    dom, console = chromium(out, artefacts / "report.png")
    print(f"report screenshot: {artefacts / 'report.png'}")
    assert console == [], console
    assert "<title>tiny run</title>" in dom  # no payload ran
    assert "pwned" not in dom.split("</title>")[0]
    assert "<img" not in dom and "<svg onload" not in dom
    assert "&lt;img src=x onerror=document.title='pwned-model'&gt;" in dom  # shown as text
    assert "&lt;svg onload=document.title='pwned-text'&gt;" in dom
    sections = re.findall(r'<section id="([^"]+)"', dom)
    assert re.search(r'data-sections="(\d+)"', dom).group(1) == str(len(sections))  # JS ran
    for kind, charts in (("plan", 1), ("compare", 3), ("flips", 0), ("text", 1),
                         ("sensitivity", 3), ("pareto", 2), ("roofline", 2)):  # fmt: skip
        found = [s for s in sections if s.endswith(f"-{kind}")]
        assert found, f"no {kind} section in {sections}"
        body = dom.split(f'<section id="{found[0]}"')[1].split("</section>")[0]
        assert body.count("<svg") >= charts, (kind, body.count("<svg"))
    assert "overview" in sections and "per-token KL divergence" in dom
    evaluated = json.loads((root / "eval.json").read_text())["results"]
    for r in evaluated.values():  # the figures themselves, as the result holds them
        assert f"<td>{r['perplexity']:.4g}</td>" in dom
        if r.get("kl"):
            assert f"<td>{r['kl']['mean']:.4g}</td>" in dom


def test_report_refuses_a_file_that_is_not_a_result(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"hello": 1}')
    run = lowbit("report", str(bad), "-o", "r.html", cwd=tmp_path)
    assert run.returncode == 2 and "x.json" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "r.html").exists()
