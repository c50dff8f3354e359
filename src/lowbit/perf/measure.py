""" "This machine" as a :class:`Hardware`: matrix-multiply peaks, memory bandwidth and the fixed
cost of one operator, measured by micro-benchmarks on a runtime's device and cached.

The device is the runtime's (``--device``; by default the runtime policy's choice, the first
GPU, else the CPU); the matrix-vector bandwidth curve and the operator costs are measured in
the runtime's compute dtype, since a bf16 decode step streams bf16 weights."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lowbit.perf.hardware import Hardware
from lowbit.runtime.policy import device_name, is_gpu, synchronize, total_memory

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
VERSION = 4


@dataclass(frozen=True)
class Probes:
    """Sizes of the micro-benchmarks: the side of the peak matmul, the sides of the matmul
    throughput curve, the bytes read for the bandwidth peak, the bytes cycled through for the
    matrix-vector curve and the sides of its square matrices."""

    matmul: int
    sides: tuple[int, ...]
    bandwidth_bytes: int
    curve_bytes: int
    curve_sides: tuple[int, ...] = (256, 512, 1024, 2048, 4096)


GPU_PROBES = Probes(8192, (512, 1024, 2048, 4096, 8192), 1 << 30, 1 << 30)
CPU_PROBES = Probes(1024, (64, 128, 256, 512, 1024), 256 << 20, 256 << 20)
QUICK_PROBES = Probes(256, (64, 128, 256), 16 << 20, 16 << 20, (256, 512, 1024))
"""Small sizes for smoke tests: the figures are rough, the code paths are the full ones."""


def _best(fn: Any, device: torch.device, repeats: int = 5) -> float:
    fn()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int) -> float:
    """FLOP/s of an n × n × n matrix multiply (best of five)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2.0 * n**3 / _best(lambda: torch.mm(a, b), device)


def compute_curve(dtype: torch.dtype, device: torch.device, sides: tuple[int, ...]) -> list:
    """(FLOPs, FLOP/s) of square matrix multiplies of each side: small ones do not reach the
    peak, and the model's prefill matmuls are of every size."""
    return [(2.0 * n**3, matmul_peak(dtype, device, n)) for n in sides]


def bandwidth(device: torch.device, nbytes: int) -> dict[str, float]:
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


def linear_bandwidth_curve(
    device: torch.device,
    total: int,
    dtype: torch.dtype = torch.float32,
    sides: tuple[int, ...] = CPU_PROBES.curve_sides,
) -> list[tuple[float, float]]:
    """(matrix bytes, bytes/s) of a one-row linear layer (a decode step's GEMV) streaming
    through square ``dtype`` matrices of each side, cycling over ``total`` bytes of them so
    that no matrix is still in cache when it is read again."""
    curve = []
    for side in sides:
        size = side * side * torch.empty(0, dtype=dtype).element_size()
        mats = [
            torch.randn(side, side, device=device).to(dtype) for _ in range(max(total // size, 2))
        ]
        x = torch.randn(1, side, device=device).to(dtype)

        def stream(mats: list = mats, x: torch.Tensor = x) -> None:
            for W in mats:
                torch.nn.functional.linear(x, W)

        curve.append((float(size), size * len(mats) / _best(stream, device, 3)))
        del mats
    return curve


def dispatch_costs(device: torch.device, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Seconds per dispatch of small operators (the mean over the elementwise, reduction and
    view operators a decoder layer runs, on a 1 × 576 tensor) and per module call (a tiny
    ``nn.Linear`` called as a module minus the same call as a function)."""
    x = torch.randn(1, 576, device=device).to(dtype)
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
    lin = torch.nn.Linear(64, 64, bias=False).to(device=device, dtype=dtype)
    xs = x[:, :64]
    with torch.no_grad():
        module = _best(loop(lambda: lin(xs)), device, 3) / reps
        bare = _best(loop(lambda: torch.nn.functional.linear(xs, lin.weight)), device, 3) / reps
    return {"dispatch_s": dispatch, "module_s": max(module - bare, 0.0)}


def _machine_id(device: torch.device, dtype: torch.dtype, probes: Probes) -> str:
    name = device_name(device) if is_gpu(device) else platform.processor()
    raw = (
        f"{VERSION}|{device}|{name}|{os.cpu_count()}|{torch.get_num_threads()}|"
        f"{torch.__version__}|{dtype}|{probes}"
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def this_machine(
    cache_dir: Path | None = None,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    probes: Probes | None = None,
    refresh: bool = False,
) -> Hardware:
    """Measure (or read the cached measurement of) ``device`` (default: the runtime policy's
    choice) with weights and activations in ``dtype``; ``probes``: the benchmark sizes
    (default: :data:`GPU_PROBES` on a GPU, :data:`CPU_PROBES` on the CPU)."""
    if device is None:
        from lowbit.runtime.policy import resolve_runtime

        device = resolve_runtime().device
    probes = probes or (GPU_PROBES if is_gpu(device) else CPU_PROBES)
    path = (
        (cache_dir or Path.home() / ".cache" / "lowbit")
        / "hardware"
        / f"{_machine_id(device, dtype, probes)}.json"
    )
    if path.is_file() and not refresh:
        return _hardware(json.loads(path.read_text()))
    data = _measure(device, dtype, probes)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
    return _hardware(data)


def _measure(device: torch.device, dtype: torch.dtype, probes: Probes) -> dict[str, Any]:
    gpu = is_gpu(device)
    kinds = [k for k in _DTYPES if gpu or k != "fp16"]  # CPUs have no fast fp16 matmul
    peaks = {k: matmul_peak(_DTYPES[k], device, probes.matmul) for k in kinds}
    curves = {k: compute_curve(_DTYPES[k], device, probes.sides) for k in kinds}
    for k, curve in curves.items():
        peaks[k] = max(peaks[k], *(y for _, y in curve))
    bw = bandwidth(device, probes.bandwidth_bytes)
    name = device_name(device) if gpu else platform.processor() or platform.machine()
    curve = linear_bandwidth_curve(device, probes.curve_bytes, dtype, probes.curve_sides)
    return {
        "name": f"this machine ({name}, {device}, {torch.get_num_threads()} threads)",
        "memory_bytes": float(total_memory(device)),
        "peaks": peaks,
        "bandwidth": max(bw.values()),
        "bandwidth_kernels": bw,
        **dispatch_costs(device, dtype),
        "compute_curves": curves,
        "bandwidth_curve": curve,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "probes": {
            "matmul": probes.matmul,
            "sides": list(probes.sides),
            "bandwidth_bytes": probes.bandwidth_bytes,
            "curve_bytes": probes.curve_bytes,
            "curve_sides": list(probes.curve_sides),
        },
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
        extra={
            "bandwidth_kernels": d["bandwidth_kernels"],
            "device": d["device"],
            "dtype": d.get("dtype", "float32"),
        },
    )
