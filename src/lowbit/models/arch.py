"""Architecture knowledge as data: one small spec per family.

A spec names where the decoder blocks live, and the block's linear layers in the order the
block calls them, grouped by shared input (``sequential_groups``): members of a group read the
same activations, so they share one Hessian and are quantized together before the block goes
on. Supporting a new family is a new :class:`ArchSpec`, not a new code path.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbit._registry import Registry
from lowbit.errors import ModelSourceError


@dataclass(frozen=True)
class ArchSpec:
    name: str
    model_types: tuple[str, ...]
    blocks_path: str
    embed_path: str
    sequential_groups: tuple[tuple[str, ...], ...]
    # Linears that serving engines fuse into one matmul (q/k/v, gate/up): one spec for all.
    fused_groups: tuple[tuple[str, ...], ...] = ()
    # The value and down projections, which llama.cpp's mixes give more bits.
    value_and_down: tuple[str, ...] = ()

    @property
    def linear_names(self) -> tuple[str, ...]:
        return tuple(name for group in self.sequential_groups for name in group)


ARCHITECTURES: Registry[ArchSpec] = Registry("architecture")

LLAMA = ARCHITECTURES.register(
    "llama",
    ArchSpec(
        name="llama",
        # Mistral, Qwen2 and Qwen3 use the same block layout (Qwen3 adds q/k norms, not linears).
        model_types=("llama", "mistral", "qwen2", "qwen3"),
        blocks_path="model.layers",
        embed_path="model.embed_tokens",
        sequential_groups=(
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            ("self_attn.o_proj",),
            ("mlp.gate_proj", "mlp.up_proj"),
            ("mlp.down_proj",),
        ),
        fused_groups=(
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            ("mlp.gate_proj", "mlp.up_proj"),
        ),
        value_and_down=("self_attn.v_proj", "mlp.down_proj"),
    ),
)

OPT = ARCHITECTURES.register(
    "opt",
    ArchSpec(
        name="opt",
        model_types=("opt",),
        blocks_path="model.decoder.layers",
        embed_path="model.decoder.embed_tokens",
        sequential_groups=(
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            ("self_attn.out_proj",),
            ("fc1",),
            ("fc2",),
        ),
        fused_groups=(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),),
        value_and_down=("self_attn.v_proj", "fc2"),
    ),
)

PHI3 = ARCHITECTURES.register(
    "phi3",
    ArchSpec(
        name="phi3",
        model_types=("phi3",),
        blocks_path="model.layers",
        embed_path="model.embed_tokens",
        sequential_groups=(
            ("self_attn.qkv_proj",),
            ("self_attn.o_proj",),
            ("mlp.gate_up_proj",),
            ("mlp.down_proj",),
        ),
        value_and_down=("mlp.down_proj",),  # q/k/v are one stored matrix here
    ),
)


def spec_for_model_type(model_type: str, where: str) -> ArchSpec:
    """The spec whose family includes ``model_type``; ``where`` names the model in errors."""
    for _, spec in ARCHITECTURES:
        if model_type in spec.model_types:
            return spec
    supported = sorted(t for _, s in ARCHITECTURES for t in s.model_types)
    raise ModelSourceError(
        f"{where}: architecture {model_type!r} is not supported (supported model types: "
        f"{', '.join(supported)}); add an ArchSpec in lowbit/models/arch.py for it"
    )
