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
  and the weights of the distinct experts a step's tokens reach (uniform routing); expert
  parallel e puts whole experts on e GPUs, each handling 1/e of the routed tokens;
- matmul operands: the plan's compute dtype (int8 for W8A8) applies to linear layers whose
  weights have at most 8 bits; attention, the head and elementwise operators run in the
  activations' float type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lowbit.perf.shape import Linear, ModelShape

FLASH_TILE = 128
COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")


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
    short = lin.name.rsplit(".", 1)[1]
    col = short in COLUMN_PARALLEL
    split = 1 if lin.experts > 1 and ep > 1 else tp  # expert parallel: whole experts per GPU
    in_l = lin.in_features if col else lin.in_features // split
    out_l = lin.out_features // split if col else lin.out_features
    if short in ("k_proj", "v_proj") and shape.kv_heads < tp:  # replicated KV heads
        out_l = shape.head_dim
    rows = step.batch * step.tokens
    bits = prec.linear_bits(f"{shape.blocks_path}.{block}.{lin.name}")
    loaded = _experts_loaded(lin, rows)
    share = ep if lin.experts > 1 else 1
    a = prec.act_bits / 8
    return Op(
        short,
        "linear",
        2.0 * rows * in_l * out_l * lin.active / share,
        in_l * out_l * loaded * bits / 8 / share,
        rows * (in_l + out_l) * lin.active * a / share,
        0.0,
        prec.linear_compute(bits),
    )


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
    flops = b * heads * pairs * (4.0 * d + 5.0)
    return Op(
        "attention",
        "attention",
        flops,
        0.0,
        2.0 * b * t * heads * d * a,
        2.0 * b * kv_heads * d * keys_read * kv,
        prec.dense_compute,
    )


def block_ops(
    block: int, shape: ModelShape, prec: Precision, step: Step, tp: int, ep: int = 1
) -> list[Op]:
    """Every operator of decoder block ``block`` for one step, in execution order."""
    h, rows = shape.hidden, step.batch * step.tokens
    heads, kv_heads = _local(shape.heads, tp), _local(shape.kv_heads, tp)
    a, kv, dense = prec.act_bits / 8, prec.kv_bits / 8, prec.dense_bits / 8
    inter = (
        (shape.intermediate * (shape.top_k or 1) / ep)
        if ep > 1
        else (_local(shape.intermediate, tp) * (shape.top_k or 1))
    )
    rot = rows * (heads + kv_heads) * shape.head_dim
    lin = {x.name.rsplit(".", 1)[1]: x for x in shape.linears()}

    def ew(name: str, flops: float, elems_rw: float, weights: float = 0.0) -> Op:
        return Op(name, "elementwise", flops, weights, elems_rw * a, 0.0, prec.dense_compute)

    ops = [ew("input_norm", 4.0 * rows * h, 2.0 * rows * h, h * dense)]
    ops += [linear_op(lin[n], block, shape, prec, step, tp) for n in ("q_proj", "k_proj", "v_proj")]
    if shape.qk_norm:  # Qwen3: RMSNorm over each head of q and k
        ops.append(ew("qk_norm", 4.0 * rot, 2.0 * rot, 2 * shape.head_dim * dense))
    ops.append(ew("rotary", 3.0 * rot, 2.0 * rot))
    ops.append(
        Op(
            "kv_write",
            "elementwise",
            0.0,
            0.0,
            0.0,
            2.0 * rows * kv_heads * shape.head_dim * kv,
            prec.dense_compute,
        )
    )
    ops.append(attention_op(shape, prec, step, tp))
    ops.append(linear_op(lin["o_proj"], block, shape, prec, step, tp))
    ops += _all_reduce(rows, h, a, tp)
    ops.append(ew("residual_add", rows * h, 3.0 * rows * h))
    ops.append(ew("post_norm", 4.0 * rows * h, 2.0 * rows * h, h * dense))
    if shape.is_moe:
        ops.append(
            Op(
                "router",
                "linear",
                2.0 * rows * h * shape.experts,
                h * shape.experts * dense,
                rows * (h + shape.experts) * a,
                0.0,
                prec.dense_compute,
            )
        )
    ops += [linear_op(lin[n], block, shape, prec, step, tp, ep) for n in ("gate_proj", "up_proj")]
    ops.append(ew("silu_mul", 5.0 * rows * inter, 3.0 * rows * inter))
    ops.append(linear_op(lin["down_proj"], block, shape, prec, step, tp, ep))
    ops += _all_reduce(rows, h, a, tp)
    ops.append(ew("residual_add", rows * h, 3.0 * rows * h))
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
