"""A :class:`~lowbit.perf.shape.ModelShape` from a Hugging Face config (object or
``config.json`` dict). What differs between families is data (:data:`FAMILIES`); the config's
own fields give the sizes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lowbit.errors import ConfigError
from lowbit.perf.shape import Mla, ModelShape, Moe


@dataclass(frozen=True)
class Family:
    """What a family's block looks like beyond the sizes its config gives."""

    qk_norm: str = ""  # "head" | "full" | ""
    qkv_bias: bool = False  # q/k/v biases whatever ``attention_bias`` says (Qwen2)
    fused: bool = False
    hidden_norms: int = 2
    sinks: bool = False
    moe: str = ""  # how the sparse blocks are chosen: "all" | "qwen" | "deepseek" | ""
    mla: bool = False


FAMILIES = {
    "llama": Family(),
    "mistral": Family(),
    "qwen2": Family(qkv_bias=True),
    "qwen3": Family(qk_norm="head"),
    "gemma2": Family(hidden_norms=4),
    "gemma3_text": Family(qk_norm="head", hidden_norms=4),
    "phi3": Family(fused=True),
    "olmo2": Family(qk_norm="full"),
    "mixtral": Family(moe="all"),
    "qwen2_moe": Family(qkv_bias=True, moe="qwen"),
    "qwen3_moe": Family(qk_norm="head", moe="qwen"),
    "deepseek_v3": Family(moe="deepseek", mla=True),
    "gpt_oss": Family(sinks=True, moe="all"),
}
DENSE_TYPES = tuple(k for k, f in FAMILIES.items() if not f.moe)
MOE_TYPES = tuple(k for k, f in FAMILIES.items() if f.moe)


def read_shape(config: Any) -> ModelShape:
    get = _getter(config)
    model_type = get("model_type")
    if model_type not in FAMILIES:
        raise ConfigError(
            f"the performance model reads decoder configs of types "
            f"{', '.join(FAMILIES)}, not {model_type!r}"
        )
    fam = FAMILIES[model_type]
    try:
        return _read(get, model_type, fam)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{model_type} config lacks a field the performance model needs: {exc}"
        ) from exc


def _getter(config: Any) -> Callable[..., Any]:
    if isinstance(config, dict):
        return config.get
    return lambda k, d=None: getattr(config, k, d)


def _read(get: Callable[..., Any], model_type: str, fam: Family) -> ModelShape:
    heads = int(get("num_attention_heads"))
    hidden = int(get("hidden_size"))
    layers = int(get("num_hidden_layers"))
    bias = bool(get("attention_bias", False))
    mla = _mla(get) if fam.mla else None
    moe = _moe(get, model_type) if fam.moe else None
    return ModelShape(
        model_type=model_type,
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=1 if mla else int(get("num_key_value_heads") or heads),
        head_dim=mla.qk_head_dim if mla else int(get("head_dim") or hidden // heads),
        intermediate=int(get("intermediate_size")),
        vocab=int(get("vocab_size")),
        tied=bool(get("tie_word_embeddings", False)),
        qk_norm=fam.qk_norm,
        qkv_bias=fam.qkv_bias or bias,
        o_bias=bias,
        mlp_bias=bool(get("mlp_bias", False)),
        fused=fam.fused,
        hidden_norms=fam.hidden_norms,
        sinks=fam.sinks,
        mla=mla,
        moe=moe,
        sparse_blocks=_sparse_blocks(get, fam.moe, layers) if moe else (),
    )


def _mla(get: Callable[..., Any]) -> Mla:
    return Mla(
        q_lora_rank=int(get("q_lora_rank") or 0),
        kv_lora_rank=int(get("kv_lora_rank")),
        qk_nope=int(get("qk_nope_head_dim")),
        qk_rope=int(get("qk_rope_head_dim")),
        v_head_dim=int(get("v_head_dim")),
    )


def _moe(get: Callable[..., Any], model_type: str) -> Moe:
    experts = int(get("num_local_experts") or get("num_experts") or get("n_routed_experts") or 0)
    if experts < 1:
        raise ValueError("no expert count (num_local_experts, num_experts or n_routed_experts)")
    inter = int(get("moe_intermediate_size") or get("intermediate_size"))
    shared, shared_name = 0, "shared_experts"
    if model_type == "deepseek_v3":
        shared = int(get("n_shared_experts") or 0) * inter
    if model_type == "qwen2_moe":
        shared, shared_name = int(get("shared_expert_intermediate_size") or 0), "shared_expert"
    return Moe(
        experts=experts,
        top_k=int(get("num_experts_per_tok")),
        intermediate=inter,
        shared_intermediate=shared,
        shared=shared_name,
        shared_gate=model_type == "qwen2_moe" and shared > 0,
        router="router" if model_type == "gpt_oss" else "gate",
        bias=model_type == "gpt_oss",
    )


def _sparse_blocks(get: Callable[..., Any], rule: str, layers: int) -> tuple[int, ...]:
    """The blocks whose MLP is the mixture of experts, by the family's own rule."""
    if rule == "deepseek":  # the first ``first_k_dense_replace`` blocks are dense
        first = int(get("first_k_dense_replace") or 0)
        return tuple(range(first, layers))
    if rule == "qwen":  # dense: ``mlp_only_layers``, and blocks off the sparse step
        dense = set(get("mlp_only_layers") or ())
        step = int(get("decoder_sparse_step") or 1)
        return tuple(i for i in range(layers) if i not in dense and (i + 1) % step == 0)
    return tuple(range(layers))
