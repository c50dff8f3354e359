"""The shape of a decoder-only transformer, read from its Hugging Face config alone (no
weights): what the performance model needs to count FLOPs and bytes.

Linear layers carry the module names lowbit quantizes and a plan names (relative to their
block): ``self_attn.q_proj``, ``mlp.down_proj``, ``mlp.shared_experts.up_proj``; a block's routed
experts are one :class:`Linear` per projection whose name holds ``{e}``
(``mlp.experts.{e}.gate_proj``) and expands to every expert's module name. Blocks differ:
DeepSeek-V3's first ``first_k_dense_replace`` blocks and Qwen-MoE's ``mlp_only_layers`` have a
dense MLP, the others routed experts (and shared experts, which run for every token).
Multi-head latent attention (DeepSeek-V3) is described by :class:`Mla`. Reading a config is
:func:`lowbit.perf.shape_config.shape_from_config`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

# how a linear layer is split over tensor-parallel GPUs: by output columns, by input rows, by
# output columns with KV heads replicated when the GPUs outnumber them, or not at all
SPLITS = ("column", "row", "kv", "replicated")


@dataclass(frozen=True)
class Linear:
    """One linear layer of a block: its module name relative to the block (routed experts: a
    name with ``{e}``, one module per expert), input and output width, how many experts it
    stands for and how many of them run per token (the routed top-k), whether it has a bias,
    and how tensor parallel splits it."""

    name: str
    in_features: int
    out_features: int
    experts: int = 1
    active: int = 1
    bias: bool = False
    split: str = "column"

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split {self.split!r} is not one of {SPLITS}")

    def names(self) -> tuple[str, ...]:
        """The module names (relative to the block) this linear stands for."""
        if self.experts == 1:
            return (self.name,)
        return tuple(self.name.format(e=e) for e in range(self.experts))

    @property
    def label(self) -> str:
        """The operator's name: ``q_proj``, ``experts.gate_proj``, ``shared_experts.down_proj``."""
        return ".".join(p for p in self.name.split(".") if p not in ("self_attn", "mlp", "{e}"))

    @property
    def short(self) -> str:
        return self.name.rsplit(".", 1)[1]

    def parameters(self) -> int:
        """Weights and biases of every expert it stands for."""
        return (self.in_features + int(self.bias)) * self.out_features * self.experts


@dataclass(frozen=True)
class Mla:
    """Multi-head latent attention (DeepSeek-V2/V3): queries through a low-rank ``q_lora_rank``
    (0: one ``q_proj``), keys and values through a latent of ``kv_lora_rank`` plus a shared
    rotary key of ``qk_rope`` per token; per head, query/key ``qk_nope + qk_rope`` and value
    ``v_head_dim`` wide."""

    q_lora_rank: int
    kv_lora_rank: int
    qk_nope: int
    qk_rope: int
    v_head_dim: int

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope + self.qk_rope

    @property
    def latent(self) -> int:
        """Elements cached per token per layer: the latent and the shared rotary key."""
        return self.kv_lora_rank + self.qk_rope


