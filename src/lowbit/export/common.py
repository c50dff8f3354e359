"""What every exporter shares: its input, options and report, the fused-group check and the
error that lists the layers a target cannot represent."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from lowbit._registry import Registry
from lowbit.errors import ConfigError, ExportError
from lowbit.formats import QuantizedWeight, describe_scheme
from lowbit.models.nvfp4_fused import fused_groups
from lowbit.models.quantize import QuantizedModel

KEPT = "kept in full precision"
DTYPES = ("float32", "float16", "bfloat16")


class Target(str, Enum):
    COMPRESSED_TENSORS = "compressed-tensors"
    GGUF = "gguf"


# each exporter's check of one quantized layer before writing it: why it cannot (None: it can);
# planning for a deployment target asks these (lowbit.export.targets)
WRITABLE: Registry[Callable[[QuantizedWeight], str | None]] = Registry("export target")


@dataclass
class ExportInput:
    """A quantized model, its dense twin (the original model with the dequantized weights, as
    evaluated) and, optionally, evaluation figures for the model card."""

    qm: QuantizedModel
    model: Any
    figures: dict[str, Any] | None = None


@dataclass(frozen=True)
class ExportOptions:
    """``dtype``: storage of the tensors kept in full precision (float32 keeps them exactly as
    evaluated); ``allow_unfused``: export even if fused layers (q/k/v, gate/up) differ in
    scheme, which vLLM refuses to load."""

    target: Target
    dtype: str = "float32"
    allow_unfused: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"export dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if not isinstance(self.target, Target):
            object.__setattr__(self, "target", _target(self.target))


def _target(name: Any) -> Target:
    try:
        return Target(name)
    except ValueError:
        known = ", ".join(t.value for t in Target)
        raise ConfigError(f"unknown export target {name!r}; known: {known}") from None


@dataclass
class ExportReport:
    """What was written: the files and their sizes, each layer's stored type, and how far the
    stored tensors are from the evaluated ones, read back from what was written (0.0:
    bit-exact): the quantized layers, and the tensors kept in full precision (nonzero only when
    stored in half precision)."""

    target: str
    path: Path
    files: dict[str, int]
    layers: dict[str, str]
    max_weight_error: float
    predicted_bytes: int
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    kept_max_error: float = 0.0

    @property
    def size_bytes(self) -> int:
        return sum(self.files.values())

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["path"] = str(self.path)
        out["size_bytes"] = self.size_bytes
        return out


def scheme_of(qw: QuantizedWeight | None) -> str:
    return KEPT if qw is None else describe_scheme(qw.fmt, qw.granularity)


def fused_mismatches(qm: QuantizedModel) -> list[str]:
    """One line per block whose fused layers (from the architecture spec) differ in scheme."""
    path = qm.handle.arch.blocks_path
    lines = []
    for members in fused_groups(qm):
        schemes = {m: scheme_of(qm.weights.get(m)) for m in members}
        if len(set(schemes.values())) > 1:
            prefix = f"{path}.{members[0][len(path) + 1 :].split('.', 1)[0]}"
            parts = ", ".join(f"{m.rsplit('.', 1)[1]} {s}" for m, s in schemes.items())
            lines.append(f"{prefix}: {parts}")
    return lines


def check_fused(qm: QuantizedModel, opts: ExportOptions, engine: str) -> list[str]:
    """Refuse fused layers with different schemes unless the user asked to export anyway;
    returns the notes to record when they did."""
    lines = fused_mismatches(qm)
    if lines and not opts.allow_unfused:
        raise ExportError(
            f"{engine} runs q/k/v and gate/up as one matmul each, so they need one scheme, but "
            f"{len(lines)} fused group(s) differ:\n  "
            + "\n  ".join(lines[:10])
            + ("\n  …" if len(lines) > 10 else "")
            + "\nMake a plan that fuses them (`lowbit plan` does by default), or pass "
            "--allow-unfused to export anyway"
        )
    return [f"fused layers differ in scheme (exported anyway): {line}" for line in lines]


def check_weight_only(qm: QuantizedModel, target: Target) -> None:
    """The exporters write quantized linear weights (compressed-tensors also their input
    activations); plan parts they cannot carry (activation and KV-cache quantization, a
    quantized embedding or head) are refused, never dropped silently."""
    plan = qm.plan
    carried = ("activations",) if target is Target.COMPRESSED_TENSORS else ()
    parts = [
        name
        for name, value in (
            ("activations", plan.activations),
            ("kv_cache", plan.kv_cache),
            ("embedding", plan.embedding),
            ("head", plan.head),
        )
        if value is not None and name not in carried
    ]
    if parts:
        raise ExportError(
            f"{target.value} export writes weight-only schemes"
            + (" and input activations" if carried else "")
            + f"; this plan also sets {', '.join(parts)}, which the export would drop. Export a "
            "model quantized with a plan without them (the serving engine applies its own "
            "KV settings)"
        )


def refuse(target: Target, problems: dict[str, str], hint: str) -> ExportError:
    """An error naming every layer ``target`` cannot represent, and why."""
    lines = [f"{name}: {why}" for name, why in problems.items()]
    more = f"\n  … and {len(lines) - 12} more" if len(lines) > 12 else ""
    return ExportError(
        f"{target.value} cannot represent {len(lines)} layer(s) of this plan:\n  "
        + "\n  ".join(lines[:12])
        + more
        + f"\n{hint}"
    )


def predicted_bytes(qm: QuantizedModel, dtype: str) -> int:
    """The plan's size: quantized layers at their counted bits, every other floating-point
    tensor at ``dtype`` (integer tensors as stored)."""
    from lowbit.models.footprint import stored_bits

    width = 32 if dtype == "float32" else 16
    quantized = {f"{n}.weight": n for n in qm.weights}
    bits = 0
    for key, n, stored in stored_bits(qm.handle):
        if key in quantized:
            bits += qm.weights.n_bits(quantized[key])  # from the layout, nothing unpacked
        else:
            bits += n * width if stored // max(n, 1) in (16, 32, 64) else stored
    return (bits + 7) // 8
