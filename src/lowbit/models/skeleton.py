"""A model's module tree without its weights: every parameter on ``meta``, buffers real.

The tree is built on the ``meta`` device, so no parameter is ever allocated (a DeepSeek-V3
MoE block's fused experts are 30 GB in fp32: allocating them, even briefly, fails). Buffers
(rotary frequencies, embedding scales) are not in checkpoints and were computed in the
constructors, on meta; each module holding one is re-initialized on the real device by the
model's own ``_init_weights``, the function transformers runs for the same purpose when it
loads a checkpoint. A floating buffer that ``_init_weights`` leaves unset (it starts as NaN)
is an error naming it, never a silent zero. A tied output head gets its own meta parameter
(tied again when its embedding is loaded). Fused experts are then linearized
(:mod:`lowbit.models.experts`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lowbit.errors import ModelSourceError
from lowbit.models.experts import linearize_experts


def build_skeleton(config: Any, device: torch.device, dtype: torch.dtype, where: str) -> nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except (ValueError, KeyError, TypeError, AttributeError, ImportError) as exc:
        raise ModelSourceError(
            f"{where}: transformers cannot build a causal LM of type "
            f"{getattr(config, 'model_type', '?')!r} ({type(exc).__name__}: {exc}); lowbit "
            "runs the models transformers builds: upgrade transformers"
        ) from exc
    if device.type != "meta":
        _real_buffers(model, device, where)
    _untie_head(model)
    linearize_experts(model)
    return model.eval()


def _untie_head(model: nn.Module) -> None:
    """A tied head gets its own (meta) parameter: the tie is made again when the embedding
    is loaded (``LazyModel.materialize_outside``), as after any weight replacement."""
    head = model.get_output_embeddings()
    if head is not None and isinstance(getattr(head, "weight", None), nn.Parameter):
        head.weight = nn.Parameter(torch.empty_like(head.weight), requires_grad=False)


def _real_buffers(model: nn.Module, device: torch.device, where: str) -> None:
    init = getattr(model, "_init_weights", None)
    for name, module in model.named_modules():
        metas = [n for n, b in module.named_buffers(recurse=False) if b.is_meta]
        if not metas:
            continue
        for n in metas:
            buf = module._buffers[n]
            assert buf is not None
            fill = float("nan") if buf.is_floating_point() else 0
            module._buffers[n] = torch.full(buf.shape, fill, dtype=buf.dtype, device=device)
        if init is not None:
            with torch.no_grad():
                init(module)
        for n in metas:
            buf = module._buffers[n]
            if buf is not None and buf.is_floating_point() and bool(buf.isnan().any()):
                raise ModelSourceError(
                    f"{where}: buffer {name}.{n} of {type(module).__name__} is not set by the "
                    "model's _init_weights, so lowbit cannot build this model without its "
                    "weights; this architecture is not supported"
                )
