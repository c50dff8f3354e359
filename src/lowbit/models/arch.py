"""Architecture knowledge as data: what each decoder block holds, per block.

An :class:`ArchSpec` names where the decoder blocks live and describes every block with a
:class:`BlockSpec` (mixed stacks, e.g. DeepSeek-V3's dense first blocks then MoE blocks, have
different ones). For most models the specs are *discovered* by tracing one block of each kind
(:mod:`lowbit.models.discover`); the hand-written family specs below are overrides, checked
against discovery in the tests.

A block spec names its linear layers in the order the block calls them, grouped by shared
input (``sequential_groups``): members of a group read the same activations, so they share one
Hessian and are quantized together before the block goes on. Supporting a new family needs no
code: discovery describes it, or a hand-written spec overrides it.

``smoothing_pairs`` name, per block, an operation whose output feeds some linears and can absorb
a per-channel scale (a norm's weight, or a preceding linear's rows): AWQ and SmoothQuant divide
it by s and multiply the linears' input columns by s, which leaves the block's function
unchanged. A linear → linear pair is valid only when the preceding linear's output channels are
exactly the next linear's input channels: with grouped-query attention v_proj has fewer output
channels than o_proj has inputs, and the pair is skipped for that model (as llm-awq does; the
scales could be repeated per KV head, which neither llm-awq nor lowbit does). A linear followed
by a nonlinearity is a pair only if the nonlinearity commutes with positive scales: OPT's
fc1 → ReLU → fc2 is (ReLU(x / s) = ReLU(x) / s), gate_proj → SiLU is not. A norm whose scale is
``offset + w`` (Gemma's RMSNorm computes ``x̂ · (1 + w)``) absorbs s as
``w ← (offset + w) / s − offset``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from lowbit._registry import Registry
from lowbit.errors import ConfigError, ModelSourceError


@dataclass(frozen=True)
class SmoothingPair:
    """``prev`` (a norm, or a linear when ``prev_is_linear``) feeds ``linears`` directly; a
    norm scales by ``norm_offset + weight``."""

    prev: str
    linears: tuple[str, ...]
    prev_is_linear: bool = False
    norm_offset: float = 0.0


@dataclass(frozen=True)
class BlockSpec:
    """One decoder block: its linears grouped by shared input in call order, and what the
    stages need to know about them (names relative to the block)."""

    sequential_groups: tuple[tuple[str, ...], ...]
    # Linears that serving engines fuse into one matmul (q/k/v, gate/up): one spec for all.
    fused_groups: tuple[tuple[str, ...], ...] = ()
    # The value and down projections, which llama.cpp's mixes give more bits.
    value_and_down: tuple[str, ...] = ()
    # Operations that can absorb per-channel scales for AWQ / SmoothQuant (see the docstring).
    smoothing_pairs: tuple[SmoothingPair, ...] = ()
    # Linears whose outputs meet in a product (q·kᵀ), where AWQ's clip search is not run.
    no_clip: tuple[str, ...] = ()
    # Experts modules (models/experts.py) and routers: routers are never quantized.
    experts: tuple[str, ...] = ()
    routers: tuple[str, ...] = ()
    # What else the block does that matters to some stage (q/k norms, sliding window, …).
    traits: tuple[str, ...] = ()

    @property
    def linear_names(self) -> tuple[str, ...]:
        return tuple(name for group in self.sequential_groups for name in group)

    def structure(self) -> BlockSpec:
        """The parts discovery decides (traits and routers aside), for comparisons."""
        return BlockSpec(
            self.sequential_groups,
            self.fused_groups,
            self.value_and_down,
            self.smoothing_pairs,
            self.no_clip,
            self.experts,
        )


@dataclass(frozen=True)
class ArchSpec:
    """A model's architecture: ``blocks[i]`` describes block i (``origin``: "hand-written"
    or "discovered")."""

    name: str
    model_types: tuple[str, ...]
    blocks_path: str
    embed_path: str
    blocks: tuple[BlockSpec, ...] = ()
    origin: str = "hand-written"
    traits: tuple[str, ...] = ()
    # Why the blocks could not be described (quantization is then refused; evaluation works).
    unsupported: str = ""

    def block(self, i: int) -> BlockSpec:
        return self.blocks[i]

    @property
    def uniform(self) -> BlockSpec:
        """The one block spec of a model whose blocks are all alike (else an error: use
        :meth:`block`)."""
        kinds = set(self.blocks)
        if len(kinds) != 1:
            raise ModelSourceError(
                f"the blocks of this {self.name!r} model are of {len(kinds)} kinds; "
                "look each block up with ArchSpec.block(i)"
            )
        return self.blocks[0]

    # the uniform block's fields, for models whose blocks are all alike
    linear_names = property(lambda self: self.uniform.linear_names)
    sequential_groups = property(lambda self: self.uniform.sequential_groups)
    smoothing_pairs = property(lambda self: self.uniform.smoothing_pairs)
    fused_groups = property(lambda self: self.uniform.fused_groups)

    @property
    def block_kinds(self) -> dict[BlockSpec, list[int]]:
        """Each distinct block spec and the blocks that have it."""
        kinds: dict[BlockSpec, list[int]] = {}
        for i, spec in enumerate(self.blocks):
            kinds.setdefault(spec, []).append(i)
        return kinds

    def layer_names(self) -> list[str]:
        """Every block linear's full name, block by block."""
        return [
            f"{self.blocks_path}.{i}.{m}"
            for i, spec in enumerate(self.blocks)
            for m in spec.linear_names
        ]

    def routers(self) -> list[str]:
        return [f"{self.blocks_path}.{i}.{r}" for i, b in enumerate(self.blocks) for r in b.routers]

    def with_blocks(self, n: int) -> ArchSpec:
        """A family template (one block spec) repeated for ``n`` blocks."""
        return replace(self, blocks=self.blocks[:1] * n)


