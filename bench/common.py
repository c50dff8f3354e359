"""What every benchmark writes beside its figures: the command that ran, the commit it ran at
and the machine it ran on (plus the lowbit and library versions).

    from common import provenance, write_result
    write_result(RESULTS / "spine.json", record)   # adds record["provenance"]

Result files go under ``bench/results/``; small ones (JSON, HTML) are committed, weights and
caches are not (see ``.gitignore``). No heavy imports here.
"""

from __future__ import annotations

import json
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def commit() -> dict[str, Any]:
    """The commit of the working tree (``git rev-parse HEAD``) and whether it had changes."""

    def git(*args: str) -> str | None:
        try:
            run = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return run.stdout.strip() if run.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": git("rev-parse", "HEAD"),
        "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
        "dirty": None if status is None else bool(status),
    }


def command(argv: list[str] | None = None) -> str:
    """The command line as it was typed (interpreter and script as given)."""
    return shlex.join([Path(sys.executable).name, *(sys.argv if argv is None else argv)])


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """Command, commit, machine, versions and time of this run."""
    from lowbit import __version__
    from lowbit._io import library_versions, machine_info

    return {
        "command": command(argv),
        "cwd": str(Path.cwd()),
        **commit(),
        "machine": machine_info(),
        "lowbit_version": __version__,
        "libraries": library_versions(),
        "created_unix": time.time(),
    }


def write_result(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write ``record`` with its ``provenance`` to ``path`` (JSON, indented); returns it."""
    out = {**record, "provenance": provenance()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(out, indent=1, default=str) + "\n")
    tmp.replace(path)
    return out


def median_ms(fn: Callable[[], object], repeat: int = 7) -> float:
    """Milliseconds of ``fn()``: the median of ``repeat`` runs after one to warm up."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def calibration_options(algorithm: str, options: list[str]) -> list[str]:
    """``options`` (the calibration's) for ``lowbit quantize --algorithm algorithm``, or none
    for RTN, which calibrates nothing and refuses them."""
    return [] if algorithm.lower() == "rtn" else options
