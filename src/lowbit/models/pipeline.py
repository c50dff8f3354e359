"""How calibration data flows through the blocks (no heavy imports: the CLI reads it)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

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


@dataclass(frozen=True)
class PipelineConfig:
    propagation: Propagation = Propagation.TRUE_SEQUENTIAL
    chunk_size: int = 4

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "propagation", Propagation(self.propagation))
        except ValueError as exc:
            choices = ", ".join(p.value for p in Propagation)
            raise ConfigError(f"unknown propagation {self.propagation!r}; use {choices}") from exc
        if self.chunk_size <= 0:
            raise ConfigError(f"chunk size must be positive, got {self.chunk_size}")


DEFAULT_PIPELINE = PipelineConfig()
