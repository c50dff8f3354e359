"""Quantized token embedding and output head (plan-level ``embedding`` / ``head`` specs).

Both are (vocab, hidden) matrices: a row is one token, so per-channel granularity gives one
scale per vocabulary row and groups split a row into runs of hidden dimensions. A model that
ties them (SmolLM2) stores one tensor; then either both get the same spec and are quantized
together (still one tensor), or the plan says ``untie_embeddings: true`` and each is quantized
on its own, the head becoming a separate stored tensor that the footprint counts. Any other
combination on a tied model is refused.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lowbit.errors import ConfigError, ModelSourceError
from lowbit.formats import QuantizedWeight, quantize_weight
from lowbit.models.sources import ModelHandle
from lowbit.plan import LayerSpec, Plan

HEAD_PATH = "lm_head"


def is_tied(config: Any) -> bool:
    return bool(getattr(config, "tie_word_embeddings", False))


def check_embedding_plan(plan: Plan, tied: bool, where: str) -> None:
    """A tied model's one tensor cannot take two different specs unless the plan unties it."""
    if tied and not plan.untie_embeddings and plan.embedding != plan.head:

        def show(s: LayerSpec | None) -> str:
            return "kept" if s is None else s.describe()

        raise ConfigError(
            f"{where} ties its embedding and output head (one tensor), but the plan gives the "
            f"embedding {show(plan.embedding)} and the head {show(plan.head)}: give both the "
            "same spec (quantized together), or set untie_embeddings: true to quantize them "
            "apart (the head is then stored as its own tensor, and counted)"
        )


def unties(plan: Plan, config: Any) -> bool:
    """Whether quantizing under ``plan`` stores the head of a tied model as its own tensor."""
    touched = plan.embedding is not None or plan.head is not None
    return is_tied(config) and plan.untie_embeddings and touched


def read_tensor(handle: ModelHandle, key: str, device: torch.device) -> torch.Tensor:
    """One tensor of ``handle``'s weight files, by key, read straight to ``device``."""
    weights = handle.weights()  # a foreign checkpoint's tensors are dequantized on read
    if key in weights.keys():
        return weights.read([key], device)[key]
    raise ModelSourceError(f"{handle.source}: tensor {key!r} is not in its weight files")


def quantize_embeddings(
    handle: ModelHandle, plan: Plan, device: torch.device
) -> dict[str, QuantizedWeight]:
    """Quantized weights of the embedding (under ``arch.embed_path``) and head (``lm_head``)
    as the plan says, computed on ``device``; a tied pair with one spec gives the embedding
    entry only."""
    tied = is_tied(handle.config)
    check_embedding_plan(plan, tied, handle.source)
    embed = handle.arch.embed_path
    out: dict[str, QuantizedWeight] = {}
    if plan.embedding is not None:
        out[embed] = _quantize(
            read_tensor(handle, f"{embed}.weight", device), plan.embedding, embed
        )
    if plan.head is not None and not (tied and not plan.untie_embeddings):
        key = f"{embed}.weight" if tied else f"{HEAD_PATH}.weight"
        out[HEAD_PATH] = _quantize(read_tensor(handle, key, device), plan.head, HEAD_PATH)
    return out


def _quantize(W: torch.Tensor, spec: LayerSpec, name: str) -> QuantizedWeight:
    clipping = getattr(spec.algorithm, "clipping", None)
    return quantize_weight(W.float(), spec.fmt, spec.granularity, clipping, name)


def untie_head(model: Any) -> Any:
    """Give a tied model's head its own copy of the embedding (in place); config says untied."""
    head = model.get_output_embeddings()
    if head is None:
        raise ConfigError(f"{type(model).__name__} has no output head to untie")
    head.weight = nn.Parameter(head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    return model
