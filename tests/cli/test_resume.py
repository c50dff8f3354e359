"""Crash and resume of ``lowbit quantize``: a real process killed with SIGKILL after a block,
in the middle of a shard or of the checkpoint manifest, then ``--resume``, ends with codes and
scales identical (tensor by tensor, by sha256) to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lowbit.models.files import tensor_digests as tensor_hashes
from tests.cli.test_commands import lowbit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def deep_llama(tmp_path_factory) -> Path:
    """The tiny Llama with 4 blocks (so that a run can be killed between several)."""
    from tests.helpers.tiny import config_for, save_tiny_model

    config = config_for("llama")
    config.num_hidden_layers = 4
    return save_tiny_model(tmp_path_factory.mktemp("deep"), "llama4", config)


def _args(model: Path, out: Path, calib: Path | None, *extra: str) -> list[str]:
    """``calib`` None: no calibration options (RTN refuses them: it would ignore them)."""
    windows = [] if calib is None else ["--calib-text", str(calib), "--calib-windows", "4",
                                        "--ctx", "32"]  # fmt: skip
    return ["quantize", str(model), "-o", str(out), *windows, "--group-size", "32", *extra]


def _killed(point: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-m", "tests.helpers.killer", point, *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def reference(deep_llama, tmp_path_factory) -> tuple[dict[str, str], Path]:
    root = tmp_path_factory.mktemp("ref")
    from lowbit.evaluation.text import BuiltinText, load_text

    calib = root / "calib.txt"
    calib.write_text(load_text(BuiltinText("python-docs", "calib"))[:30_000])
    run = lowbit(*_args(deep_llama, root / "q", calib), cwd=root)
    assert run.returncode == 0, run.stderr
    return tensor_hashes(root / "q"), calib


@pytest.mark.parametrize("point", ["after:0", "mid:2", "manifest:3"])
def test_kill9_then_resume_gives_identical_codes(point, deep_llama, reference, tmp_path):
    hashes, calib = reference
    out = tmp_path / "q"
    args = _args(deep_llama, out, calib)
    killed = _killed(point, args, tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    part = tmp_path / "q.partial"
    assert not out.exists() and part.is_dir()  # nothing that looks complete
    block = int(point.split(":")[1])
    done = json.loads((part / "checkpoint.json").read_text())["blocks"]
    assert sorted(map(int, done)) == list(range(block + 1 if point.startswith("after") else block))
    run = lowbit(*args, "--resume", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert tensor_hashes(out) == hashes
    assert not part.exists() and not (out / "checkpoint.json").exists()
    assert not list(out.glob(".*")), "checkpoint files or stray temporaries were published"
    result = json.loads((tmp_path / "q.result.json").read_text())
    restored = result["result"]["execution"]["resumed"]["blocks_restored"]
    assert restored == len(done) and len(result["result"]["layers"]) == 4 * 7


def test_partial_without_resume_is_refused_and_damaged_shards_are_redone(
    deep_llama, reference, tmp_path
):
    hashes, calib = reference
    out = tmp_path / "q"
    args = _args(deep_llama, out, calib)
    assert _killed("after:2", args, tmp_path).returncode == -signal.SIGKILL
    again = lowbit(*args, cwd=tmp_path)
    assert again.returncode == 2
    assert "q.partial" in again.stderr and "--resume" in again.stderr
    assert "--overwrite" in again.stderr and "Traceback" not in again.stderr
    other = lowbit(*_args(deep_llama, out, calib, "--damp", "0.02"), "--resume", cwd=tmp_path)
    assert other.returncode == 2 and "plan" in other.stderr and "--overwrite" in other.stderr
    assert (tmp_path / "q.partial" / "blocks-00002.safetensors").is_file()  # still there
    shard = tmp_path / "q.partial" / "blocks-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in a code: blocks 1 and 2 are redone
    shard.write_bytes(bytes(data))
    run = lowbit(*args, "--resume", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "redone" in run.stdout + run.stderr
    assert tensor_hashes(out) == hashes


@pytest.mark.parametrize("method", ["awq", "rtn"])
def test_interrupted_then_resumed_in_process(method, tiny_llama, reference, tmp_path, monkeypatch):
    """AWQ's smoothed norms and RTN's data-free path are restored too (interrupted by an
    exception after block 0 of 2, as Ctrl-C would)."""
    from lowbit.models.checkpoint import Checkpoint

    calib = None if method == "rtn" else reference[1]
    args = _args(tiny_llama, tmp_path / "q", calib, "--algorithm", method)
    ref = lowbit(*_args(tiny_llama, tmp_path / "ref", calib, "--algorithm", method), cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    record = Checkpoint.record

    def interrupted(self, i, *a, **k):  # type: ignore[no-untyped-def]
        record(self, i, *a, **k)
        if i == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "record", interrupted)
    lowbit(*args, cwd=tmp_path)  # interrupted (its exit status: tests/cli/test_interruption.py)
    monkeypatch.setattr(Checkpoint, "record", record)
    assert (tmp_path / "q.partial" / "checkpoint.json").is_file()
    run = lowbit(*args, "--resume", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert tensor_hashes(tmp_path / "q") == tensor_hashes(tmp_path / "ref")


def test_bad_options_leave_no_partial(deep_llama, reference, tmp_path):
    _, calib = reference
    run = lowbit(*_args(deep_llama, tmp_path / "q", calib, "--algorithm", "nope"), cwd=tmp_path)
    assert run.returncode == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == []
