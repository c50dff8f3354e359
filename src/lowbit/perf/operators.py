"""FLOPs and bytes moved by every operator of a decoder step, per GPU (pure arithmetic).

One step processes ``tokens`` new tokens for each of ``batch`` sequences that attend to
``context`` keys each (the new ones included): prefill is tokens = context = P; a decode step
is tokens = 1, context = P + g. Conventions:
- a multiply-accumulate is 2 FLOPs; softmax 5 FLOPs per score, RMSNorm 4 per element, SiLU·mul
  5 per element, rotary 3 per element of q and k, residual add 1;
- every operator reads its inputs from and writes its outputs to memory once (no fusion across
  operators); weights are read once per step at their planned bits per weight, scales included;
- attention is FlashAttention-style: no score matrix in memory; causal; each tile of
  ``FLASH_TILE`` query rows reads the keys and values it attends to once;
- the output head is computed for the last position of each sequence only (as serving engines
  do); the embedding is a gather of the rows used;
- tensor parallel t: q/k/v/gate/up split by output columns, o/down by input rows, the head by
  vocabulary; heads are split, KV heads replicated when t exceeds them; two all-reduces of the
  hidden state per block (after o and down), as ``comm`` operators on the interconnect;
- mixture of experts: a router linear, the routed experts' arithmetic for each token's top-k,
  and the weights of the distinct experts a step's tokens reach (uniform routing: each of E
  experts is reached with probability 1 - (1 - k/E)^rows, so a step reads that many experts at
  the mean bits per weight of the block's experts); shared experts and dense blocks run for
  every token; expert parallel e puts whole experts on e GPUs, each handling 1/e of the
  routed tokens;
- multi-head latent attention (DeepSeek-V3) in its weight-absorbed form, as serving engines
  run it: the cache holds the latent (``kv_lora_rank + qk_rope_head_dim`` per token, one for
  all heads, replicated under tensor parallel); each head's scores span the latent and rotary
  widths and its values the latent; ``kv_b_proj`` counted as a linear over the new tokens has
  exactly the FLOPs of the absorption matmuls (queries into the latent, outputs out of it);
  the latent projections ``q_a_proj`` and ``kv_a_proj_with_mqa`` are replicated under tensor
  parallel;
- not modelled: sliding-window attention (Mistral, Gemma 2/3, GPT-OSS local layers attend to
  the whole context here, and cache it), Phi-3's fused ``qkv_proj`` replicating KV heads when
  the GPUs outnumber them, softcapping and attention sinks' arithmetic (their parameters are
  counted);
- matmul operands: the plan's compute dtype (int8 for W8A8) applies to linear layers whose
  weights have at most 8 bits; attention, the head and elementwise operators run in the
  activations' float type.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from lowbit.perf.shape import Linear, ModelShape

FLASH_TILE = 128


@dataclass(frozen=True)
class Precision:
    """Bits per stored element: each linear's weights (full module name → bits per weight,
    scales included; absent: ``dense_bits``), the dense tensors (embedding, head, norms), the
    activations and the KV cache; ``compute`` is the dtype of the matmul operands."""

    weight_bits: dict[str, float]
    dense_bits: float = 16.0
    act_bits: int = 16
    kv_bits: int = 16
    compute: str = "fp16"

    def linear_bits(self, name: str) -> float:
        return self.weight_bits.get(name, self.dense_bits)

    def group_bits(self, prefix: str, lin: Linear) -> float:
        """Mean bits per weight of the modules ``lin`` stands for (one, or every expert of a
        block) under block ``prefix``: a step reaching experts uniformly reads them at this
        rate on average."""
        names = lin.names()
        return sum(self.linear_bits(f"{prefix}.{n}") for n in names) / len(names)

    @property
    def dense_compute(self) -> str:
        """The dtype of everything but 8-bit linear layers: attention, the output head and
        elementwise operators run in the activations' float type even under W8A8."""
        return "fp16" if self.compute in ("int8", "fp8") else self.compute

    def linear_compute(self, bits: float) -> str:
        return self.compute if bits <= 9 or self.compute not in ("int8", "fp8") else "fp16"


@dataclass(frozen=True)
class Op:
    name: str
    kind: str  # linear | attention | elementwise | embedding | head | comm
    flops: float
    weight_bytes: float
    act_bytes: float
    kv_bytes: float
    dtype: str

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.act_bytes + self.kv_bytes

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else math.inf


@dataclass(frozen=True)
class Step:
    batch: int
    tokens: int
    context: int


