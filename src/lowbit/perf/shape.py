"""The shape of a decoder-only transformer, read from its Hugging Face config alone (no
weights): what the performance model needs to count FLOPs and bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lowbit.errors import ConfigError

# model types whose block is norm → attention (q, k, v, o) → norm → gated MLP (gate, up, down)
DENSE_TYPES = ("llama", "mistral", "qwen2", "qwen3")
MOE_TYPES = ("mixtral", "qwen3_moe")  # routed experts only (no shared expert)


@dataclass(frozen=True)
class Linear:
    """One linear layer of a block: its module name (relative to the block), input and output
    width, and how many copies run per token (MoE experts: the routed top-k)."""

    name: str
    in_features: int
    out_features: int
    experts: int = 1
    active: int = 1


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    experts: int = 0
    top_k: int = 0
    qk_norm: bool = False
    blocks_path: str = "model.layers"

    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    def linears(self) -> tuple[Linear, ...]:
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        attn = (
            Linear("self_attn.q_proj", h, q),
            Linear("self_attn.k_proj", h, kv),
            Linear("self_attn.v_proj", h, kv),
            Linear("self_attn.o_proj", q, h),
        )
        i = self.intermediate
        if not self.is_moe:
            mlp = (
                Linear("mlp.gate_proj", h, i),
                Linear("mlp.up_proj", h, i),
                Linear("mlp.down_proj", i, h),
            )
            return attn + mlp
        e, k = self.experts, self.top_k
        return attn + (
            Linear("mlp.experts.gate_proj", h, i, e, k),
            Linear("mlp.experts.up_proj", h, i, e, k),
            Linear("mlp.experts.down_proj", i, h, e, k),
        )

    def linear_names(self) -> list[str]:
        """Full module names, as a plan names them (experts share one name per block)."""
        return [
            f"{self.blocks_path}.{b}.{lin.name}"
            for b in range(self.layers)
            for lin in self.linears()
        ]

    def parameters(self) -> int:
        per_block = sum(lin.in_features * lin.out_features * lin.experts for lin in self.linears())
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        norms = 2 * self.hidden + (2 * self.head_dim if self.qk_norm else 0)
        return self.layers * (per_block + norms) + embed + self.hidden


def shape_from_config(config: Any) -> ModelShape:
    """Read a config object or dict (``config.json``)."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    model_type = get("model_type")
    if model_type not in DENSE_TYPES + MOE_TYPES:
        raise ConfigError(
            f"the performance model reads decoder configs of types "
            f"{', '.join(DENSE_TYPES + MOE_TYPES)}, not {model_type!r}"
        )
    try:
        heads = int(get("num_attention_heads"))
        hidden = int(get("hidden_size"))
        experts = int(get("num_local_experts") or get("num_experts") or 0)
        inter = int(get("moe_intermediate_size") or 0) if experts else 0
        return ModelShape(
            model_type=model_type,
            hidden=hidden,
            layers=int(get("num_hidden_layers")),
            heads=heads,
            kv_heads=int(get("num_key_value_heads") or heads),
            head_dim=int(get("head_dim") or hidden // heads),
            intermediate=inter or int(get("intermediate_size")),
            vocab=int(get("vocab_size")),
            tied=bool(get("tie_word_embeddings", False)),
            experts=experts,
            top_k=int(get("num_experts_per_tok") or 0) if experts else 0,
            qk_norm=model_type in ("qwen3", "qwen3_moe"),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model config lacks a field the performance model needs: {exc}") from exc
