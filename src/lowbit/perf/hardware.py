"""Accelerator specs as data (``hardware.yaml``, every number with its vendor source) and the
:class:`Hardware` value the roofline reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from lowbit._registry import Registry
from lowbit.errors import ConfigError

DTYPES = ("fp32", "tf32", "fp16", "bf16", "fp8", "int8", "fp4")


@dataclass(frozen=True)
class Hardware:
    """Peaks in FLOP/s (int8: OP/s) per operand dtype, bandwidths in bytes/s, memory in bytes.
    ``dispatch_s`` and ``module_s``: the cost of one framework dispatch (kernel launch) and of
    one module call, which a runtime multiplies per operator (0 for the datasheet entries,
    measured for this machine). ``bandwidth_curve``: (bytes, attained bytes/s) of the
    matrix-vector kernel by operand size, when measured; without it the peak applies."""

    key: str
    name: str
    memory_bytes: float
    bandwidth: float
    peaks: dict[str, float]
    interconnect: float
    interconnect_name: str = ""
    dispatch_s: float = 0.0
    module_s: float = 0.0
    bandwidth_curve: tuple[tuple[float, float], ...] = ()
    compute_curves: dict[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    op_overhead: dict[str, float] = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    unconfirmed: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.bandwidth <= 0 or self.memory_bytes <= 0 or not self.peaks:
            raise ConfigError(f"hardware {self.key!r} needs a memory size, bandwidth and peaks")
        unknown = set(self.peaks) - set(DTYPES)
        if unknown:
            raise ConfigError(f"hardware {self.key!r}: unknown dtypes {sorted(unknown)}")

    def peak(self, dtype: str) -> float:
        """The dense peak for operands of ``dtype``; a dtype the chip lacks runs at the next
        wider one it has (fp8 → fp16, int8 → fp16, bf16 ↔ fp16, tf32 → fp32)."""
        for candidate in _FALLBACK[dtype]:
            if candidate in self.peaks:
                return self.peaks[candidate]
        raise ConfigError(f"hardware {self.key!r} has no peak for {dtype} or a wider dtype")

    def attained_bandwidth(self, nbytes: float) -> float:
        """The bandwidth a kernel moving ``nbytes`` attains: interpolated (in log size) on the
        measured curve, the end values beyond it; the peak when nothing was measured."""
        return _on_curve(self.bandwidth_curve, nbytes, self.bandwidth)

    def attained_peak(self, dtype: str, flops: float) -> float:
        """The FLOP/s a matmul of ``flops`` attains in ``dtype`` (measured curve, else peak)."""
        return _on_curve(self.compute_curves.get(dtype, ()), flops, self.peak(dtype))

    def ridge(self, dtype: str) -> float:
        """Arithmetic intensity (FLOP per byte) where the memory and compute roofs meet."""
        return self.peak(dtype) / self.bandwidth

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "memory_bytes": self.memory_bytes,
            "bandwidth_bytes_s": self.bandwidth,
            "peaks_flops": self.peaks,
            "interconnect_bytes_s": self.interconnect,
            "dispatch_s": self.dispatch_s,
            "module_s": self.module_s,
            "bandwidth_curve": [list(p) for p in self.bandwidth_curve],
            "compute_curves": {k: [list(p) for p in v] for k, v in self.compute_curves.items()},
            "op_overhead_s": self.op_overhead,
            "sources": list(self.sources),
            "unconfirmed": list(self.unconfirmed),
            **self.extra,
        }


def _on_curve(curve: tuple[tuple[float, float], ...], x: float, default: float) -> float:
    import math

    if not curve or x <= 0:
        return default
    if x <= curve[0][0]:
        return curve[0][1]
    for (x0, y0), (x1, y1) in zip(curve, curve[1:], strict=False):
        if x <= x1:
            w = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + w * (y1 - y0)
    return curve[-1][1]


_FALLBACK = {
    "fp4": ("fp4", "fp8", "fp16", "bf16", "fp32"),
    "fp8": ("fp8", "fp16", "bf16", "fp32"),
    "int8": ("int8", "fp16", "bf16", "fp32"),
    "fp16": ("fp16", "bf16", "fp32"),
    "bf16": ("bf16", "fp16", "fp32"),
    "tf32": ("tf32", "fp32"),
    "fp32": ("fp32", "tf32"),
}


def _from_entry(key: str, e: dict[str, Any]) -> Hardware:
    try:
        return Hardware(
            key=key,
            name=str(e["name"]),
            memory_bytes=float(e["memory_gb"]) * 1e9,
            bandwidth=float(e["memory_bandwidth_gbs"]) * 1e9,
            peaks={k: float(v) * 1e12 for k, v in e["peak_tflops"].items()},
            interconnect=float(e["interconnect"]["bandwidth_gbs"]) * 1e9,
            interconnect_name=str(e["interconnect"].get("name", "")),
            sources=tuple(e.get("sources", ())),
            unconfirmed=tuple(e.get("unconfirmed", ())),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"hardware entry {key!r} is malformed: {exc}") from exc


@cache
def hardware_registry() -> Registry[Hardware]:
    import yaml

    data = yaml.safe_load((Path(__file__).parent / "hardware.yaml").read_text())
    registry: Registry[Hardware] = Registry("hardware")
    for key, entry in data.items():
        registry.register(key, _from_entry(key, entry))
    return registry


def get_hardware(name: str) -> Hardware:
    """A datasheet entry by name (``lowbit ls hardware``), with suggestions for typos."""
    return hardware_registry().get(name)
