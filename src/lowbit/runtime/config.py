"""What a user asks of the runtime (``--device``, ``--dtype``, ``--offload``,
``--max-memory``), validated for form only; :func:`lowbit.runtime.resolve_runtime` checks it
against the machine. No torch here: the CLI builds it before importing anything heavy."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from lowbit.errors import ConfigError

DTYPE_NAMES = ("float32", "bfloat16", "float16")
_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


class Offload(str, Enum):
    AUTO = "auto"
    DEVICE = "device"
    CPU = "cpu"


@dataclass(frozen=True)
class RuntimeConfig:
    """The user's request, validated for form only (no torch device is touched)."""

    device: str = "auto"
    dtype: str = "auto"
    offload: Offload = Offload.AUTO
    max_memory: int | None = None  # bytes

    def __post_init__(self) -> None:
        dev = self.device.strip().lower()
        kind, _, index = dev.partition(":")
        if kind not in ("auto", "cpu", "cuda") or (
            index and (kind != "cuda" or not index.isdigit())
        ):
            raise ConfigError(
                f"unknown device {self.device!r}; use auto, cpu, cuda or cuda:N (N a GPU index)"
            )
        object.__setattr__(self, "device", dev)
        dtype = _ALIASES.get(self.dtype.lower(), self.dtype.lower())
        if dtype != "auto" and dtype not in DTYPE_NAMES:
            raise ConfigError(
                f"unknown dtype {self.dtype!r}; use auto, {', '.join(DTYPE_NAMES)} (or bf16, fp16, "
                "fp32)"
            )
        object.__setattr__(self, "dtype", dtype)
        try:
            object.__setattr__(self, "offload", Offload(self.offload))
        except ValueError:
            raise ConfigError(
                f"unknown offload {self.offload!r}; use auto, device or cpu"
            ) from None
        if self.max_memory is not None and self.max_memory <= 0:
            raise ConfigError(f"--max-memory must be positive, got {self.max_memory} bytes")
