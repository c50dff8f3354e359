"""Interruption and a full disk (issue 18): SIGINT / SIGTERM in the middle of a real
``python -m lowbit quantize`` exit 130 / 143 with one line saying what happened, and a write
that runs out of space names the output; neither leaves anything that looks complete."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.test_commands import lowbit
from tests.helpers.tiny import config_for, save_tiny_model


@pytest.fixture(scope="module")
def deep_llama(tiny_root: Path) -> Path:
    """The tiny Llama with 8 blocks: a quantization long enough to be interrupted."""
    config = config_for("llama")
    config.num_hidden_layers = 8
    return save_tiny_model(tiny_root, "llama-8-blocks", config)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(("sig", "code", "name"), [(signal.SIGINT, 130, "SIGINT"),
                                                   (signal.SIGTERM, 143, "SIGTERM")])  # fmt: skip
def test_a_signal_mid_quantize_exits_non_zero_and_leaves_nothing(
    deep_llama, tmp_path, sig, code, name
):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    args = [sys.executable, "-m", "lowbit", "quantize", str(deep_llama), "-o", "q",
            "--calib-windows", "64", "--ctx", "128"]  # fmt: skip
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".partial") for p in tmp_path.iterdir()):  # mid-run
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the quantization never started writing"
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, out + err
    assert f"interrupted by {name} during `lowbit quantize`: nothing complete was written" in err
    assert "Traceback" not in err
    # no output, no result; at most the checkpoint of the finished blocks, named as partial
    assert _leftovers(tmp_path) in ([], ["q.partial"])
    if _leftovers(tmp_path):
        assert (tmp_path / "q.partial" / "checkpoint.json").is_file()
        assert "--resume" in out


def _full_disk_save_file(tensors, filename, metadata=None):
    Path(filename).write_bytes(b"\0" * 100)  # a partial file, as a full disk leaves one
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_is_named_and_leaves_nothing_simulated(tiny_llama, tmp_path, monkeypatch):
    """ENOSPC raised by the safetensors writer (simulated: every machine can run this)."""
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", _full_disk_save_file)
    run = lowbit("quantize", str(tiny_llama), "-o", "q", "--algorithm", "rtn", cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "no space left on the device of q while writing this directory" in run.stderr
    assert "Traceback" not in run.stderr
    assert _leftovers(tmp_path) == []


@pytest.fixture()
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs (needs root and a kernel that lets this container mount one)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the simulated full-disk test covers the rest")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_named_and_leaves_nothing_tmpfs(tiny_llama, small_tmpfs, tmp_path):
    """A real full disk: a 64 KiB tmpfs, smaller than the quantized tiny model."""
    out = small_tmpfs / "q"
    run = lowbit("quantize", str(tiny_llama), "-o", str(out), "--algorithm", "rtn", cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert f"no space left on the device of {out}" in run.stderr
    assert "Traceback" not in run.stderr
    assert _leftovers(small_tmpfs) == []
