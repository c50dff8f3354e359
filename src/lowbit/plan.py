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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lowbit._fields import (
    FieldError,
    at,
    check_keys,
    check_type,
    located,
    mapping,
    read_file,
    require,
)
from lowbit.algorithms import ActOrder, AlgorithmConfig, GPTQConfig, RTNConfig, check_gptq_format
from lowbit.algorithms.activation_specs import ActivationSpec, KVCacheSpec
from lowbit.algorithms.config import SqueezeLLMConfig
from lowbit.algorithms.serial import algorithm_from_dict, algorithm_to_dict
from lowbit.algorithms.squeezellm import check_squeezellm_format
from lowbit.errors import ArtefactError, ConfigError
from lowbit.formats import (
    Granularity,
    PerGroup,
    WeightFormat,
    describe_scheme,
    format_from_dict,
    format_to_dict,
)
from lowbit.formats.registry import granularity_from_dict, granularity_to_dict
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
        # a format's ``in_name`` fields (GGML's kind) are already in its scheme's name
        named = ("symmetric", *getattr(self.fmt, "in_name", ()))
        extras = _changed(self.fmt, skip=named) + _changed(self.algorithm)
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
            "granularity": granularity_to_dict(self.granularity),
            "algorithm": algorithm_to_dict(self.algorithm),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerSpec:
        """Strict: unknown fields and wrong types are FieldErrors naming the field's path."""
        data = mapping(data, "a layer spec")
        check_keys(data, ("format", "granularity", "algorithm"), "a layer spec")
        with at("format"):
            fmt = format_from_dict(require(data, "format", "a layer spec"))
        with at("granularity"):
            granularity = granularity_from_dict(require(data, "granularity", "a layer spec"))
        with at("algorithm"):
            algorithm = algorithm_from_dict(
                mapping(data.get("algorithm", {"name": "gptq"}), "an algorithm")
            )
        return cls(fmt, granularity, algorithm)


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
    source: str | None = field(default=None, compare=False, repr=False)  # the file read

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
        """Spec per module. A rule naming an unknown layer (with suggestions) and a pattern
        with a spec matching none are errors. A keep pattern (spec null) may match nothing:
        keeping what is absent changes nothing."""
        known = set(names)
        where = f"plan {self.source}" if self.source else "the plan"
        for rule in self.rules:
            if not rule.target.startswith("re:") and rule.target not in known:
                import difflib

                close = difflib.get_close_matches(rule.target, names, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(f"{where}: rule names unknown layer {rule.target!r}{hint}")
            pattern = rule.target.startswith("re:") and rule.spec is not None
            if pattern and not any(rule.matches(n) for n in names):
                raise ConfigError(
                    f"{where}: rule {rule.target!r} matches no layer of this model (its layers "
                    f"are named like {names[0]!r}); fix the pattern or remove the rule"
                )
        return {name: self.spec_for(name) for name in names}

    def check_does_something(self, names: list[str]) -> None:
        """A plan the user gave must change the model: one that keeps every layer in full
        precision and sets no plan-level option is a mistake, never a run that "succeeds" at 32
        bits per weight (lowbit's own identity checks build such plans on purpose)."""
        if all(self.spec_for(n) is None for n in names) and not self.uses_runtime_options:
            where = f"plan {self.source}" if self.source else "the plan"
            raise ConfigError(
                f"{where} quantizes nothing in this model ({len(names)} linear layers, every "
                "one kept in full precision, and no activations, KV cache, embedding, head or "
                "SmoothQuant); give a default spec or rules with specs"
            )

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
        """Strict: unknown keys and wrong types are FieldErrors naming the field's path."""
        data = mapping(data, "a plan")
        check_keys(data, ("lowbit_plan_version", "default", "rules", *_RUNTIME_KEYS), "a plan")
        _check_version(data.get("lowbit_plan_version"))
        default = data.get("default")
        with at("default"):
            spec = None if default is None else LayerSpec.from_dict(default)
        rules = data.get("rules", [])
        if not isinstance(rules, list):
            raise FieldError(("rules",), f"must be a list of rules, got {rules!r}")
        parsed = []
        for i, rule in enumerate(rules):
            with at("rules", i):
                parsed.append(_rule_from_dict(rule))
        return cls(spec, tuple(parsed), **_runtime_from_dict(data))

    def dumps(self, fmt: str = "json") -> str:
        if fmt == "yaml":
            import yaml

            return yaml.safe_dump(self.to_dict(), sort_keys=False)
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def load(cls, path: Path) -> Plan:
        """A plan file; every error names the file (and the line of a bad field)."""
        data, text = read_file(path, "plan file")
        if not isinstance(data, dict):
            raise ArtefactError(f"plan file {path} must hold a mapping at the top level")
        try:
            plan = cls.from_dict(data)
        except FieldError as exc:
            raise located(path, text, exc, "plan file") from None
        except ConfigError as exc:
            raise ConfigError(f"plan file {path}: {exc}") from None
        except ArtefactError as exc:
            raise ArtefactError(f"plan file {path}: {exc}") from None
        return replace(plan, source=str(path))


def load_menu(path: Path) -> tuple[LayerSpec, ...]:
    """A menu file: a YAML/JSON list of layer specs (errors name the file, entry and line)."""
    data, text = read_file(path, "menu file")
    if not isinstance(data, list) or not data:
        raise ArtefactError(f"menu file {path} must hold a non-empty list of layer specs")
    specs = []
    for i, entry in enumerate(data):
        try:
            with at(i):
                specs.append(LayerSpec.from_dict(entry))
        except FieldError as exc:
            raise located(path, text, exc, "menu file") from None
    return tuple(specs)


def _check_version(version: Any) -> None:
    if version in (PLAN_VERSION, PLAN_VERSION_RUNTIME) and not isinstance(version, bool):
        return
    newer = isinstance(version, int) and not isinstance(version, bool) and version > 2
    problem = (
        "is newer than this lowbit reads; upgrade lowbit"
        if newer
        else "is not supported; plans start with lowbit_plan_version: 1 (or 2)"
    )
    raise ArtefactError(
        f"plan version {version!r} {problem} (this lowbit reads versions {PLAN_VERSION} and "
        f"{PLAN_VERSION_RUNTIME})"
    )


def _rule_from_dict(r: Any) -> Rule:
    r = mapping(r, "a rule ({target: NAME or re:PATTERN, spec: SPEC or null})")
    check_keys(r, ("target", "spec"), "a rule")
    target = require(r, "target", "a rule")
    check_type(target, str, "target")
    spec = r.get("spec")
    with at("spec"):
        return Rule(target, None if spec is None else LayerSpec.from_dict(spec))


def _runtime_from_dict(data: dict[str, Any]) -> dict[str, Any]:
    """The plan-level options of version 2 present in ``data`` (absent ones keep defaults)."""
    out: dict[str, Any] = {}
    for key, kind in (("activations", ActivationSpec), ("kv_cache", KVCacheSpec)):
        if data.get(key) is not None:
            with at(key):
                out[key] = kind.from_dict(mapping(data[key], key))
    for key in ("embedding", "head"):
        if data.get(key) is not None:
            with at(key):
                out[key] = LayerSpec.from_dict(
                    {"algorithm": {"name": "rtn"}, **mapping(data[key], key)}
                )
    if "untie_embeddings" in data:
        check_type(data["untie_embeddings"], bool, "untie_embeddings")
        out["untie_embeddings"] = data["untie_embeddings"]
    smooth = data.get("smoothquant")
    if smooth is not None:
        with at("smoothquant"):
            if isinstance(smooth, dict):
                check_keys(smooth, ("alpha",), "smoothquant")
                smooth = smooth.get("alpha", 0.5)
                check_type(smooth, float, "alpha")
            else:
                check_type(smooth, float, "smoothquant")
        out["smoothquant"] = float(smooth)
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