def _local(n: int, tp: int) -> int:
    return max(n // tp, 1)


def linear_op(
    lin: Linear, block: int, shape: ModelShape, prec: Precision, step: Step, tp: int, ep: int = 1
) -> Op:
    """A linear layer on one GPU; expert layers are split over ``ep`` GPUs (tokens evenly)."""
    in_l, out_l = local_size(lin, shape, tp, ep)
    rows = step.batch * step.tokens
    bits = prec.group_bits(f"{shape.blocks_path}.{block}", lin)
    loaded = _experts_loaded(lin, rows)
    share = ep if lin.experts > 1 else 1
    a = prec.act_bits / 8
    bias = out_l * prec.dense_bits / 8 if lin.bias else 0.0
    return Op(
        lin.label,
        "linear",
        2.0 * rows * in_l * out_l * lin.active / share,
        (in_l * out_l * bits / 8 + bias) * loaded / share,
        rows * (in_l + out_l) * lin.active * a / share,
        0.0,
        prec.linear_compute(bits),
    )


def local_size(lin: Linear, shape: ModelShape, tp: int, ep: int = 1) -> tuple[int, int]:
    """(in, out) features of ``lin`` on one GPU: experts whole under expert parallel, latent
    projections replicated, KV heads replicated when the GPUs outnumber them."""
    split = 1 if (lin.experts > 1 and ep > 1) or lin.split == "replicated" else tp
    if lin.split == "row":
        return lin.in_features // split, lin.out_features
    if lin.split == "kv" and shape.kv_heads < tp:
        return lin.in_features, shape.head_dim
    return lin.in_features, lin.out_features // split


def _experts_loaded(lin: Linear, rows: int) -> float:
    """Expected number of distinct experts whose weights a step reads (uniform routing)."""
    if lin.experts == 1:
        return 1.0
    return lin.experts * (1.0 - (1.0 - lin.active / lin.experts) ** rows)


def attention_op(shape: ModelShape, prec: Precision, step: Step, tp: int) -> Op:
    heads, kv_heads = _local(shape.heads, tp), _local(shape.kv_heads, tp)
    d, b, t, ctx = shape.head_dim, step.batch, step.tokens, step.context
    past = ctx - t
    pairs = t * past + t * (t + 1) / 2  # causal
    keys_read = sum(past + min(t, (i + 1) * FLASH_TILE) for i in range(math.ceil(t / FLASH_TILE)))
    a, kv = prec.act_bits / 8, prec.kv_bits / 8
    if shape.mla is not None:  # absorbed: scores over latent + rope, values over the latent
        r, rope = shape.mla.kv_lora_rank, shape.mla.qk_rope
        per_pair, acts = 2.0 * (r + rope) + 2.0 * r + 5.0, b * t * heads * (2 * r + rope) * a
        cache = b * shape.mla.latent * keys_read * kv
    else:
        per_pair, acts = 4.0 * d + 5.0, 2.0 * b * t * heads * d * a
        cache = 2.0 * b * kv_heads * d * keys_read * kv
    return Op(
        "attention", "attention", b * heads * pairs * per_pair, 0.0, acts, cache, prec.dense_compute
    )


def block_ops(
    block: int, shape: ModelShape, prec: Precision, step: Step, tp: int, ep: int = 1
) -> list[Op]:
    """Every operator of decoder block ``block`` for one step, in execution order."""
    h, rows = shape.hidden, step.batch * step.tokens
    a, dense = prec.act_bits / 8, prec.dense_bits / 8

    def ew(name: str, flops: float, elems_rw: float, weights: float = 0.0) -> Op:
        return Op(name, "elementwise", flops, weights, elems_rw * a, 0.0, prec.dense_compute)

    def linear(lin: Linear) -> Op:
        return linear_op(lin, block, shape, prec, step, tp, ep)

    *qkv, o_proj = shape.attention_linears()
    ops = [ew("input_norm", 4.0 * rows * h, 2.0 * rows * h, h * dense)]
    ops += [linear(lin) for lin in qkv]
    ops += _attention_elementwise(shape, prec, rows, tp, ew)
    ops.append(attention_op(shape, prec, step, tp))
    ops.append(linear(o_proj))
    if shape.hidden_norms == 4:  # Gemma: a norm on the attention's output
        ops.append(ew("attn_out_norm", 4.0 * rows * h, 2.0 * rows * h, h * dense))
    ops += _all_reduce(rows, h, a, tp)
    ops.append(ew("residual_add", rows * h, 3.0 * rows * h))
    ops.append(ew("post_norm", 4.0 * rows * h, 2.0 * rows * h, h * dense))
    if width := shape.router_width(block):
        ops.append(
            Op(
                "router",
                "linear",
                2.0 * rows * h * width,
                h * width * dense,
                rows * (h + width) * a,
                0.0,
                prec.dense_compute,
            )
        )
    for lin in shape.mlp_linears(block):
        if lin.short == "down_proj":  # the gated activation of this MLP's intermediate
            inter = local_size(lin, shape, tp, ep)[0] * lin.active
            inter = inter / ep if lin.experts > 1 and ep > 1 else inter
            ops.append(ew(_sibling(lin, "silu_mul"), 5.0 * rows * inter, 3.0 * rows * inter))
        ops.append(linear(lin))
    if shape.hidden_norms == 4:  # Gemma: a norm on the MLP's output
        ops.append(ew("mlp_out_norm", 4.0 * rows * h, 2.0 * rows * h, h * dense))
    ops += _all_reduce(rows, h, a, tp)
    ops.append(ew("residual_add", rows * h, 3.0 * rows * h))
    return ops


def _sibling(lin: Linear, name: str) -> str:
    """``silu_mul`` for the dense MLP, ``experts.silu_mul`` for the experts' and so on."""
    label = lin.label.rsplit(".", 1)
    return name if len(label) == 1 else f"{label[0]}.{name}"


def _attention_elementwise(
    shape: ModelShape, prec: Precision, rows: int, tp: int, ew: Callable[..., Op]
) -> list[Op]:
    """q/k norms (or MLA's latent norms), rotary and the KV-cache write, between the q/k/v
    projections and the attention."""
    heads, kv_heads = _local(shape.heads, tp), _local(shape.kv_heads, tp)
    dense, kv = prec.dense_bits / 8, prec.kv_bits / 8
    ops: list[Op] = []
    if shape.mla is not None:
        m = shape.mla
        width = m.q_lora_rank + m.kv_lora_rank  # RMSNorms of the two latents
        ops.append(ew("latent_norm", 4.0 * rows * width, 2.0 * rows * width, width * dense))
        rot, written = rows * (heads + 1) * m.qk_rope, rows * m.latent
    else:
        rot, written = (
            rows * (heads + kv_heads) * shape.head_dim,
            2.0 * rows * kv_heads * shape.head_dim,
        )
        if shape.qk_norm:  # Qwen3, Gemma 3: RMSNorm over each head of q and k; OLMo 2: all of q, k
            width = (
                2 if shape.qk_norm == "head" else shape.heads + shape.kv_heads
            ) * shape.head_dim
            ops.append(ew("qk_norm", 4.0 * rot, 2.0 * rot, width * dense))
    ops.append(ew("rotary", 3.0 * rot, 2.0 * rot))
    ops.append(Op("kv_write", "elementwise", 0.0, 0.0, 0.0, written * kv, prec.dense_compute))
    return ops


def _all_reduce(rows: int, hidden: int, act_bytes: float, tp: int) -> list[Op]:
    """Ring all-reduce: each GPU sends and receives 2(t-1)/t of the tensor."""
    if tp == 1:
        return []
    volume = 2.0 * (tp - 1) / tp * rows * hidden * act_bytes
    return [Op("all_reduce", "comm", 0.0, 0.0, volume, 0.0, "fp16")]


def embedding_op(shape: ModelShape, prec: Precision, step: Step) -> Op:
    rows = step.batch * step.tokens
    dense = prec.dense_bits / 8
    return Op(
        "embedding",
        "embedding",
        0.0,
        rows * shape.hidden * dense,
        rows * shape.hidden * prec.act_bits / 8,
        0.0,
        prec.dense_compute,
    )


def head_ops(shape: ModelShape, prec: Precision, step: Step, tp: int) -> list[Op]:
    """Final norm and the output head, for the last position of each sequence."""
    h, b, v = shape.hidden, step.batch, _local(shape.vocab, tp)
    a, dense = prec.act_bits / 8, prec.dense_bits / 8
    norm = Op(
        "final_norm",
        "elementwise",
        4.0 * b * h,
        h * dense,
        2.0 * b * h * a,
        0.0,
        prec.dense_compute,
    )
    head = Op(
        "lm_head",
        "head",
        2.0 * b * h * v,
        h * v * dense,
        b * (h * a + v * 4),
        0.0,
        prec.dense_compute,
    )
    return [norm, head]
