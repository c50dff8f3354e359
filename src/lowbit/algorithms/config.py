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
    - ``group_aware``: group-aware reordering (GAR): groups by decreasing summed Hessian
      diagonal, the columns inside each group by decreasing diagonal; group scales chosen as
      the sweep reaches each group; groups stay contiguous, so the weight is stored in the
      original column order (no permutation, 0 extra bits).
    """

    OFF = "off"
    STATIC = "static"
    GROUP = "group"
    GROUP_AWARE = "group_aware"


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


SENSITIVITIES = ("hessian", "uniform")


@dataclass(frozen=True)
class SqueezeLLMConfig:
    """SqueezeLLM (Kim et al., 2023): per output row a lookup table of 2^bits values fitted by
    sensitivity-weighted k-means, plus a dense-and-sparse split that keeps the
    ``outlier_fraction`` largest-magnitude weights in fp16 (48 bits each, counted).

    ``sensitivity``: the k-means weight of w[r, c]; "hessian" is the Hessian diagonal
    H_cc = E[x_c²] of the layer's calibration inputs (the Fisher diagonal needs gradients, which
    the block-by-block driver does not compute), "uniform" weighs every weight alike.
    ``iterations`` caps Lloyd's iterations; ``tol`` stops them once one lowers the weighted
    objective by less than ``tol`` times it.
    """

    outlier_fraction: float = 0.0045
    iterations: int = 50
    tol: float = 1e-5
    sensitivity: str = "hessian"

    name = "squeezellm"
    needs_calibration = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.outlier_fraction < 0.5:
            raise ConfigError(
                f"SqueezeLLM outlier_fraction must be in [0, 0.5), got {self.outlier_fraction!r}; "
                "0.0045 (0.45%) is the paper's"
            )
        if (
            not isinstance(self.iterations, int)
            or isinstance(self.iterations, bool)
            or self.iterations < 0
        ):
            raise ConfigError(
                f"SqueezeLLM iterations must be a non-negative integer, got {self.iterations!r}"
            )
        if not 0.0 <= self.tol < 1.0:
            raise ConfigError(f"SqueezeLLM tol must be in [0, 1), got {self.tol!r}; 1e-5 is usual")
        if self.sensitivity not in SENSITIVITIES:
            known = ", ".join(map(repr, SENSITIVITIES))
            raise ConfigError(
                f"SqueezeLLM sensitivity must be one of {known}, got {self.sensitivity!r}"
            )

    def outlier_count(self, numel: int) -> int:
        """How many of ``numel`` weights are kept as sparse fp16 outliers: ⌊fraction·numel⌉."""
        return int(self.outlier_fraction * numel + 0.5)


@dataclass(frozen=True)
class AWQConfig:
    """AWQ (Lin et al., 2023): activation-aware per-input-channel scales, then a clip search.

    Per smoothing pair of the architecture (a norm or linear feeding some linears), scales
    s = mean|x|^α (normalised by √(max s · min s)) are tried for α = 0, 1/grid, …,
    (grid-1)/grid; the one whose quantized W·diag(s) (the layer's own format) gives the least
    output error is folded into the pair (1/s into the norm or the previous linear's rows).
    Then, when ``clip``, each group's range is shrunk by the ratio among 1, 1 - 1/n_clip_grid,
    … (while the shrink stays below ``max_shrink``, as llm-awq) with the least output error, and
    the weight is rounded to nearest. Works with every weight format.
    """

    grid: int = 20
    clip: bool = True
    n_clip_grid: int = 20
    max_shrink: float = 0.5

    name = "awq"
    needs_calibration = True

    def __post_init__(self) -> None:
        for field_name in ("grid", "n_clip_grid"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(
                    f"AWQ {field_name} must be a positive integer, got {value!r}; 20 is usual"
                )
        if not isinstance(self.clip, bool):
            raise ConfigError(f"AWQ clip must be true or false, got {self.clip!r}")
        if isinstance(self.max_shrink, bool) or not 0.0 < float(self.max_shrink) < 1.0:
            raise ConfigError(
                f"AWQ max_shrink must be in (0, 1), got {self.max_shrink!r}; 0.5 is usual"
            )

    def clip_ratios(self) -> list[float]:
        """Range shrink ratios the clip search tries, 1.0 (no clipping) first."""
        steps = max(1, int(self.max_shrink * self.n_clip_grid))
        return [1.0 - i / self.n_clip_grid for i in range(steps)]


@dataclass(frozen=True)
class SmoothQuantConfig:
    """SmoothQuant (Xiao et al., 2022): s_j = max|X_j|^α / max|W_j|^(1-α) per input channel of
    each norm → linears pair, folded into the norm before the weights (and activations) are
    quantized; ``alpha`` is the migration strength (0.5 usual, 0.75-0.85 for models with
    strong activation outliers)."""

    alpha: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not 0.0 < float(self.alpha) < 1.0:
            raise ConfigError(
                f"SmoothQuant alpha must be in (0, 1), got {self.alpha!r}; 0.5 is usual"
            )


AlgorithmConfig = RTNConfig | GPTQConfig | SqueezeLLMConfig | AWQConfig
