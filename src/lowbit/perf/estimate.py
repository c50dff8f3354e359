"""End-to-end estimates from config + plan + hardware + layout: time to first token, time per
output token, tokens per second, memory per GPU and what fits, with every operator's roofline
point kept for the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lowbit.errors import ConfigError
from lowbit.perf.hardware import Hardware
from lowbit.perf.operators import (
    Op,
    Precision,
    Step,
    block_ops,
    embedding_op,
    head_ops,
    local_size,
)
from lowbit.perf.roofline import Timed, time_op
from lowbit.perf.runtime import RUNTIMES
from lowbit.perf.shape import ModelShape

PAGE = 16  # tokens per KV-cache page (vLLM's default block size)


@dataclass(frozen=True)
class Layout:
    """Batch and lengths, parallel degrees, KV-cache paging and the memory share usable."""

    batch: int = 1
    prompt: int = 512
    gen: int = 128
    tp: int = 1
    pp: int = 1
    dp: int = 1
    ep: int = 1
    paged: bool = True
    memory_utilization: float = 0.9
    runtime: str = "fused"

    def __post_init__(self) -> None:
        RUNTIMES.get(self.runtime)  # a clear error for an unknown runtime
        for name in ("batch", "prompt", "gen", "tp", "pp", "dp", "ep"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not 0 < self.memory_utilization <= 1:
            raise ConfigError("memory utilization must be in (0, 1]")

    def check(self, shape: ModelShape) -> None:
        if shape.heads % self.tp:
            raise ConfigError(
                f"tensor parallel {self.tp} does not divide the {shape.heads} attention heads; "
                f"use one of {[d for d in range(1, shape.heads + 1) if shape.heads % d == 0]}"
            )
        kv = shape.kv_heads
        if (kv % self.tp) and (self.tp % kv):
            raise ConfigError(
                f"tensor parallel {self.tp} neither divides nor is a multiple of the {kv} KV heads"
            )
        if self.pp > shape.layers:
            raise ConfigError(f"pipeline parallel {self.pp} exceeds the {shape.layers} layers")
        if self.ep > 1 and (not shape.is_moe or shape.experts % self.ep):
            raise ConfigError(
                f"expert parallel {self.ep} needs a mixture-of-experts model whose expert count "
                f"it divides (this model has {shape.experts} experts)"
            )
        if self.ep > 1 and (self.tp * self.dp) % self.ep:
            raise ConfigError(
                f"expert parallel {self.ep} spans the tensor × data parallel GPUs "
                f"({self.tp} × {self.dp}); choose a degree that divides {self.tp * self.dp}"
            )


@dataclass
class StageCost:
    """One pass (prefill, or one decode step) over the whole model, per GPU of one replica."""

    ops: list[Timed]
    seconds: float

    def by_name(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for t in self.ops:
            out[t.op.name] = out.get(t.op.name, 0.0) + t.seconds
        return out


@dataclass
class Estimate:
    ttft_s: float
    tpot_s: float
    total_s: float
    tokens_per_s: float
    pipelined_tokens_per_s: float
    memory: dict[str, float]
    fits: bool
    max_batch: int
    max_context: int
    prefill: StageCost
    decode_first: StageCost
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ttft_s": self.ttft_s,
            "tpot_s": self.tpot_s,
            "total_s": self.total_s,
            "tokens_per_s": self.tokens_per_s,
            "pipelined_tokens_per_s": self.pipelined_tokens_per_s,
            "memory_bytes": self.memory,
            "fits": self.fits,
            "max_batch": self.max_batch,
            "max_context": self.max_context,
            "prefill_ops": _per_op(self.prefill),
            "decode_ops": _per_op(self.decode_first),
            **self.extra,
        }


def _per_op(stage: StageCost) -> list[dict[str, Any]]:
    """One block's operators (they repeat per block) plus the embedding and head."""
    seen: dict[str, dict[str, Any]] = {}
    for t in stage.ops:
        entry = seen.setdefault(t.op.name, {**t.to_dict(), "seconds": 0.0, "count": 0})
        entry["seconds"] += t.seconds
        entry["count"] += 1
    return list(seen.values())


