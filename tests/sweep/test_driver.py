"""The driver's resume logic: injected trial failures, and the driver killed (SIGKILL) in the
middle of a sweep then resumed, against an uninterrupted sweep, trial by trial."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lowbit.errors import ConfigError
from lowbit.sweep.driver import default_store, run_sweep
from lowbit.sweep.executors import LocalExecutor
from lowbit.sweep.grid import expand
from lowbit.sweep.spec import load_sweep
from lowbit.sweep.store import config_hash, open_store
from lowbit.sweep.trial import run_trial
from tests.sweep.conftest import write_sweep

ROOT = Path(__file__).resolve().parents[2]


def _rows(store_path: Path) -> dict[str, tuple]:
    """What must be equal between two runs of a sweep, per trial hash."""
    store = open_store(store_path, create=False)
    try:
        return {t.hash: (t.name, t.config, t.status, t.metrics) for t in store.trials()}
    finally:
        store.close()


class _FailOnce:
    """run_trial, raising on the first attempt of the trials named in ``victims``."""

    def __init__(self, victims: set[int]) -> None:
        self.victims, self.calls, self.ran = victims, 0, []

    def __call__(self, digest, config, artefacts):
        self.calls += 1
        if self.calls in self.victims:
            raise RuntimeError(f"injected failure in call {self.calls}")
        self.ran.append(digest)
        return run_trial(digest, config, artefacts)


def test_failed_trials_are_recorded_and_rerun_on_resume(sweep_file):
    spec, store = load_sweep(sweep_file), default_store(sweep_file)
    first = _FailOnce({2, 4})
    summary = run_sweep(spec, store, LocalExecutor(first))
    assert (summary.trials, summary.done, len(summary.failed)) == (4, 2, 2)
    assert all("injected failure" in e for e in summary.failed.values())
    with pytest.raises(ConfigError, match="pass --resume"):
        run_sweep(spec, store, LocalExecutor(first))
    again = _FailOnce(set())
    summary = run_sweep(spec, store, LocalExecutor(again), resume=True)
    assert (summary.skipped, summary.done, summary.failed) == (2, 2, {})
    assert sorted(again.ran) == sorted(first_failed(store))
    rows = _rows(store)
    assert all(r[2] == "done" and r[3]["kl_mean"] > 0 for r in rows.values())
    third = _FailOnce(set())
    assert run_sweep(spec, store, LocalExecutor(third), resume=True).skipped == 4
    assert third.ran == []  # a done trial is never run again


def first_failed(store_path: Path) -> list[str]:
    """The trials that needed two attempts."""
    store = open_store(store_path, create=False)
    try:
        return [t.hash for t in store.trials() if t.attempts == 2]
    finally:
        store.close()


def _lowbit(*args: str) -> list[str]:
    return [sys.executable, "-m", "lowbit", *args]


def _env() -> dict[str, str]:
    src = str(ROOT / "src")
    return {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}


def _done(store_path: Path) -> int:
    if not store_path.exists():
        return 0
    try:
        with sqlite3.connect(store_path, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM trials WHERE status='done'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.fixture()
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): the same sums
    yield
    torch.set_num_threads(before)


def test_driver_killed_mid_sweep_then_resumed_equals_uninterrupted(
    sweep_file, tmp_path, one_thread
):
    env = _env()
    clean = tmp_path / "clean.sqlite"
    run_sweep(load_sweep(sweep_file), clean, LocalExecutor(run_trial))
    killed = tmp_path / "killed.sqlite"
    cmd = _lowbit("sweep", str(sweep_file), "--local", "--store", str(killed))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while _done(killed) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 0 < _done(killed) < 4, "the driver must be killed in the middle of the sweep"
    resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "2 already done" in " ".join((resumed.stdout + resumed.stderr).split())
    assert _rows(killed) == _rows(clean)


def test_a_sweep_runs_its_trials_with_the_threads_it_asks_for(tmp_path, tiny_llama):
    """``runtime: {threads: 1}``: the trial runs (and records) one torch thread, then the driver
    gets its own count back; the thread count is part of the trial's hash."""
    import torch

    sweep = write_sweep(tmp_path / "s.yaml", tiny_llama, ["int4"], [32])
    data = yaml.safe_load(sweep.read_text())
    spec = load_sweep(sweep)
    data["runtime"]["threads"] = 1
    sweep.write_text(yaml.safe_dump(data))
    one = load_sweep(sweep)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ((_, cfg_default),), ((_, cfg_one),) = expand(spec), expand(one)
        run_sweep(one, tmp_path / "one.sqlite", LocalExecutor(run_trial))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert (cfg_default["threads"], cfg_one["threads"]) == (2, 1)
    assert config_hash(cfg_default) != config_hash(cfg_one)
    store = open_store(tmp_path / "one.sqlite", create=False)
    ((t),) = store.trials()
    store.close()
    assert (t.status, t.config["threads"], t.provenance["runtime"]["threads"]) == ("done", 1, 1)


def test_the_thread_count_is_restored_after_a_failing_trial():
    import torch

    from lowbit.runtime import using_cpu_threads

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="trial failed"), using_cpu_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("trial failed")
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="at least 1, got 0"), using_cpu_threads(0):
        pass


class _Fake:
    """An executor whose trials return at once (the driver's bookkeeping alone)."""

    def prepare(self) -> None:
        pass

    def run(self, jobs, artefacts):
        for digest, _ in jobs:
            yield digest, {"metrics": {"kl_mean": 1.0}, "artefacts": {}, "provenance": {},
                           "seconds": 0.0}  # fmt: skip


def _trials(threads: int | None) -> list[tuple[str, dict]]:
    base = [("a", {"model": "m", "plan": {"bits": 4}}), ("b", {"model": "m", "plan": {"bits": 3}})]
    return [(n, c if threads is None else {**c, "threads": threads}) for n, c in base]


def test_resuming_at_another_thread_count_is_refused_naming_both(tmp_path):
    from lowbit.sweep.driver import run_trials

    store = tmp_path / "s.results.sqlite"
    assert run_trials(_trials(1), store, _Fake()).done == 2
    with pytest.raises(ConfigError, match=r"run at 1 torch threads, this run uses 2") as err:
        run_trials(_trials(2), store, _Fake(), resume=True)
    assert "OMP_NUM_THREADS=1" in str(err.value) and "'a'" in str(err.value)
    assert len(_rows(store)) == 2  # nothing added beside the old rows
    assert run_trials(_trials(1), store, _Fake(), resume=True).skipped == 2


def test_resuming_a_store_without_thread_counts_is_refused(tmp_path):
    from lowbit.sweep.driver import run_trials

    store = tmp_path / "old.results.sqlite"
    run_trials(_trials(None), store, _Fake())  # as an earlier lowbit recorded them
    with pytest.raises(ConfigError, match="recorded no torch thread count; this run uses 2"):
        run_trials(_trials(2), store, _Fake(), resume=True)
    assert len(_rows(store)) == 2
    # a store that also holds them at this run's count (as an earlier resume added them
    # beside the old rows) resumes: nothing to run, the old rows stay
    db = open_store(store)
    for name, cfg in _trials(2):
        digest = db.add(name, cfg)
        db.start(digest)
        db.finish(digest, {"kl_mean": 1.0}, {}, {}, 0.0)
    db.close()
    summary = run_trials(_trials(2), store, _Fake(), resume=True)
    assert (summary.skipped, summary.done, len(_rows(store))) == (2, 0, 4)
