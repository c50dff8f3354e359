"""The roofline: an operator's time is the larger of its compute time at the peak for its
operand dtype and its memory time at the memory bandwidth (communication: at the interconnect
bandwidth), plus the hardware's fixed per-operator overhead."""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.perf.hardware import Hardware
from lowbit.perf.operators import Op


@dataclass(frozen=True)
class Timed:
    op: Op
    compute_s: float
    memory_s: float
    seconds: float

    @property
    def bound(self) -> str:
        if self.op.kind == "comm":
            return "communication"
        return "compute" if self.compute_s > self.memory_s else "memory"

    def to_dict(self) -> dict:
        return {
            "name": self.op.name,
            "kind": self.op.kind,
            "flops": self.op.flops,
            "bytes": self.op.bytes,
            "weight_bytes": self.op.weight_bytes,
            "kv_bytes": self.op.kv_bytes,
            "intensity": self.op.intensity,
            "dtype": self.op.dtype,
            "bound": self.bound,
            "seconds": self.seconds,
        }


def time_op(op: Op, hw: Hardware) -> Timed:
    if op.kind == "comm":
        t = op.bytes / hw.interconnect
        return Timed(op, 0.0, t, t)
    compute = op.flops / hw.peak(op.dtype)
    memory = op.bytes / hw.bandwidth
    return Timed(op, compute, memory, max(compute, memory) + hw.overhead_s)