@dataclass(frozen=True)
class Moe:
    """The sparse MLP: ``experts`` routed experts of width ``intermediate``, ``top_k`` per token,
    a router (``router`` module, with a bias for GPT-OSS) and optional shared experts of total
    width ``shared_intermediate`` (module ``shared``; Qwen2-MoE adds a one-output sigmoid gate,
    ``shared_gate``)."""

    experts: int
    top_k: int
    intermediate: int
    shared_intermediate: int = 0
    shared: str = "shared_experts"
    shared_gate: bool = False
    router: str = "gate"
    bias: bool = False


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int  # MLA: 1 (one latent shared by every head)
    head_dim: int  # MLA: the query/key head width (qk_nope + qk_rope)
    intermediate: int  # the dense MLP's width (dense blocks)
    vocab: int
    tied: bool
    qk_norm: str = ""  # "head": RMSNorm over each head of q and k; "full": over all of q and k
    blocks_path: str = "model.layers"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    fused: bool = False  # Phi-3: qkv_proj and gate_up_proj
    hidden_norms: int = 2  # RMSNorms over the hidden state per block (Gemma: 4)
    sinks: bool = False  # GPT-OSS: one attention-sink logit per head
    mla: Mla | None = None
    moe: Moe | None = None
    sparse_blocks: tuple[int, ...] = ()  # blocks whose MLP is ``moe``

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    @property
    def experts(self) -> int:
        return self.moe.experts if self.moe else 0

    @property
    def top_k(self) -> int:
        return self.moe.top_k if self.moe else 0

    def is_sparse(self, block: int) -> bool:
        return self.moe is not None and block in self.sparse_blocks

    def linears(self, block: int = 0) -> tuple[Linear, ...]:
        """Every linear layer of block ``block``, attention then MLP, in execution order."""
        return self.attention_linears() + self.mlp_linears(block)

    def attention_linears(self) -> tuple[Linear, ...]:
        h, b = self.hidden, self.qkv_bias
        if self.mla is not None:
            return _mla_linears(h, self.heads, self.mla, self.o_bias)
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        if self.fused:
            qkv = (Linear("self_attn.qkv_proj", h, q + 2 * kv, bias=b),)
        else:
            qkv = (
                Linear("self_attn.q_proj", h, q, bias=b),
                Linear("self_attn.k_proj", h, kv, bias=b, split="kv"),
                Linear("self_attn.v_proj", h, kv, bias=b, split="kv"),
            )
        return qkv + (Linear("self_attn.o_proj", q, h, bias=self.o_bias, split="row"),)

    def mlp_linears(self, block: int = 0) -> tuple[Linear, ...]:
        h = self.hidden
        if not self.is_sparse(block):
            return _gated("mlp", h, self.intermediate, self.mlp_bias, fused=self.fused)
        moe = self.moe
        assert moe is not None
        shared = ()
        if moe.shared_intermediate:
            shared = _gated(f"mlp.{moe.shared}", h, moe.shared_intermediate, False)
        routed = _gated(
            "mlp.experts.{e}", h, moe.intermediate, moe.bias, experts=moe.experts, active=moe.top_k
        )
        return shared + routed

    def named_linears(self) -> Iterator[tuple[str, Linear]]:
        """(full module name, its linear) for every quantizable module, experts expanded."""
        for b in range(self.layers):
            prefix = f"{self.blocks_path}.{b}"
            for lin in self.linears(b):
                for name in lin.names():
                    yield f"{prefix}.{name}", lin

    def linear_names(self) -> list[str]:
        """Full module names, exactly as lowbit quantizes and a plan names them."""
        return [name for name, _ in self.named_linears()]

    def block_dense_parameters(self, block: int) -> int:
        """A block's parameters outside its linear layers: norms, the router (and Qwen2-MoE's
        shared-expert gate), GPT-OSS's attention sinks."""
        n = self.hidden_norms * self.hidden
        if self.qk_norm == "head":
            n += 2 * self.head_dim
        elif self.qk_norm == "full":
            n += (self.heads + self.kv_heads) * self.head_dim
        if self.mla is not None:
            n += self.mla.q_lora_rank + self.mla.kv_lora_rank  # q_a and kv_a layernorms
        if self.sinks:
            n += self.heads
        if self.is_sparse(block):
            moe = self.moe
            assert moe is not None
            n += moe.experts * (self.hidden + int(moe.bias))
            n += self.hidden if moe.shared_gate else 0
        return n

    def router_width(self, block: int) -> int:
        """Outputs of the block's router linear(s), 0 in a dense block."""
        if not self.is_sparse(block):
            return 0
        assert self.moe is not None
        return self.moe.experts + int(self.moe.shared_gate)

    def active_intermediate(self, block: int) -> int:
        """Gated-MLP elements per token in block ``block``: every MLP that runs for a token
        (the routed top-k experts and the shared experts, or the dense MLP)."""
        return sum(lin.in_features * lin.active for lin in self.mlp_linears(block) if _is_down(lin))

    def max_active_intermediate(self) -> int:
        return max(self.active_intermediate(b) for b in range(self.layers))

    def parameters(self) -> int:
        """Every parameter: linears (weights and biases, all experts), norms, routers, sinks,
        the embedding and (untied) head, the final norm."""
        blocks = sum(
            sum(lin.parameters() for lin in self.linears(b)) + self.block_dense_parameters(b)
            for b in range(self.layers)
        )
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        return blocks + embed + self.hidden

    def kv_elements_per_token(self, tp: int = 1) -> int:
        """KV-cache elements per token per layer on one of ``tp`` GPUs: keys and values of the
        local KV heads, or MLA's latent (replicated on every GPU)."""
        if self.mla is not None:
            return self.mla.latent
        return 2 * max(self.kv_heads // tp, 1) * self.head_dim


def _is_down(lin: Linear) -> bool:
    return lin.short == "down_proj"


def _gated(
    prefix: str,
    h: int,
    inter: int,
    bias: bool,
    *,
    experts: int = 1,
    active: int = 1,
    fused: bool = False,
) -> tuple[Linear, ...]:
    kw = {"experts": experts, "active": active, "bias": bias}
    down = Linear(f"{prefix}.down_proj", inter, h, split="row", **kw)
    if fused:
        return (Linear(f"{prefix}.gate_up_proj", h, 2 * inter, **kw), down)
    return (
        Linear(f"{prefix}.gate_proj", h, inter, **kw),
        Linear(f"{prefix}.up_proj", h, inter, **kw),
        down,
    )


def _mla_linears(h: int, heads: int, mla: Mla, bias: bool) -> tuple[Linear, ...]:
    """The latent projections are replicated under tensor parallel (as vLLM runs them);
    the per-head up-projections split by heads."""
    q_out = heads * mla.qk_head_dim
    if mla.q_lora_rank:
        q = (
            Linear("self_attn.q_a_proj", h, mla.q_lora_rank, bias=bias, split="replicated"),
            Linear("self_attn.q_b_proj", mla.q_lora_rank, q_out),
        )
    else:
        q = (Linear("self_attn.q_proj", h, q_out),)
    return q + (
        Linear("self_attn.kv_a_proj_with_mqa", h, mla.latent, bias=bias, split="replicated"),
        Linear("self_attn.kv_b_proj", mla.kv_lora_rank, heads * (mla.qk_nope + mla.v_head_dim)),
        Linear("self_attn.o_proj", heads * mla.v_head_dim, h, bias=bias, split="row"),
    )


def shape_from_config(config: object) -> ModelShape:
    """Read a config object or dict (``config.json``); see :mod:`lowbit.perf.shape_config`."""
    from lowbit.perf.shape_config import read_shape

    return read_shape(config)
