"""The roofline: an operator's time is the larger of its compute time at the peak for its
operand dtype and its memory time at the bandwidth a kernel of its size attains
(communication: at the interconnect bandwidth), plus the runtime's fixed per-operator cost
(module calls and dispatches at the hardware's measured cost of each)."""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.perf.hardware import Hardware
from lowbit.perf.operators import Op
from lowbit.perf.runtime import RUNTIMES, Runtime


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


def time_op(op: Op, hw: Hardware, runtime: Runtime | None = None) -> Timed:
    runtime = runtime or RUNTIMES.get("fused")
    modules, dispatches = runtime.cost(op.name)
    overhead = modules * hw.module_s + dispatches * hw.dispatch_s
    if runtime.name == "eager" and hw.op_overhead:  # measured per operator on a tiny twin
        overhead = hw.op_overhead.get(op.name, 0.0)
    if op.kind == "comm":  # a GPU sends and receives at once: half the bidirectional figure
        t = op.bytes / (hw.interconnect / 2)
        return Timed(op, 0.0, t, t + overhead)
    compute = op.flops / hw.attained_peak(op.dtype, op.flops)
    memory = op.bytes / hw.attained_bandwidth(op.bytes)
    return Timed(op, compute, memory, max(compute, memory) + overhead)
