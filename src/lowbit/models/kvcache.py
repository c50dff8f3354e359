"""KV-cache fake quantization during evaluation, through transformers' attention interface.

The attention modules of Llama-family and Qwen3 models compute q/k/v, apply RoPE to q and k,
update the cache, then call the function registered under ``config._attn_implementation`` with
the key and value states (batch, kv_heads, seq, head_dim). lowbit registers
:data:`ATTENTION_NAME`, which fake-quantizes keys (after RoPE) and values as the plan's
:class:`KVCacheSpec` says and then runs transformers' SDPA attention, and points the model at
it; attention modules without a spec (another model) pass through unchanged.

During generation with a cache the whole cache is quantized again at every step; per-token and
per-head scales are then idempotent (a quantized row maps to itself), per-channel ones are not
(a streaming KIVI keeps a full-precision residual window, which this does not model).
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

import torch
from torch import nn

from lowbit.algorithms.activation_specs import KVCacheSpec, KVGranularity
from lowbit.errors import ConfigError
from lowbit.formats.activation import ActivationFormat, fake_quantize_rows
from lowbit.models.discover import architecture_of
from lowbit.models.lazy import block_list

ATTENTION_NAME = "lowbit_kv_sdpa"
# model types whose attention calls the interface with post-RoPE keys (checked by tests)
KV_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")

_SPECS: WeakKeyDictionary[nn.Module, KVCacheSpec] = WeakKeyDictionary()


def quantize_kv(x: torch.Tensor, fmt: ActivationFormat, granularity: KVGranularity) -> torch.Tensor:
    """Fake-quantize key or value states ``x`` (batch, heads, seq, head_dim); same shape and
    dtype. per_head: one scale per (batch, head, token); per_token: per (batch, token) over all
    heads; per_channel: per (batch, head, channel) over the sequence."""
    b, h, s, d = x.shape
    if granularity is KVGranularity.PER_HEAD:
        out = fake_quantize_rows(x, fmt)
    elif granularity is KVGranularity.PER_TOKEN:
        rows = x.transpose(1, 2).reshape(b, s, h * d)
        out = fake_quantize_rows(rows, fmt).reshape(b, s, h, d).transpose(1, 2)
    else:
        out = fake_quantize_rows(x.transpose(-1, -2), fmt).transpose(-1, -2)
    return out.to(x.dtype)


def _attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    spec = _SPECS.get(module)
    if spec is not None:
        key = quantize_kv(key, spec.fmt, spec.key_granularity)
        value = quantize_kv(value, spec.fmt, spec.value_granularity)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, _attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)


def attach_kv_quant(model: Any, spec: KVCacheSpec) -> Any:
    """Make every attention layer of ``model`` (in place) read fake-quantized keys and values.

    Refuses architectures whose attention has not been verified to pass post-RoPE keys through
    transformers' attention interface."""
    model_type = str(getattr(model.config, "model_type", "?"))
    if model_type not in KV_MODEL_TYPES:
        raise ConfigError(
            f"KV-cache quantization is not supported for architecture {model_type!r} (supported: "
            f"{', '.join(KV_MODEL_TYPES)}); remove kv_cache from the plan for this model"
        )
    arch = architecture_of(model.config, model_type)
    _register()
    for block in block_list(model, arch.blocks_path):
        _SPECS[block.get_submodule("self_attn")] = spec
    model.set_attn_implementation(ATTENTION_NAME)
    return model
