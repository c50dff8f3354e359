"""The plan: which linear layer gets which format, granularity and algorithm.

A :class:`Plan` is data: a default :class:`LayerSpec` (or None: keep full precision) and rules
that map exact module names or ``re:`` patterns to a spec (or to None). Precedence: an exact
name beats every pattern; among patterns the first listed wins; then the default. Plans round
trip through versioned JSON or YAML.

Plan-level options beyond the block linears (each optional; a plan using any of them is written
as version 2, a plan using none as version 1, exactly as before): ``activations`` (an
:class:`ActivationSpec` for the inputs of every quantized linear), ``kv_cache`` (a
:class:`KVCacheSpec`), ``embedding`` and ``head`` (LayerSpecs, RTN, one scale per row or group
of a vocabulary row), ``untie_embeddings`` (quantize a tied embedding and head apart, storing
the head as its own tensor) and ``smoothquant`` (SmoothQuant's migration strength alpha,
applied before the weights are quantized).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowbit.algorithms import ActOrder, AlgorithmConfig, GPTQConfig, RTNConfig, check_gptq_format
from lowbit.algorithms.activation_specs import ActivationSpec, KVCacheSpec
from lowbit.algorithms.config import AWQConfig, SqueezeLLMConfig
from lowbit.algorithms.squeezellm import check_squeezellm_format
from lowbit.errors import ArtefactError, ConfigError
from lowbit.formats import (
    Granularity,
    MinMax,
    PerChannel,
    PerGroup,
    PerTensor,
    WeightFormat,
    clipping_from_dict,
    describe_scheme,
    format_from_dict,
    format_to_dict,
)
from lowbit.formats.tensor import OUTLIER_INDEX_BITS, OUTLIER_VALUE_BITS, PERM_BITS

PLAN_VERSION = 1
PLAN_VERSION_RUNTIME = 2  # plans with activations, KV cache, embedding/head or SmoothQuant
_RUNTIME_KEYS = ("activations", "kv_cache", "embedding", "head", "untie_embeddings", "smoothquant")


@dataclass(frozen=True)
class LayerSpec:
    """How one linear layer is quantized. The format must accept the granularity (MX needs
    groups of 32, NVFP4 of 16, LUT per-channel) and the algorithm the format (GPTQ: int, FP,
    NF4, LUT, MX, NVFP4; SqueezeLLM: LUT)."""

    fmt: WeightFormat
    granularity: Granularity
    algorithm: AlgorithmConfig = field(default_factory=GPTQConfig)

    def __post_init__(self) -> None:
        self.fmt.check_granularity(self.granularity)
        if isinstance(self.algorithm, GPTQConfig):
            check_gptq_format(self.fmt)
        if isinstance(self.algorithm, SqueezeLLMConfig):
            check_squeezellm_format(self.fmt)

    def describe(self) -> str:
        """A label that tells specs apart: the scheme, then every option that differs from its
        default (e.g. ``GPTQ W4 g64 sym act_order=group``)."""
        base = f"{self.algorithm.name.upper()} {describe_scheme(self.fmt, self.granularity)}"
        extras = _changed(self.fmt, skip=("symmetric",)) + _changed(self.algorithm)
        return " ".join([base, *extras])

    def bits_per_weight(self, out_features: int, in_features: int) -> float:
        """Codes, scales, zero points and, for GPTQ act-order ``group``, the saved permutation
        (32 bits per input column), per weight of an (out, in) matrix."""
        bits = self.fmt.bits_per_weight(in_features, self.granularity, out_features)
        if self.saves_permutation:
            bits += PERM_BITS / out_features
        if isinstance(self.algorithm, SqueezeLLMConfig):  # sparse fp16 outliers, 48 bits each
            count = self.algorithm.outlier_count(out_features * in_features)
            bits += count * (OUTLIER_VALUE_BITS + OUTLIER_INDEX_BITS) / (out_features * in_features)
        return bits

    @property
    def saves_permutation(self) -> bool:
        return (
            isinstance(self.algorithm, GPTQConfig)
            and self.algorithm.act_order is ActOrder.GROUP
            and isinstance(self.granularity, PerGroup)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": format_to_dict(self.fmt),
            "granularity": _granularity_to_dict(self.granularity),
            "algorithm": _algorithm_to_dict(self.algorithm),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerSpec:
        try:
            return cls(
                format_from_dict(data["format"]),
                _granularity_from_dict(data["granularity"]),
                _algorithm_from_dict(data.get("algorithm", {"name": "gptq"})),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"malformed layer spec {data!r}: missing or bad field {exc}") from exc


@dataclass(frozen=True)
class Rule:
    """``target`` is an exact module name or ``re:<pattern>`` (full match); spec None = keep."""

    target: str
    spec: LayerSpec | None

    def __post_init__(self) -> None:
        if self.target.startswith("re:"):
            try:
                re.compile(self.target[3:])
            except re.error as exc:
                raise ConfigError(f"bad regex in plan rule {self.target!r}: {exc}") from exc

    def matches(self, name: str) -> bool:
        if self.target.startswith("re:"):
            return re.fullmatch(self.target[3:], name) is not None
        return self.target == name


@dataclass(frozen=True)
class Plan:
    """Default spec plus rules; ``spec_for(name)`` resolves one module."""

    default: LayerSpec | None
    rules: tuple[Rule, ...] = ()
    version: int = PLAN_VERSION
    activations: ActivationSpec | None = None
    kv_cache: KVCacheSpec | None = None
    embedding: LayerSpec | None = None
    head: LayerSpec | None = None
    untie_embeddings: bool = False
    smoothquant: float | None = None

    def __post_init__(self) -> None:
        for where, spec in (("embedding", self.embedding), ("head", self.head)):
            if spec is not None and not isinstance(spec.algorithm, RTNConfig):
                raise ConfigError(
                    f"plan {where}: only RTN quantizes the {where} (got "
                    f"{spec.algorithm.name}); set its algorithm to {{name: rtn}}"
                )
        if self.smoothquant is not None and not 0.0 < float(self.smoothquant) < 1.0:
            raise ConfigError(
                f"plan smoothquant alpha must be in (0, 1), got {self.smoothquant!r}; 0.5 is usual"
            )

    def needs_calibration(self) -> bool:
        """Whether the plan needs calibration data: an algorithm that does, static activation
        scales, or SmoothQuant's activation statistics."""
        specs = [self.default, *(rule.spec for rule in self.rules)]
        return (
            any(s is not None and s.algorithm.needs_calibration for s in specs)
            or (self.activations is not None and self.activations.needs_calibration)
            or self.smoothquant is not None
        )

    @property
    def uses_runtime_options(self) -> bool:
        """Whether any plan-level option of version 2 is set."""
        return any(getattr(self, k) not in (None, False) for k in _RUNTIME_KEYS)

    def spec_for(self, name: str) -> LayerSpec | None:
        for rule in self.rules:
            if not rule.target.startswith("re:") and rule.target == name:
                return rule.spec
        for rule in self.rules:
            if rule.target.startswith("re:") and rule.matches(name):
                return rule.spec
        return self.default

    def resolve(self, names: list[str]) -> dict[str, LayerSpec | None]:
        """Spec per module; unknown exact names in rules are an error that suggests matches."""
        known = set(names)
        for rule in self.rules:
            if not rule.target.startswith("re:") and rule.target not in known:
                import difflib

                close = difflib.get_close_matches(rule.target, names, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(f"plan rule names unknown layer {rule.target!r}{hint}")
        return {name: self.spec_for(name) for name in names}

    def to_dict(self) -> dict[str, Any]:
        runtime = self.uses_runtime_options
        out: dict[str, Any] = {
            "lowbit_plan_version": PLAN_VERSION_RUNTIME if runtime else self.version,
            "default": None if self.default is None else self.default.to_dict(),
            "rules": [
                {"target": r.target, "spec": None if r.spec is None else r.spec.to_dict()}
                for r in self.rules
            ],
        }
        for key in ("activations", "kv_cache", "embedding", "head"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key).to_dict()
        if self.untie_embeddings:
            out["untie_embeddings"] = True
        if self.smoothquant is not None:
            out["smoothquant"] = {"alpha": self.smoothquant}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        version = data.get("lowbit_plan_version")
        if version not in (PLAN_VERSION, PLAN_VERSION_RUNTIME):
            raise ArtefactError(
                f"plan version {version!r} is not supported "
                f"(this lowbit reads versions {PLAN_VERSION} and {PLAN_VERSION_RUNTIME})"
            )
        default = data.get("default")
        try:
            rules = tuple(
                Rule(
                    str(r["target"]),
                    None if r.get("spec") is None else LayerSpec.from_dict(r["spec"]),
                )
                for r in data.get("rules", [])
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(
                f"malformed plan rule: each needs 'target' and 'spec' ({exc})"
            ) from exc
        return cls(
            None if default is None else LayerSpec.from_dict(default),
            rules,
            **_runtime_from_dict(data),
        )

    def dumps(self, fmt: str = "json") -> str:
        if fmt == "yaml":
            import yaml

            return yaml.safe_dump(self.to_dict(), sort_keys=False)
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def load(cls, path: Path) -> Plan:
        path = Path(path)
        if not path.is_file():
            raise ArtefactError(f"plan file {path} does not exist")
        text = path.read_text()
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
            raise ArtefactError(f"plan file {path} is not valid JSON/YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ArtefactError(f"plan file {path} must hold a mapping at the top level")
        return cls.from_dict(data)


def _rule_from_dict(r: dict[str, Any]) -> Rule:
    spec = r.get("spec")
    return Rule(str(r["target"]), None if spec is None else LayerSpec.from_dict(spec))


def _runtime_from_dict(data: dict[str, Any]) -> dict[str, Any]:
    """The plan-level options of version 2 present in ``data`` (absent ones keep defaults)."""
    out: dict[str, Any] = {}
    if data.get("activations") is not None:
        out["activations"] = ActivationSpec.from_dict(data["activations"])
    if data.get("kv_cache") is not None:
        out["kv_cache"] = KVCacheSpec.from_dict(data["kv_cache"])
    for key in ("embedding", "head"):
        if data.get(key) is not None:
            out[key] = LayerSpec.from_dict({"algorithm": {"name": "rtn"}, **data[key]})
    if "untie_embeddings" in data:
        out["untie_embeddings"] = bool(data["untie_embeddings"])
    smooth = data.get("smoothquant")
    if smooth is not None:
        alpha = smooth.get("alpha", 0.5) if isinstance(smooth, dict) else smooth
        out["smoothquant"] = float(alpha)
    return out


def _changed(obj: Any, skip: tuple[str, ...] = ()) -> list[str]:
    """``name=value`` for each field of a dataclass that has a default and differs from it."""
    import dataclasses
    from enum import Enum

    out = []
    for f in dataclasses.fields(obj):
        if f.name in skip:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            continue
        value = getattr(obj, f.name)
        if value != default:
            shown = value.value if isinstance(value, Enum) else value
            out.append(f"{f.name}={shown}")
    return out


def uniform_plan(spec: LayerSpec | None, keep: tuple[str, ...] = ()) -> Plan:
    """Every linear layer gets ``spec``, except the exact names or patterns in ``keep``."""
    return Plan(default=spec, rules=tuple(Rule(t, None) for t in keep))


def _granularity_to_dict(g: Granularity) -> dict[str, Any]:
    if isinstance(g, PerGroup):
        return {"type": "group", "size": g.size}
    return {"type": "channel" if isinstance(g, PerChannel) else "tensor"}


def _granularity_from_dict(d: dict[str, Any]) -> Granularity:
    kind = d.get("type")
    if kind == "group":
        return PerGroup(int(d["size"]))
    if kind == "channel":
        return PerChannel()
    if kind == "tensor":
        return PerTensor()
    raise ConfigError(f"unknown granularity {kind!r}; use 'group', 'channel' or 'tensor'")


def _algorithm_to_dict(a: AlgorithmConfig) -> dict[str, Any]:
    if isinstance(a, GPTQConfig):
        return {
            "name": "gptq",
            "damp": a.damp,
            "block_size": a.block_size,
            "act_order": a.act_order.value,
        }
    if isinstance(a, SqueezeLLMConfig):
        return {
            "name": "squeezellm",
            "outlier_fraction": a.outlier_fraction,
            "iterations": a.iterations,
            "tol": a.tol,
            "sensitivity": a.sensitivity,
        }
    if isinstance(a, AWQConfig):
        return {
            "name": "awq",
            "grid": a.grid,
            "clip": a.clip,
            "n_clip_grid": a.n_clip_grid,
            "max_shrink": a.max_shrink,
        }
    if isinstance(a.clipping, MinMax):  # the default: plans written before clipping existed
        return {"name": "rtn"}
    return {"name": "rtn", "clipping": a.clipping.to_dict()}


def _algorithm_from_dict(d: dict[str, Any]) -> AlgorithmConfig:
    name = d.get("name")
    if name == "rtn":
        return RTNConfig(clipping_from_dict(d.get("clipping", {"type": "minmax"})))
    if name == "gptq":
        return GPTQConfig(
            float(d.get("damp", 0.01)), int(d.get("block_size", 128)), d.get("act_order", "static")
        )
    if name == "awq":
        return _awq_from_dict(d)
    if name == "squeezellm":
        return _squeezellm_from_dict(d)
    raise ConfigError(f"unknown algorithm {name!r}; known: 'awq', 'gptq', 'rtn', 'squeezellm'")


def _squeezellm_from_dict(d: dict[str, Any]) -> SqueezeLLMConfig:
    known = ("outlier_fraction", "iterations", "tol", "sensitivity")
    unknown = sorted(set(d) - {"name", *known})
    if unknown:
        raise ConfigError(f"unknown SqueezeLLM option(s) {unknown}; known: {', '.join(known)}")
    return SqueezeLLMConfig(**{k: d[k] for k in known if k in d})


def _awq_from_dict(d: dict[str, Any]) -> AWQConfig:
    known = ("grid", "clip", "n_clip_grid", "max_shrink")
    unknown = sorted(set(d) - {"name", *known})
    if unknown:
        raise ConfigError(f"unknown AWQ option(s) {unknown}; known: {', '.join(known)}")
    return AWQConfig(**{k: d[k] for k in known if k in d})
