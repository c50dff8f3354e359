"""How calibration data flows through the blocks (no heavy imports: the CLI reads it)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from lowbit.errors import ConfigError


class Propagation(str, Enum):
    """How a block's calibration inputs flow through it.

    - ``true-sequential``: one pass; each group of linears is quantized when every window has
      reached it, so later groups see the quantized earlier ones. Fastest (the block runs once)
      but holds every window's in-flight activations at once.
    - ``two-pass``: statistics of all groups from the original block, then a second pass with
      the quantized block. Holds only the block inputs (for models larger than memory).
    """

    TRUE_SEQUENTIAL = "true-sequential"
    TWO_PASS = "two-pass"


POLICIES = ("all", "routed")


@dataclass(frozen=True)
class ExpertCalibration:
    """How calibration tokens reach the experts of a mixture of experts for the Hessians
    (``all``: every token through every expert; ``routed``: the routed tokens, every token for
    an expert with fewer than ``min_tokens`` in a chunk); see :mod:`lowbit.models.experts`."""

    policy: str = "all"
    min_tokens: int = 16

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(
                f"expert calibration policy {self.policy!r} is unknown; use one of "
                f"{', '.join(POLICIES)}"
            )
        if self.min_tokens < 1:
            raise ConfigError(f"expert min_tokens must be ≥ 1, got {self.min_tokens}")

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "min_tokens": self.min_tokens}


@dataclass(frozen=True)
class PipelineConfig:
    propagation: Propagation = Propagation.TRUE_SEQUENTIAL
    chunk_size: int = 4
    experts: ExpertCalibration = ExpertCalibration()

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "propagation", Propagation(self.propagation))
        except ValueError as exc:
            choices = ", ".join(p.value for p in Propagation)
            raise ConfigError(f"unknown propagation {self.propagation!r}; use {choices}") from exc
        if self.chunk_size <= 0:
            raise ConfigError(f"chunk size must be positive, got {self.chunk_size}")


DEFAULT_PIPELINE = PipelineConfig()
