"""Deployment targets for planning: what each export can write and its engine can serve.

``lowbit plan --target vllm|gguf|any`` constrains allocation so that every plan it prints can
be exported unchanged. The exporters are asked, not paraphrased: each exporter registers in
:data:`WRITABLE` the check it applies to a quantized layer before writing (the GGUF exporter
its GGML type lookup, the compressed-tensors exporter its refusals), and a menu spec is tried
on a probe weight of each layer's shape, quantized with the spec's format and granularity (with
a saved permutation when the spec keeps one). A target adds what its engine needs on top: vLLM
runs q/k/v and gate/up as one matmul each and every expert of a layer with one kernel, so those
layers are tied to one spec, and serves integer weights of 4 and 8 bits only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from lowbit._registry import Registry
from lowbit.errors import ConfigError
from lowbit.export.common import WRITABLE, Target
from lowbit.formats import (
    FloatFormat,
    IntFormat,
    NVFP4Format,
    PerGroup,
    QuantizedWeight,
    quantize_weight,
)
from lowbit.plan import LayerSpec
from lowbit.sensitivity.table import SensitivityTable

VLLM_INT_BITS = (4, 8)  # weight-only integer widths vLLM's compressed-tensors kernels serve


@dataclass(frozen=True)
class Constraints:
    """What allocation must obey for a target: ``allowed`` menu indices per table layer, and
    ``ties``: groups of table layers that take one spec."""

    target: str
    allowed: dict[str, tuple[int, ...]] = field(default_factory=dict)
    ties: tuple[tuple[str, ...], ...] = ()
    fuse: bool = False
    dropped: dict[str, str] = field(default_factory=dict)  # menu label → why the target can't

    def notes(self) -> list[str]:
        return [f"--target {self.target} drops {k}: {why}" for k, why in self.dropped.items()]


Check = Callable[[QuantizedWeight], str | None]


@dataclass(frozen=True)
class DeployTarget:
    """``export``: the exporter asked (None: no export constraint); ``serves``: the engine's
    own limits on a layer the export can write; ``tie_fused`` and ``tie_experts``: layers the
    engine runs as one matmul."""

    name: str
    export: Target | None
    serves: Check = lambda qw: None
    tie_fused: bool = False
    tie_experts: bool = False


def _vllm_int(qw: QuantizedWeight) -> str | None:
    if qw.fmt.bits in VLLM_INT_BITS:
        return None
    return f"vLLM serves integer weights of 4 and 8 bits only, not {qw.fmt.bits}"


# FP8 weight granularities vLLM does not serve, by granularity type (registered, not tested)
VLLM_FP8_REFUSED: dict[type, Callable[[Any], str]] = {
    PerGroup: lambda g: f"vLLM serves FP8 per channel or per tensor, not in 1×{g.size} groups"
}


def _vllm_float(qw: QuantizedWeight) -> str | None:
    why = VLLM_FP8_REFUSED.get(type(qw.granularity))
    return None if why is None else why(qw.granularity)


def _vllm_nvfp4(qw: QuantizedWeight) -> str | None:
    return (
        "vLLM needs one NVFP4 global scale across fused q/k/v and gate/up, which lowbit's "
        "quantizers do not share yet (only round-to-nearest layers can be re-encoded so: "
        "lowbit.models.nvfp4_fused.share_fused_nvfp4_scales)"
    )


# the engine's own limits by format type, beyond what the export writes
VLLM_SERVES: dict[type, Check] = {
    IntFormat: _vllm_int,
    FloatFormat: _vllm_float,
    NVFP4Format: _vllm_nvfp4,
}


def _vllm_serves(qw: QuantizedWeight) -> str | None:
    check = VLLM_SERVES.get(type(qw.fmt))
    return None if check is None else check(qw)


TARGETS: Registry[DeployTarget] = Registry("deployment target")
TARGETS.register("any", DeployTarget("any", None))
TARGETS.register("vllm", DeployTarget("vllm", Target.COMPRESSED_TENSORS, _vllm_serves, True, True))
TARGETS.register("gguf", DeployTarget("gguf", Target.GGUF))


def why_not(
    target: DeployTarget, spec: LayerSpec, out_features: int, in_features: int
) -> str | None:
    """Why ``target`` cannot take a layer of this shape quantized with ``spec`` (None: it can)."""
    if target.export is None:
        return None
    _load_exporters()
    qw = _probe(spec, out_features, in_features)
    return WRITABLE.get(target.export.value)(qw) or target.serves(qw)


def constraints(
    table: SensitivityTable, name: str, handle: Any, *, strict: bool = False
) -> Constraints:
    """The allowed specs and ties for deploying plans from ``table`` to target ``name``. A menu
    spec the target can write for no layer of the table is dropped (recorded in ``dropped``),
    or with ``strict`` an error naming it and the target."""
    target = TARGETS.get(name)
    allowed: dict[str, tuple[int, ...]] = {}
    never: dict[str, str] = {}
    cache: dict[tuple[int, int, int], str | None] = {}
    for info in table.layers:
        ok = []
        for s, spec in enumerate(table.menu):
            key = (s, info.out_features, info.in_features)
            if key not in cache:
                cache[key] = why_not(target, spec, info.out_features, info.in_features)
            if cache[key] is None:
                ok.append(s)
            else:
                never.setdefault(table.labels[s], cache[key] or "")
        allowed[info.name] = tuple(ok)
    usable = {table.labels[s] for ok in allowed.values() for s in ok}
    unusable = {label: why for label, why in never.items() if label not in usable}
    if unusable and (strict or len(unusable) == len(table.menu)):
        lines = "\n  ".join(f"{label}: {why}" for label, why in unusable.items())
        raise ConfigError(
            f"target {target.name} cannot export {len(unusable)} spec(s) of the table's menu:\n"
            f"  {lines}\nMeasure a table whose menu {target.name} can write (lowbit "
            "sensitivity --format/--bits/--menu), or plan with --target any"
        )
    ties = _expert_ties(table, handle) if target.tie_experts else ()
    return Constraints(target.name, allowed, ties, target.tie_fused, unusable)


def _expert_ties(table: SensitivityTable, handle: Any) -> tuple[tuple[str, ...], ...]:
    """The table layers inside each experts module of each block, as one tie each."""
    arch = handle.arch
    groups: dict[str, list[str]] = {}
    for info in table.layers:
        for path in arch.block(info.block).experts:
            prefix = f"{arch.blocks_path}.{info.block}.{path}."
            if all(m.startswith(prefix) for m in info.member_names):
                groups.setdefault(prefix, []).append(info.name)
    return tuple(tuple(g) for g in groups.values() if len(g) > 1)


def _probe(spec: LayerSpec, out_features: int, in_features: int) -> QuantizedWeight:
    """A random weight of this shape quantized with the spec's format and granularity (RTN:
    what the exporters check is the layout, not the values; a tall weight is probed with fewer
    rows of the same residue modulo 256)."""
    rows = out_features if out_features <= 512 else 256 + out_features % 256  # same residues
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(rows, in_features, generator=gen)
    qw = quantize_weight(W, spec.fmt, spec.granularity)
    if spec.saves_permutation:
        qw = replace(qw, perm=torch.arange(in_features))
    return qw


def _load_exporters() -> None:
    """The exporters register their checks when imported."""
    import lowbit.export.compressed
    import lowbit.export.gguf_file  # noqa: F401