ARCHITECTURES: Registry[ArchSpec] = Registry("architecture")

_LLAMA_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")

LLAMA = ARCHITECTURES.register(
    "llama",
    ArchSpec(
        name="llama",
        # Mistral, Qwen2 and Qwen3 use the same block layout (Qwen3 adds q/k norms, not linears).
        model_types=("llama", "mistral", "qwen2", "qwen3"),
        blocks_path="model.layers",
        embed_path="model.embed_tokens",
        blocks=(
            BlockSpec(
                sequential_groups=(
                    _LLAMA_ATTN,
                    ("self_attn.o_proj",),
                    ("mlp.gate_proj", "mlp.up_proj"),
                    ("mlp.down_proj",),
                ),
                fused_groups=(_LLAMA_ATTN, ("mlp.gate_proj", "mlp.up_proj")),
                value_and_down=("self_attn.v_proj", "mlp.down_proj"),
                smoothing_pairs=(
                    SmoothingPair("input_layernorm", _LLAMA_ATTN),
                    SmoothingPair("self_attn.v_proj", ("self_attn.o_proj",), prev_is_linear=True),
                    SmoothingPair("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
                    SmoothingPair("mlp.up_proj", ("mlp.down_proj",), prev_is_linear=True),
                ),
                no_clip=("self_attn.q_proj", "self_attn.k_proj"),
            ),
        ),
    ),
)

OPT = ARCHITECTURES.register(
    "opt",
    ArchSpec(
        name="opt",
        model_types=("opt",),
        blocks_path="model.decoder.layers",
        embed_path="model.decoder.embed_tokens",
        blocks=(
            BlockSpec(
                sequential_groups=(_LLAMA_ATTN, ("self_attn.out_proj",), ("fc1",), ("fc2",)),
                fused_groups=(_LLAMA_ATTN,),
                value_and_down=("self_attn.v_proj", "fc2"),
                smoothing_pairs=(
                    SmoothingPair("self_attn_layer_norm", _LLAMA_ATTN),
                    SmoothingPair("self_attn.v_proj", ("self_attn.out_proj",), prev_is_linear=True),
                    SmoothingPair("final_layer_norm", ("fc1",)),
                    # ReLU(x / s) = ReLU(x) / s for s > 0: fc1 → fc2 is a pair (llm-awq's too)
                    SmoothingPair("fc1", ("fc2",), prev_is_linear=True),
                ),
                no_clip=("self_attn.q_proj", "self_attn.k_proj"),
            ),
        ),
    ),
)

PHI3 = ARCHITECTURES.register(
    "phi3",
    ArchSpec(
        name="phi3",
        model_types=("phi3",),
        blocks_path="model.layers",
        embed_path="model.embed_tokens",
        blocks=(
            BlockSpec(
                sequential_groups=(
                    ("self_attn.qkv_proj",),
                    ("self_attn.o_proj",),
                    ("mlp.gate_up_proj",),
                    ("mlp.down_proj",),
                ),
                value_and_down=("mlp.down_proj",),  # q/k/v are one stored matrix here
                # Only the norm pairs: v and up are row ranges of the fused qkv_proj /
                # gate_up_proj, which a whole-linear pair cannot name.
                smoothing_pairs=(
                    SmoothingPair("input_layernorm", ("self_attn.qkv_proj",)),
                    SmoothingPair("post_attention_layernorm", ("mlp.gate_up_proj",)),
                ),
                no_clip=("self_attn.qkv_proj",),
            ),
        ),
    ),
)


def family_spec(model_type: str) -> ArchSpec | None:
    """The hand-written spec whose family includes ``model_type``, if any."""
    for _, spec in ARCHITECTURES:
        if model_type in spec.model_types:
            return spec
    return None


def check_quantizable(arch: ArchSpec, where: str) -> None:
    """Refuse to quantize a model whose blocks could not be described."""
    if arch.unsupported or not arch.blocks:
        raise ModelSourceError(
            f"{where}: lowbit cannot quantize this {arch.name!r} model: "
            f"{arch.unsupported or 'its decoder blocks are not described'}. It can still be "
            "evaluated (lowbit eval); `lowbit inspect` shows what was found"
        )


def check_plan_routers(rules: tuple[Any, ...], arch: ArchSpec) -> None:
    """A plan rule naming a router (or an MoE gate) is refused: routers stay in full
    precision."""
    routers = set(arch.routers())
    for rule in rules:
        if rule.target in routers:
            raise ConfigError(
                f"plan rule {rule.target!r} names a router: routers decide which experts see "
                "each token and lowbit keeps them in full precision; remove the rule"
            )