def stage_cost(
    shape: ModelShape, prec: Precision, hw: Hardware, step: Step, layout: Layout
) -> StageCost:
    """All operators of one step on the GPUs of one pipeline replica, in sequence (pipeline
    stages run one after another for a single batch; the activations hop between them)."""
    ops: list[Op] = [embedding_op(shape, prec, step)]
    for block in range(shape.layers):
        ops += block_ops(block, shape, prec, step, layout.tp, layout.ep)
    ops += head_ops(shape, prec, step, layout.tp)
    ops += _pipeline_hops(shape, prec, step, layout.pp) + _expert_all_to_all(
        shape, prec, step, layout
    )
    runtime = RUNTIMES.get(layout.runtime)
    timed = [time_op(op, hw, runtime) for op in ops]
    return StageCost(timed, sum(t.seconds for t in timed))


def _pipeline_hops(shape: ModelShape, prec: Precision, step: Step, pp: int) -> list[Op]:
    volume = step.batch * step.tokens * shape.hidden * prec.act_bits / 8
    return [Op("pipeline_send", "comm", 0.0, 0.0, volume, 0.0, "fp16")] * (pp - 1)


def _expert_all_to_all(shape: ModelShape, prec: Precision, step: Step, layout: Layout) -> list[Op]:
    """Dispatch and combine of each routed token's hidden state to the GPUs of its experts."""
    if layout.ep == 1:
        return []
    rows = step.batch * step.tokens
    volume = (
        2.0 * rows * shape.top_k * shape.hidden * prec.act_bits / 8 * (layout.ep - 1) / layout.ep
    )
    return [Op("all_to_all", "comm", 0.0, 0.0, volume, 0.0, "fp16")] * len(shape.sparse_blocks)


