"""What lowbit finds in a model (``lowbit inspect``) and what each stage can do with it
(``lowbit ls architectures``).

A model is described by its config alone (a model source, a model directory, or a
``config.json``): the architecture comes from discovery (:mod:`lowbit.models.discover`), the
stage support from the stages' own registries (the KV-cache attention, the GGUF exporter's
architectures, the performance model's shapes), each refusal with its reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lowbit.errors import ConfigError, ModelSourceError
from lowbit.models.arch import ArchSpec
from lowbit.models.discover import architecture_of, describe_block

# the families proven end to end on tiny models (tests/models/test_families.py)
PROVEN = (
    "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "olmo2", "opt",
    "mixtral", "qwen3_moe", "deepseek_v3", "gpt_oss",
)  # fmt: skip
STAGES = ("quantize", "awq", "smoothquant", "kv-cache", "compressed-tensors", "gguf", "perf")
_EXPERTS = ("num_experts", "n_routed_experts", "num_local_experts")


def config_of(source: str) -> Any:
    """The config of a model source, a model directory or a ``config.json`` (no weights
    needed for the last two)."""
    from transformers import AutoConfig

    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
            return AutoConfig.for_model(**data)
        except (ValueError, KeyError) as exc:
            raise ModelSourceError(f"{path} is not a model config.json: {exc}") from exc
    if path.is_dir() and (path / "config.json").is_file() and not any(path.glob("*.safetensors")):
        return config_of(str(path / "config.json"))
    from lowbit.models.sources import resolve_model

    return resolve_model(source).config


def inspect_model(source: str) -> dict[str, Any]:
    """What discovery found in ``source`` and what each stage can do with it."""
    config = config_of(source)
    arch = architecture_of(config, source)
    kinds = [{"blocks": idx, **describe_block(spec)} for spec, idx in arch.block_kinds.items()]
    return {
        "model": source,
        "model_type": config.model_type,
        "architecture": arch.name,
        "origin": arch.origin,
        "blocks_path": arch.blocks_path,
        "embed_path": arch.embed_path,
        "blocks": len(arch.blocks),
        "linears": len(arch.layer_names()),
        "traits": list(arch.traits),
        "unsupported": arch.unsupported,
        "kinds": kinds,
        "stages": stage_support(config, arch),
    }


def stage_support(config: Any, arch: ArchSpec) -> dict[str, str]:
    """``yes …`` or ``no: reason`` for each stage of :data:`STAGES`."""
    pairs = [p for b in arch.blocks for p in b.smoothing_pairs]
    moe = any(b.experts for b in arch.blocks)
    out = {"quantize": f"no: {arch.unsupported}" if arch.unsupported else "yes (RTN, GPTQ)"}
    out["awq"] = (
        f"yes ({len(pairs)} pairs over {len(arch.blocks)} blocks)"
        if pairs
        else "no: no norm or linear feeds a group of linears alone"
    )
    norms = [p for p in pairs if not p.prev_is_linear]
    out["smoothquant"] = "yes" if norms else "no: no norm feeds a group of linears alone"
    out["kv-cache"] = _kv_cache(config)
    out["compressed-tensors"] = _compressed(config, moe)
    out["gguf"] = _gguf(config, moe)
    out["perf"] = _perf(config)
    return out


def _compressed(config: Any, moe: bool) -> str:
    from lowbit.models.expert_weights import stored_expert_names

    if not moe:
        return "yes"
    stored = stored_expert_names(config.model_type)
    if stored == "lowbit":
        return "yes (experts written per expert, as vLLM reads them)"
    return (
        f"no: its checkpoints store the experts {stored} (not as experts.{{e}}.gate_proj); "
        "writing them under those names is not supported yet"
    )


def _kv_cache(config: Any) -> str:
    from lowbit.models.kvcache import KV_MODEL_TYPES

    if config.model_type in KV_MODEL_TYPES:
        return "yes"
    return f"no: the KV-cache attention is written for {', '.join(KV_MODEL_TYPES)}"


def _gguf(config: Any, moe: bool) -> str:
    from lowbit.export.gguf_file import ARCHES

    if config.model_type in ARCHES:
        return "yes"
    kind = "stacked expert tensors" if moe else "its tensor layout"
    return f"no: the GGUF writer maps {', '.join(ARCHES)}, not {kind} of {config.model_type}"


def _perf(config: Any) -> str:
    from lowbit.perf.shape import shape_from_config

    try:
        shape_from_config(config)
    except ConfigError as exc:
        return f"no: {exc}"
    return "yes"


def architectures_table() -> list[dict[str, str]]:
    """One row per proven family: each stage's support, from discovery on a tiny twin of the
    family's default config (every block kind, four experts)."""
    from transformers import CONFIG_MAPPING

    rows = []
    for model_type in PROVEN:
        config = _small(CONFIG_MAPPING[model_type]())
        arch = architecture_of(config, model_type)
        rows.append({"family": model_type, **stage_support(config, arch)})
    return rows


def _small(config: Any) -> Any:
    from lowbit.models.twin_config import twin_config

    twin = twin_config(config, min(config.num_hidden_layers, 8))  # every kind of block
    for attr in _EXPERTS:
        if getattr(twin, attr, None):
            setattr(twin, attr, 4)
            twin.num_experts_per_tok = min(int(twin.num_experts_per_tok), 2)
    for attr in ("n_group", "topk_group"):
        if getattr(twin, attr, None):
            setattr(twin, attr, 1)
    return twin
