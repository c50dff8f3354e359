"""Architecture discovery: the block specs of a causal LM, found by running it.

For a config that transformers can build, :func:`architecture_of`:

1. builds the model on the ``meta`` device (no memory) with its experts linearized
   (:mod:`lowbit.models.experts`), finds the decoder block list (the module list of
   ``num_hidden_layers`` blocks) and the input embedding, and sorts the blocks into kinds by
   their module names (DeepSeek-V3: dense blocks, then MoE blocks);
2. builds a *twin* with the same structure at tiny widths (:mod:`lowbit.models.twin_config`)
   and random weights, holding as many blocks as it takes to include one block of each kind,
   and runs it once to capture each block's inputs;
3. traces one block of each kind (:func:`lowbit.models.tracing.trace_block`): the linears in
   call order, grouped by shared input; the norms and linears whose scales can be folded
   into the next linears, each *checked by folding random scales and comparing the block's
   output* (so Gemma's ``(1 + w)`` norms are found as such, and a norm that also feeds a
   router is no smoothing pair).

The hand-written family specs (:mod:`lowbit.models.arch`) are used for their families when
they fit the model, and tests check that discovery agrees with them. A model whose blocks can
be found but not traced still gets its blocks path and embedding (evaluation needs no more);
:attr:`ArchSpec.unsupported` then says why quantization is refused.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from torch import nn

from lowbit.errors import ModelSourceError
from lowbit.models.arch import ArchSpec, BlockSpec, family_spec


def architecture_of(config: Any, where: str) -> ArchSpec:
    """The architecture of a model with ``config`` (``where`` names it in errors)."""
    return _cached(config.to_json_string(use_diff=False), type(config), where)


@lru_cache(maxsize=32)
def _cached(config_json: str, config_type: type, where: str) -> ArchSpec:
    import json

    config = config_type.from_dict(json.loads(config_json))
    return discover_architecture(config, where, hand_written=True)


def discover_architecture(config: Any, where: str, *, hand_written: bool = True) -> ArchSpec:
    """The architecture of ``config``: the hand-written family spec when there is one that
    fits (unless ``hand_written`` is False), else discovered by tracing."""
    meta = meta_model(config, where)
    blocks_path, blocks = find_blocks(meta, config, where)
    embed = meta.get_input_embeddings()
    names = {id(m): n for n, m in meta.named_modules()}
    embed_path = names.get(id(embed), "") if embed is not None else ""
    family = family_spec(config.model_type) if hand_written else None
    if family is not None and _fits(family, blocks_path, blocks):
        return family.with_blocks(len(blocks))
    kinds = [block_signature(b) for b in blocks]
    base = ArchSpec(config.model_type, (config.model_type,), blocks_path, embed_path)
    try:
        from lowbit.models.tracing import trace_kinds

        specs = trace_kinds(config, kinds, blocks_path)
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            ModelSourceError) as exc:  # fmt: skip  # stated as the reason quantization is refused
        reason = f"tracing one block of {where} failed ({type(exc).__name__}: {exc})"
        return _replace(base, unsupported=reason)
    return _replace(base, blocks=tuple(specs), origin="discovered", traits=model_traits(config))


def _replace(spec: ArchSpec, **changes: Any) -> ArchSpec:
    from dataclasses import replace

    return replace(spec, **changes)


def meta_model(config: Any, where: str) -> nn.Module:
    """The model of ``config`` on the meta device, experts linearized."""
    import torch

    from lowbit.models.skeleton import build_skeleton

    return build_skeleton(config, torch.device("meta"), torch.float32, where)


def find_blocks(model: nn.Module, config: Any, where: str) -> tuple[str, nn.ModuleList]:
    """The decoder block list: the module list with ``num_hidden_layers`` members."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n = int(getattr(text, "num_hidden_layers", 0) or 0)
    found = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) == n
    ]
    if n == 0 or not found:
        raise ModelSourceError(
            f"{where}: cannot find the decoder blocks (no module list of num_hidden_layers = "
            f"{n} modules in {type(model).__name__}); this model's layout is not understood"
        )
    name, blocks = found[0]
    return name, blocks


def block_signature(block: nn.Module) -> tuple[tuple[str, str], ...]:
    """The block's module names and classes (its kind), widths aside."""
    return tuple((n, type(m).__name__) for n, m in block.named_modules())


def _fits(family: ArchSpec, blocks_path: str, blocks: nn.ModuleList) -> bool:
    """Whether a hand-written family spec names this model's modules (no experts)."""
    if family.blocks_path != blocks_path:
        return False
    names = {n for n, _ in blocks[0].named_modules()}
    kinds = {block_signature(b) for b in blocks}
    spec = family.blocks[0]
    return (
        len(kinds) == 1
        and all(m in names for m in spec.linear_names)
        and not any("experts" in n for n in names)
    )


def model_traits(config: Any) -> tuple[str, ...]:
    """Model-wide facts some stage needs (soft-capping, tied embeddings)."""
    traits = []
    for attr in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(config, attr, None):
            traits.append(f"{attr.removesuffix('_softcapping').replace('_', ' ')} soft-capping")
    if getattr(config, "tie_word_embeddings", False):
        traits.append("tied embeddings")
    return tuple(traits)


def describe_block(spec: BlockSpec) -> dict[str, Any]:
    """A block spec as JSON-friendly data (``lowbit inspect``)."""
    return {
        "groups": [list(g) for g in spec.sequential_groups],
        "fused": [list(g) for g in spec.fused_groups],
        "smoothing_pairs": [
            {
                "prev": p.prev,
                "linears": list(p.linears),
                "linear": p.prev_is_linear,
                "norm_offset": p.norm_offset,
            }
            for p in spec.smoothing_pairs
        ],
        "value_and_down": list(spec.value_and_down),
        "no_clip": list(spec.no_clip),
        "experts": list(spec.experts),
        "routers": list(spec.routers),
        "traits": list(spec.traits),
    }
