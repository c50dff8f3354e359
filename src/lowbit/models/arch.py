"""Architecture knowledge as data: one small spec per family.

A spec names where the decoder blocks live, and the block's linear layers in the order the
block calls them, grouped by shared input (``sequential_groups``): members of a group read the
same activations, so they share one Hessian and are quantized together before the block goes
on. Supporting a new family is a new :class:`ArchSpec`, not a new code path.

``smoothing_pairs`` name, per block, an operation whose output feeds some linears and can absorb
a per-channel scale (a norm's weight, or a preceding linear's rows): AWQ and SmoothQuant divide
it by s and multiply the linears' input columns by s, which leaves the block's function
unchanged. A linear → linear pair is valid only when the preceding linear's output channels are
exactly the next linear's input channels: with grouped-query attention v_proj has fewer output
channels than o_proj has inputs, and the pair is skipped for that model (as llm-awq does; the
scales could be repeated per KV head, which neither llm-awq nor lowbit does). A linear followed
by a nonlinearity (OPT's fc1 → ReLU → fc2) is no pair at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbit._registry import Registry
from lowbit.errors import ModelSourceError


@dataclass(frozen=True)
class SmoothingPair:
    """``prev`` (a norm, or a linear when ``prev_is_linear``) feeds ``linears`` directly."""

    prev: str
    linears: tuple[str, ...]
    prev_is_linear: bool = False


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
    # Operations that can absorb per-channel scales for AWQ / SmoothQuant (see the docstring).
    smoothing_pairs: tuple[SmoothingPair, ...] = ()
    # Linears whose outputs meet in a product (q·kᵀ), where AWQ's clip search is not run.
    no_clip: tuple[str, ...] = ()

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
        smoothing_pairs=(
            SmoothingPair(
                "input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
            ),
            SmoothingPair("self_attn.v_proj", ("self_attn.o_proj",), prev_is_linear=True),
            SmoothingPair("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
            SmoothingPair("mlp.up_proj", ("mlp.down_proj",), prev_is_linear=True),
        ),
        no_clip=("self_attn.q_proj", "self_attn.k_proj"),
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
        smoothing_pairs=(
            SmoothingPair(
                "self_attn_layer_norm",
                ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            ),
            SmoothingPair("self_attn.v_proj", ("self_attn.out_proj",), prev_is_linear=True),
            SmoothingPair("final_layer_norm", ("fc1",)),  # fc1 → ReLU → fc2: no pair
        ),
        no_clip=("self_attn.q_proj", "self_attn.k_proj"),
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
        # Only the norm pairs: v and up are row ranges of the fused qkv_proj / gate_up_proj,
        # which a whole-linear pair cannot name (their o_proj / down_proj get no scales).
        smoothing_pairs=(
            SmoothingPair("input_layernorm", ("self_attn.qkv_proj",)),
            SmoothingPair("post_attention_layernorm", ("mlp.gate_up_proj",)),
        ),
        no_clip=("self_attn.qkv_proj",),
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
