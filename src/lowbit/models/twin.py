"""A tiny random twin of a model: same architecture class and code path (attention, cache,
grouped KV heads when the original has them), two blocks of width 64. Running it costs almost
no arithmetic, so its measured times are the runtime's fixed per-operator costs."""

from __future__ import annotations

import copy
from typing import Any

import torch


def tiny_twin(config: Any, blocks: int = 2) -> Any:
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(config)
    grouped = getattr(cfg, "num_key_value_heads", None) not in (None, cfg.num_attention_heads)
    cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim = 64, 4, 16
    cfg.num_key_value_heads = 2 if grouped else 4
    cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size = 128, blocks, 512
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(cfg, key, None)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
