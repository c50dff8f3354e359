"""Typed, frozen configurations of the weight-quantization algorithms."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from lowbit.errors import ConfigError
from lowbit.formats import Clipping, MinMax


class ActOrder(str, Enum):
    """GPTQ column order.

    - ``off``: natural column order; group scales chosen when the sweep reaches each group.
    - ``static``: columns by decreasing Hessian diagonal; group scales chosen up front on the
      original weight (groups stay contiguous in the saved layout, no permutation stored).
    - ``group``: columns by decreasing Hessian diagonal; groups formed in that order, scales
      chosen as the sweep reaches them; the permutation is saved (32 bits per input column).
    """

    OFF = "off"
    STATIC = "static"
    GROUP = "group"


@dataclass(frozen=True)
class RTNConfig:
    """Round to nearest on a min-max grid (or a clipped one); needs no calibration data."""

    clipping: Clipping = field(default_factory=MinMax)

    name = "rtn"
    needs_calibration = False


@dataclass(frozen=True)
class GPTQConfig:
    """GPTQ (Frantar et al., 2022): column-wise quantization with second-order error feedback.

    ``damp`` is the dampening added to the Hessian diagonal, relative to its mean;
    ``block_size`` the lazy-batch width (rounded to whole groups so that group scales are chosen
    on fully updated columns).
    """

    damp: float = 0.01
    block_size: int = 128
    act_order: ActOrder = ActOrder.STATIC

    name = "gptq"
    needs_calibration = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.damp < 1.0:
            raise ConfigError(f"GPTQ damp must be in [0, 1), got {self.damp!r}; 0.01 is usual")
        if (
            not isinstance(self.block_size, int)
            or isinstance(self.block_size, bool)
            or self.block_size <= 0
        ):
            raise ConfigError(
                f"GPTQ block_size must be a positive integer, got {self.block_size!r}"
            )
        try:
            act_order = ActOrder(self.act_order)
        except ValueError:
            known = ", ".join(repr(a.value) for a in ActOrder)
            raise ConfigError(
                f"GPTQ act_order must be one of {known}, got {self.act_order!r}"
            ) from None
        object.__setattr__(self, "act_order", act_order)


AlgorithmConfig = RTNConfig | GPTQConfig
