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
VERSION = 3


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


def compute_curve(dtype: torch.dtype, device: str, sides: tuple[int, ...]) -> list:
    """(FLOPs, FLOP/s) of square matrix multiplies of each side: small ones do not reach the
    peak, and the model's prefill matmuls are of every size."""
    return [(2.0 * n**3, matmul_peak(dtype, device, n)) for n in sides]


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


def linear_bandwidth_curve(device: str, total: int) -> list[tuple[float, float]]:
    """(matrix bytes, bytes/s) of a one-row linear layer (a decode step's GEMV) streaming
    through square fp32 matrices of 256 kB to 64 MB, cycling over ``total`` bytes of them so
    that no matrix is still in cache when it is read again."""
    x_cache: dict[int, torch.Tensor] = {}
    curve = []
    for side in (256, 512, 1024, 2048, 4096):
        size = side * side * 4
        mats = [torch.randn(side, side, device=device) for _ in range(max(total // size, 2))]
        x = x_cache.setdefault(side, torch.randn(1, side, device=device))

        def stream(mats: list = mats, x: torch.Tensor = x) -> None:
            for W in mats:
                torch.nn.functional.linear(x, W)

        curve.append((float(size), size * len(mats) / _best(stream, device, 3)))
        del mats
    return curve


def dispatch_costs(device: str) -> dict[str, float]:
    """Seconds per dispatch of small operators (the mean over the elementwise, reduction and
    view operators a decoder layer runs, on a 1 × 576 tensor) and per module call (a tiny
    ``nn.Linear`` called as a module minus the same call as a function)."""
    x = torch.randn(1, 576, device=device)
    ops = (
        lambda: x.add(1.0),
        lambda: x * x,
        lambda: x.pow(2),
        lambda: x.mean(-1, keepdim=True),
        lambda: torch.rsqrt(x),
        lambda: torch.cat([x, x], -1),
        lambda: x.view(1, 1, 576),
        lambda: x.transpose(0, 1),
    )
    reps = 300

    def loop(fn: Any) -> Any:
        def run() -> None:
            for _ in range(reps):
                fn()

        return run

    dispatch = sum(_best(loop(op), device, 3) for op in ops) / (len(ops) * reps)
    lin = torch.nn.Linear(64, 64, bias=False).to(device)
    xs = x[:, :64]
    with torch.no_grad():
        module = _best(loop(lambda: lin(xs)), device, 3) / reps
        bare = _best(loop(lambda: torch.nn.functional.linear(xs, lin.weight)), device, 3) / reps
    return {"dispatch_s": dispatch, "module_s": max(module - bare, 0.0)}


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
    sides = (512, 1024, 2048, 4096, 8192) if gpu else (64, 128, 256, 512, 1024)
    curves = {k: compute_curve(_DTYPES[k], device, sides) for k in ("fp32", "bf16") if k in peaks}
    for k, curve in curves.items():
        peaks[k] = max(peaks[k], *(y for _, y in curve))
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
        **dispatch_costs(device),
        "compute_curves": curves,
        "bandwidth_curve": linear_bandwidth_curve(device, (1 << 30) if gpu else (256 << 20)),
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
        dispatch_s=d["dispatch_s"],
        module_s=d["module_s"],
        bandwidth_curve=tuple(tuple(p) for p in d["bandwidth_curve"]),
        compute_curves={k: tuple(tuple(p) for p in v) for k, v in d["compute_curves"].items()},
        sources=("measured by lowbit.perf.measure",),
        extra={"bandwidth_kernels": d["bandwidth_kernels"], "device": d["device"]},
    )
