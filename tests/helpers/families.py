"""Tiny configs of every family lowbit is proven on, from transformers' own config classes
(offline, random weights): dense (Llama 3, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 text,
Phi-3, OLMo 2, OPT) and mixtures of experts (Mixtral, Qwen3-MoE, DeepSeek-V3 with MLA, shared
experts and dense first layers, GPT-OSS)."""

from __future__ import annotations

from typing import Any

VOCAB = 320
_ATTN = dict(
    vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=256,
)  # fmt: skip


def _configs() -> dict[str, Any]:
    import transformers as T

    return {
        "llama3": lambda: T.LlamaConfig(
            intermediate_size=96, num_hidden_layers=2, rope_theta=500000.0, **_ATTN
        ),
        "mistral": lambda: T.MistralConfig(
            intermediate_size=96, num_hidden_layers=2, sliding_window=None, **_ATTN
        ),
        "qwen2": lambda: T.Qwen2Config(intermediate_size=96, num_hidden_layers=2, **_ATTN),
        "gemma2": lambda: T.Gemma2Config(
            intermediate_size=96, num_hidden_layers=2, head_dim=16, sliding_window=16, **_ATTN
        ),
        "gemma3": lambda: T.Gemma3TextConfig(
            intermediate_size=96,
            num_hidden_layers=3,
            head_dim=16,
            sliding_window=16,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            **_ATTN,
        ),
        "phi3": lambda: T.Phi3Config(
            intermediate_size=96, num_hidden_layers=2, pad_token_id=0, **_ATTN
        ),
        "olmo2": lambda: T.Olmo2Config(
            intermediate_size=96, num_hidden_layers=2, pad_token_id=0, **_ATTN
        ),
        "mixtral": lambda: T.MixtralConfig(
            intermediate_size=64,
            num_hidden_layers=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=None,
            **_ATTN,
        ),
        "qwen3_moe": lambda: T.Qwen3MoeConfig(
            intermediate_size=96,
            moe_intermediate_size=32,
            num_hidden_layers=2,
            num_experts=8,
            num_experts_per_tok=2,
            head_dim=16,
            norm_topk_prob=True,
            **_ATTN,
        ),
        "deepseek_v3": lambda: T.DeepseekV3Config(
            intermediate_size=96,
            moe_intermediate_size=32,
            num_hidden_layers=3,
            first_k_dense_replace=1,
            n_routed_experts=8,
            n_shared_experts=1,
            num_experts_per_tok=2,
            n_group=2,
            topk_group=1,
            q_lora_rank=32,
            kv_lora_rank=32,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=16,
            pad_token_id=0,
            **{**_ATTN, "num_key_value_heads": 4},
        ),
        "gpt_oss": lambda: T.GptOssConfig(
            intermediate_size=32,
            num_hidden_layers=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            head_dim=16,
            sliding_window=16,
            pad_token_id=0,
            layer_types=["sliding_attention", "full_attention"],
            **_ATTN,
        ),
    }


FAMILIES = (
    "llama3", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "olmo2", "opt",
    "mixtral", "qwen3_moe", "deepseek_v3", "gpt_oss",
)  # fmt: skip
MOE = ("mixtral", "qwen3_moe", "deepseek_v3", "gpt_oss")


def family_config(family: str) -> Any:
    configs = _configs()
    if family not in configs:
        raise ValueError(family)
    return configs[family]()
