"""How activations and the KV cache are quantized, as typed plan data.

- :class:`ActivationSpec`: the input of every quantized linear layer, per token (dynamic: each
  token's own absmax) or per tensor (dynamic, or *static*: one threshold per layer calibrated
  offline by min-max, percentile, MSE or KL). W8A8 = int8 weights + int8 per-token dynamic;
  W4A8 = int4 weights + the same; FP8 W8A8 = E4M3 weights + E4M3 per-tensor static.
- :class:`KVCacheSpec`: key states (after RoPE) and value states, quantized dynamically per
  token (all KV heads of a token share a scale), per head (one scale per token and head) or per
  channel (one scale per head channel over the sequence, KIVI's choice for keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from lowbit.algorithms.activation_ranges import (
    ActCalibration,
    MinMaxRange,
    calibration_from_dict,
)
from lowbit.errors import ConfigError
from lowbit.formats import IntFormat, format_from_dict, format_to_dict
from lowbit.formats.activation import ActivationFormat, check_activation_format


class ActGranularity(str, Enum):
    PER_TOKEN = "per_token"
    PER_TENSOR = "per_tensor"


class KVGranularity(str, Enum):
    PER_TOKEN = "per_token"  # one scale per token over every KV head's channels
    PER_HEAD = "per_head"  # one scale per token and KV head
    PER_CHANNEL = "per_channel"  # one scale per KV head channel over the sequence (KIVI keys)


def _enum(cls: type[Enum], value: Any, what: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        known = ", ".join(repr(m.value) for m in cls)  # type: ignore[attr-defined]
        raise ConfigError(f"{what} must be one of {known}, got {value!r}") from None


@dataclass(frozen=True)
class ActivationSpec:
    """Quantization of the input activations of every linear layer the plan quantizes."""

    fmt: ActivationFormat
    granularity: ActGranularity = ActGranularity.PER_TOKEN
    dynamic: bool = True
    calibration: ActCalibration = field(default_factory=MinMaxRange)

    def __post_init__(self) -> None:
        check_activation_format(self.fmt, "plan activations")
        gran = _enum(ActGranularity, self.granularity, "activation granularity")
        object.__setattr__(self, "granularity", gran)
        if not self.dynamic and gran is ActGranularity.PER_TOKEN:
            raise ConfigError(
                "static activation scales are per tensor (a token's range is not known offline); "
                "use granularity per_tensor with dynamic: false, or per_token with dynamic: true"
            )
        if self.dynamic and not isinstance(self.calibration, MinMaxRange):
            raise ConfigError(
                f"calibration {self.calibration.name!r} sets static scales; dynamic scales are "
                "each token's (or tensor's) own absmax: set dynamic: false or drop calibration"
            )
        if not self.dynamic and isinstance(self.fmt, IntFormat) and not self.fmt.symmetric:
            raise ConfigError(
                f"static activation scales need a symmetric format, got {self.fmt.name}; "
                "use int8 (symmetric) or fp8_e4m3"
            )

    @property
    def bits(self) -> int:
        return self.fmt.bits

    @property
    def needs_calibration(self) -> bool:
        return not self.dynamic

    def describe(self) -> str:
        how = "dynamic" if self.dynamic else f"static {self.calibration.name}"
        return f"A{self.bits} {self.fmt.name} {self.granularity.value} {how}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": format_to_dict(self.fmt),
            "granularity": self.granularity.value,
            "dynamic": self.dynamic,
        }
        if not self.dynamic:
            out["calibration"] = self.calibration.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActivationSpec:
        try:
            calib = data.get("calibration", {"method": "minmax"})
            return cls(
                format_from_dict(data["format"]),
                data.get("granularity", "per_token"),
                bool(data.get("dynamic", True)),
                calibration_from_dict(calib),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"malformed activation spec {data!r}: bad field {exc}") from exc


@dataclass(frozen=True)
class KVCacheSpec:
    """Fake quantization of the key and value states every attention layer reads."""

    fmt: ActivationFormat
    key_granularity: KVGranularity = KVGranularity.PER_TOKEN
    value_granularity: KVGranularity = KVGranularity.PER_TOKEN

    def __post_init__(self) -> None:
        check_activation_format(self.fmt, "plan kv_cache")
        for name in ("key_granularity", "value_granularity"):
            value = _enum(KVGranularity, getattr(self, name), f"kv_cache {name}")
            object.__setattr__(self, name, value)

    @property
    def bits(self) -> int:
        return self.fmt.bits

    def describe(self) -> str:
        return (
            f"KV {self.fmt.name} keys {self.key_granularity.value}, "
            f"values {self.value_granularity.value}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": format_to_dict(self.fmt),
            "key_granularity": self.key_granularity.value,
            "value_granularity": self.value_granularity.value,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KVCacheSpec:
        try:
            both = data.get("granularity", "per_token")
            return cls(
                format_from_dict(data["format"]),
                data.get("key_granularity", both),
                data.get("value_granularity", both),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"malformed kv_cache spec {data!r}: bad field {exc}") from exc
