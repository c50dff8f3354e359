"""``lowbit results`` on a store (list, filter, CSV/JSON export, Pareto HTML) and the bad
input of ``lowbit sweep`` / ``lowbit results``: exit code 2, one line, nothing written."""

from __future__ import annotations

import csv
import json
import sqlite3

from lowbit.sweep.store import SCHEMA_VERSION, open_store
from tests.cli.test_commands import lowbit


def _store(path):
    store = open_store(path)
    for bits, kl in ((4, 0.02), (3, 0.1), (8, 0.001)):
        d = store.add(f"m | rtn int{bits} g64 | text", {"bits": bits})
        store.start(d)
        metrics = {"bits_per_weight_linear": bits + 0.25, "kl_mean": kl, "perplexity": 10 + kl}
        store.finish(d, metrics, {}, {"timings_s": {"quantize_s": 1.0}}, 2.0)
    store.start(store.add("m | rtn int2 g64 | text", {"bits": 2}))
    store.close()
    return path


def test_results_lists_filters_and_exports(tmp_path):
    path = _store(tmp_path / "s.sqlite")
    run = lowbit("results", str(path), "--status", "done", "--export", "done.csv",
                 "--pareto", "p.html", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader((tmp_path / "done.csv").read_text().splitlines()))
    assert sorted(float(r["kl_mean"]) for r in rows) == [0.001, 0.02, 0.1]
    html = (tmp_path / "p.html").read_text()
    assert "<svg" in html and "rtn int3 g64" in html and "<script src" not in html
    run = lowbit("results", str(path), "--match", "INT2", "--export", "o.json", cwd=tmp_path)
    (only,) = json.loads((tmp_path / "o.json").read_text())
    assert (only["status"], only["metrics"]) == ("running", None)


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("models: [m]\nformats: [int4]\ncolor: red\n")
    run = lowbit("sweep", str(bad), "--local", cwd=tmp_path)
    assert run.returncode == 2 and "unknown field 'color'" in run.stderr
    assert not list(tmp_path.glob("*.sqlite"))  # nothing written
    newer = _store(tmp_path / "n.sqlite")
    with sqlite3.connect(newer) as db:
        db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    run = lowbit("results", str(newer), cwd=tmp_path)
    assert run.returncode == 2 and "newer lowbit" in run.stderr
    run = lowbit("results", str(tmp_path / "none.sqlite"), cwd=tmp_path)
    assert run.returncode == 2 and "does not exist" in run.stderr
    run = lowbit("results", str(_store(tmp_path / "x.sqlite")), "--export", "a.txt", cwd=tmp_path)
    assert run.returncode == 2 and ".csv or .json" in run.stderr


def test_sweep_without_ray_is_a_clear_error(tmp_path, monkeypatch, tiny_llama):
    import sys

    from tests.sweep.conftest import write_sweep

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the [sweep] extra were not installed
    sweep = write_sweep(tmp_path / "s.yaml", tiny_llama, ["int4"], [32])
    run = lowbit("sweep", str(sweep), cwd=tmp_path)
    assert run.returncode == 2 and "pip install 'lowbit[sweep]'" in run.stderr
    assert not list(tmp_path.glob("*.sqlite"))  # nothing written
