""" "This machine" as a :class:`Hardware`: matrix-multiply peaks, memory bandwidth and the fixed
cost of one operator, measured by micro-benchmarks on the current device and cached."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from lowbit.perf.hardware import Hardware

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
VERSION = 1


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _best(fn: Any, device: str, repeats: int = 5) -> float:
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak(dtype: torch.dtype, device: str, n: int) -> float:
    """FLOP/s of an n × n × n matrix multiply (best of five)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2.0 * n**3 / _best(lambda: torch.mm(a, b), device)


def bandwidth(device: str, nbytes: int) -> dict[str, float]:
    """Bytes/s reading a large fp32 tensor (a sum) and streaming a matrix through a
    matrix-vector product (what a decode step does with every weight)."""
    n = nbytes // 4
    x = torch.ones(n, device=device)
    read = nbytes / _best(lambda: x.sum(), device)
    cols = 4096
    W = x[: (n // cols) * cols].view(-1, cols)
    v = torch.ones(cols, device=device)
    gemv = W.numel() * 4 / _best(lambda: torch.mv(W, v), device)
    return {"read": read, "gemv": gemv}


def op_overhead(device: str) -> float:
    """Seconds of one small module call (dispatch, launch): the floor under every operator."""
    lin = torch.nn.Linear(64, 64).to(device)
    x = torch.randn(1, 64, device=device)
    reps = 200
    with torch.no_grad():

        def many() -> None:
            for _ in range(reps):
                lin(x)

        return _best(many, device) / reps


def _machine_id(device: str) -> str:
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor()
    raw = (
        f"{VERSION}|{device}|{name}|{os.cpu_count()}|{torch.get_num_threads()}|{torch.__version__}"
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def this_machine(cache_dir: Path | None = None, *, refresh: bool = False) -> Hardware:
    """Measure (or read the cached measurement of) the current device: CUDA when present."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = (
        (cache_dir or Path.home() / ".cache" / "lowbit")
        / "hardware"
        / f"{_machine_id(device)}.json"
    )
    if path.is_file() and not refresh:
        return _hardware(json.loads(path.read_text()))
    data = _measure(device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
    return _hardware(data)


def _measure(device: str) -> dict[str, Any]:
    gpu = device.startswith("cuda")
    n = 8192 if gpu else 1024
    peaks = {k: matmul_peak(dt, device, n) for k, dt in _DTYPES.items() if gpu or k != "fp16"}
    bw = bandwidth(device, (1 << 30) if gpu else (256 << 20))
    if gpu:
        name, memory = (
            torch.cuda.get_device_name(0),
            torch.cuda.get_device_properties(0).total_memory,
        )
    else:
        import psutil

        name, memory = platform.processor() or platform.machine(), psutil.virtual_memory().total
    return {
        "name": f"this machine ({name}, {device}, {torch.get_num_threads()} threads)",
        "memory_bytes": float(memory),
        "peaks": peaks,
        "bandwidth": max(bw.values()),
        "bandwidth_kernels": bw,
        "overhead_s": op_overhead(device),
        "device": device,
        "measured_unix": time.time(),
    }


def _hardware(d: dict[str, Any]) -> Hardware:
    return Hardware(
        key="this",
        name=d["name"],
        memory_bytes=d["memory_bytes"],
        bandwidth=d["bandwidth"],
        peaks=d["peaks"],
        interconnect=d["bandwidth"],
        interconnect_name="none (one device)",
        overhead_s=d["overhead_s"],
        sources=("measured by lowbit.perf.measure",),
        extra={"bandwidth_kernels": d["bandwidth_kernels"], "device": d["device"]},
    )