def estimate(shape: ModelShape, prec: Precision, hw: Hardware, layout: Layout) -> Estimate:
    """Prefill of ``prompt`` tokens (producing the first token), then ``gen - 1`` decode
    steps, for ``batch`` sequences on one replica of ``tp × pp`` GPUs (× ``dp`` replicas)."""
    layout.check(shape)
    b, p, g = layout.batch, layout.prompt, layout.gen
    prefill = stage_cost(shape, prec, hw, Step(b, p, p), layout)
    first = stage_cost(shape, prec, hw, Step(b, 1, p + 1), layout)
    decode_s = _decode_total(shape, prec, hw, layout, first)
    total = prefill.seconds + decode_s
    memory = memory_per_gpu(shape, prec, layout)
    usable = hw.memory_bytes * layout.memory_utilization
    per_seq = memory["kv_cache"] / b + memory["activations"] / b
    free = usable - memory["weights"]
    tokens = b * g * layout.dp
    return Estimate(
        ttft_s=prefill.seconds,
        tpot_s=decode_s / (g - 1) if g > 1 else 0.0,
        total_s=total,
        tokens_per_s=tokens / total,
        pipelined_tokens_per_s=tokens * layout.pp / total,
        memory=memory,
        fits=memory["total"] <= usable,
        max_batch=max(int(free // per_seq), 0) if free > 0 else 0,
        max_context=_max_context(shape, prec, layout, free),
        prefill=prefill,
        decode_first=first,
        extra={"usable_memory_bytes": usable, "gpus": layout.tp * layout.pp * layout.dp},
    )


def _decode_total(
    shape: ModelShape, prec: Precision, hw: Hardware, layout: Layout, first: StageCost
) -> float:
    """Σ over decode steps: everything but attention costs what the first step costs; attention
    grows with the context and is timed at every step."""
    from lowbit.perf.operators import attention_op

    steps = layout.gen - 1
    if steps <= 0:
        return 0.0
    attn_first = sum(t.seconds for t in first.ops if t.op.kind == "attention")
    static = first.seconds - attn_first
    attention = sum(
        time_op(
            attention_op(shape, prec, Step(layout.batch, 1, layout.prompt + i + 1), layout.tp),
            hw,
            RUNTIMES.get(layout.runtime),
        ).seconds
        for i in range(steps)
    )
    return steps * static + attention * shape.layers


def kv_bytes_per_token(shape: ModelShape, prec: Precision, layout: Layout) -> float:
    """KV-cache bytes per token on the busiest GPU: its pipeline stage's layers × (keys and
    values of its KV heads, or MLA's latent) × the cache's bytes per element."""
    layers = -(-shape.layers // layout.pp)
    return float(layers * shape.kv_elements_per_token(layout.tp)) * prec.kv_bits / 8


def _allocated(tokens: int, paged: bool) -> int:
    return -(-tokens // PAGE) * PAGE if paged else tokens


def memory_per_gpu(shape: ModelShape, prec: Precision, layout: Layout) -> dict[str, float]:
    """Bytes on the busiest GPU: its share of the weights (pipeline stages even, the embedding
    and head split over tensor parallel), the KV cache of the whole batch at prompt + gen
    tokens (rounded up to whole pages when paged), and the prefill activations (hidden states,
    the MLP's intermediate and the last position's fp32 logits)."""
    tp, pp = layout.tp, layout.pp
    stage_blocks = -(-shape.layers // pp)  # the first stages take the remainder
    dense = prec.dense_bits / 8
    per_block = [
        _block_weight_bytes(shape, prec, layout, block)
        + shape.block_dense_parameters(block) * dense
        for block in range(shape.layers)
    ]
    table = shape.vocab * shape.hidden * dense / tp
    ends = table if shape.tied or pp == 1 else 0.0  # pp: embedding on the first stage,
    ends += table if not shape.tied else 0.0  # the head on the last; tied: one table
    weights = max(per_block) * stage_blocks + ends + shape.hidden * dense
    if pp == 1:
        weights = sum(per_block) + ends + shape.hidden * dense
    tokens = _allocated(layout.prompt + layout.gen, layout.paged)
    kv = layout.batch * tokens * kv_bytes_per_token(shape, prec, layout)
    inter = shape.max_active_intermediate() / tp
    rows = layout.batch * layout.prompt
    acts = rows * (4 * shape.hidden + 2 * inter) * prec.act_bits / 8
    acts += layout.batch * shape.vocab / tp * 4
    return {"weights": weights, "kv_cache": kv, "activations": acts, "total": weights + kv + acts}


def _block_weight_bytes(shape: ModelShape, prec: Precision, layout: Layout, block: int) -> float:
    """One GPU's share of block ``block``'s linear layers at their planned bits (every expert
    stored; split over expert-parallel GPUs), biases at the dense bits."""
    prefix = f"{shape.blocks_path}.{block}"
    total = 0.0
    for lin in shape.linears(block):
        in_l, out_l = local_size(lin, shape, layout.tp, layout.ep)
        bits = sum(prec.linear_bits(f"{prefix}.{n}") for n in lin.names())
        share = layout.ep if lin.experts > 1 and layout.ep > 1 else 1
        bias = lin.experts * out_l * prec.dense_bits if lin.bias else 0.0
        total += (in_l * out_l * bits + bias) / 8 / share
    return total


def _max_context(shape: ModelShape, prec: Precision, layout: Layout, free: float) -> int:
    """The longest prompt + generation (``gen`` fixed) each of ``batch`` sequences can have:
    the KV cache grows with it, and so do the prefill activations (with the prompt)."""
    b, tp = layout.batch, layout.tp
    kv = b * kv_bytes_per_token(shape, prec, layout)
    act = b * (4 * shape.hidden + 2 * shape.max_active_intermediate() / tp)
    act *= prec.act_bits / 8
    logits = b * shape.vocab / tp * 4
    tokens = int((free - logits + act * layout.gen) // (kv + act)) if free > logits else 0
    if tokens <= layout.gen:
        return 0
    return tokens // PAGE * PAGE if layout.paged else tokens
