"""A tiny twin of a model config: the same block structure at small widths.

Discovery (:mod:`lowbit.models.discover`) traces blocks on random weights; a 70B block (or a
DeepSeek-V3 MoE block, 11 B parameters) is too big for that, and the structure does not
depend on the widths. The twin keeps the module names, the number of experts, the layer
pattern (its first ``n`` layers) and whether key/value heads are fewer than query heads
(which decides whether v_proj → o_proj can be smoothed), and sets every width to a few tens.
"""

from __future__ import annotations

import copy
from typing import Any

# attribute → tiny value, set only where the config has the attribute with a value
WIDTHS = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 48,
    "ffn_dim": 96,
    "word_embed_proj_dim": 64,
    "head_dim": 16,
    "q_lora_rank": 32,
    "kv_lora_rank": 32,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 16,
    "vocab_size": 256,
}
TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id")


def twin_config(config: Any, n_layers: int) -> Any:
    """A copy of ``config`` at tiny widths with its first ``n_layers`` layers."""
    twin = copy.deepcopy(config)
    text = twin.get_text_config() if hasattr(twin, "get_text_config") else twin
    for attr, value in WIDTHS.items():
        if getattr(text, attr, None) is not None and _settable(text, attr):
            setattr(text, attr, value)
    _heads(text)
    if getattr(text, "qk_nope_head_dim", None) is not None:  # MLA: derived in __init__
        text.qk_head_dim = text.qk_nope_head_dim + text.qk_rope_head_dim
        text.head_dim = text.qk_rope_head_dim
    for attr in TOKEN_IDS:
        value = getattr(text, attr, None)
        if isinstance(value, int) and value >= text.vocab_size:
            setattr(text, attr, text.vocab_size - 1)
    text.num_hidden_layers = n_layers
    if isinstance(getattr(text, "layer_types", None), list):
        text.layer_types = text.layer_types[:n_layers]
    return twin


def _settable(obj: Any, attr: str) -> bool:
    """Not a read-only property (Falcon derives ``head_dim`` from the other widths)."""
    prop = getattr(type(obj), attr, None)
    return not isinstance(prop, property) or prop.fset is not None


def _heads(text: Any) -> None:
    heads = getattr(text, "num_attention_heads", None)
    if heads is None:
        return
    kv = getattr(text, "num_key_value_heads", None)
    text.num_attention_heads = 4
    if kv is not None:
        text.num_key_value_heads = 4 if kv >= heads else (1 if kv == 1 else 2)
