"""The analytical model: FLOPs against a hand count and torch's FLOP counter, bytes against
bits, tensor parallel, the roofline's bound, memory fit boundaries, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.errors import ConfigError, UnknownNameError
from lowbit.perf.estimate import Layout, estimate, memory_per_gpu
from lowbit.perf.hardware import get_hardware, hardware_registry
from lowbit.perf.operators import Precision, Step, attention_op, block_ops, head_ops, linear_op
from lowbit.perf.precision import precision_for
from lowbit.perf.roofline import time_op
from lowbit.perf.shape import shape_from_config
from lowbit.plan import Plan, Rule, uniform_plan
from tests.export.shared import spec
from tests.helpers.tiny import config_for

SHAPE = shape_from_config(config_for("llama"))  # h 64, 4 heads, 2 KV heads, inter 96, 2 blocks
LLAMA3_8B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
}
DENSE = Precision({}, 16.0, 16, 16, "fp16")


def _ops(step: Step, tp: int = 1, prec: Precision = DENSE) -> dict[str, list]:
    out: dict[str, list] = {}
    for op in block_ops(0, SHAPE, prec, step, tp):
        out.setdefault(op.name, []).append(op)
    return out


def test_flops_match_a_hand_count():
    b, t = 3, 5
    ops = _ops(Step(b, t, t))
    rows = b * t
    assert ops["q_proj"][0].flops == 2 * rows * 64 * 64
    assert ops["k_proj"][0].flops == 2 * rows * 64 * 32
    assert ops["down_proj"][0].flops == 2 * rows * 96 * 64
    pairs = t * (t + 1) / 2  # causal
    assert ops["attention"][0].flops == b * 4 * pairs * (4 * 16 + 5)
    assert ops["silu_mul"][0].flops == 5 * rows * 96
    head = head_ops(SHAPE, DENSE, Step(b, t, t), 1)[1]
    assert head.flops == 2 * b * 64 * 320  # last position only


def test_matmul_flops_match_torch_flop_counter(tiny_llama):
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny_llama, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    b, t = 2, 12
    ids = torch.randint(0, 300, (b, t))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(ids, logits_to_keep=1)
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    attention = counts.pop("aten.bmm")  # eager attention: q·kᵀ and p·v
    step = Step(b, t, t)
    ours_linear = (
        SHAPE.layers
        * sum(op.flops for op in block_ops(0, SHAPE, DENSE, step, 1) if op.kind == "linear")
        + head_ops(SHAPE, DENSE, step, 1)[1].flops
    )
    assert sum(counts.values()) == ours_linear
    # torch counts every query-key pair; the model counts the causal half (plus softmax)
    ours_attn = attention_op(SHAPE, DENSE, step, 1).flops * SHAPE.layers
    matmul_part = ours_attn * 4 * 16 / (4 * 16 + 5)
    assert matmul_part == pytest.approx(attention * (t + 1) / (2 * t))


def test_weight_bytes_scale_with_planned_bits():
    prec4 = precision_for(SHAPE, uniform_plan(spec(4)))  # W4 g32: 4 + 16/32 bits per weight
    step = Step(1, 1, 8)
    for name in ("q_proj", "gate_proj", "down_proj"):
        w16 = _ops(step)[name][0].weight_bytes
        w4 = _ops(step, prec=prec4)[name][0].weight_bytes
        assert w4 / w16 == pytest.approx(4.5 / 16)


def test_tensor_parallel_two_halves_each_gpus_weights():
    step = Step(2, 1, 16)
    one, two = _ops(step, 1), _ops(step, 2)
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert two[name][0].weight_bytes == one[name][0].weight_bytes / 2
        assert two[name][0].flops == one[name][0].flops / 2
    assert "all_reduce" not in one and len(two["all_reduce"]) == 2
    m1 = memory_per_gpu(SHAPE, DENSE, Layout(tp=1))
    m2 = memory_per_gpu(SHAPE, DENSE, Layout(tp=2))
    assert m2["weights"] == pytest.approx(m1["weights"] / 2, rel=0.02)  # norms stay whole


def test_bound_switches_at_the_ridge_point():
    hw = get_hardware("a100-40gb")
    ridge = hw.ridge("fp16")
    big = shape_from_config(LLAMA3_8B)
    lin = big.linears()[0]
    bounds = []
    for rows in (1, 4, 16, 64, 256, 1024, 4096):
        op = linear_op(lin, 0, big, DENSE, Step(rows, 1, 1), 1)
        timed = time_op(op, hw)
        assert timed.bound == ("compute" if op.intensity > ridge else "memory")
        assert timed.seconds == max(op.flops / hw.peak("fp16"), op.bytes / hw.bandwidth)
        bounds.append(timed.bound)
    assert bounds[0] == "memory" and bounds[-1] == "compute"


def test_memory_fit_boundaries():
    hw = get_hardware("rtx-4090")
    big = shape_from_config(LLAMA3_8B)
    prec = precision_for(big, uniform_plan(spec(4)))
    base = Layout(batch=1, prompt=2048, gen=256)
    est = estimate(big, prec, hw, base)
    assert est.fits and est.max_batch > 1
    from dataclasses import replace

    assert estimate(big, prec, hw, replace(base, batch=est.max_batch)).fits
    assert not estimate(big, prec, hw, replace(base, batch=est.max_batch + 1)).fits
    ctx = est.max_context
    assert estimate(big, prec, hw, replace(base, prompt=ctx - 256, gen=256)).fits
    assert not estimate(big, prec, hw, replace(base, prompt=ctx - 256 + 16, gen=256)).fits
    assert estimate(big, precision_for(big, None), hw, base).fits  # 16 GB of fp16 weights
    assert not estimate(big, precision_for(big, None, dense_bits=32), hw, base).fits


def test_decode_time_sums_every_step():
    hw = get_hardware("h100-sxm")
    est = estimate(SHAPE, DENSE, hw, Layout(batch=1, prompt=8, gen=5))
    steps = [
        sum(time_op(op, hw).seconds for op in _all_ops(Step(1, 1, 8 + i + 1))) for i in range(4)
    ]
    assert est.tpot_s == pytest.approx(sum(steps) / 4)
    assert est.total_s == pytest.approx(est.ttft_s + sum(steps))


def _all_ops(step: Step):
    from lowbit.perf.operators import embedding_op

    ops = [embedding_op(SHAPE, DENSE, step)]
    for block in range(SHAPE.layers):
        ops += block_ops(block, SHAPE, DENSE, step, 1)
    return ops + head_ops(SHAPE, DENSE, step, 1)


def test_mixture_of_experts_reads_only_routed_experts():
    moe = shape_from_config(
        {
            "model_type": "mixtral",
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 96,
            "vocab_size": 320,
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
        }
    )
    gate = next(lin for lin in moe.linears() if lin.name.endswith("gate_proj"))
    one = linear_op(gate, 0, moe, DENSE, Step(1, 1, 4), 1)
    assert one.weight_bytes == pytest.approx(2 * 64 * 96 * 2)  # two experts of 64 × 96, fp16
    many = linear_op(gate, 0, moe, DENSE, Step(512, 1, 4), 1)
    assert many.weight_bytes == pytest.approx(8 * 64 * 96 * 2, rel=1e-6)
    split = linear_op(gate, 0, moe, DENSE, Step(512, 1, 4), 1, ep=2)
    assert split.weight_bytes == pytest.approx(many.weight_bytes / 2)


def test_hardware_data_is_complete_and_dense():
    for key, hw in hardware_registry():
        assert hw.sources and hw.bandwidth > 1e11 and hw.memory_bytes >= 24e9, key
        assert hw.peak("fp16") > hw.peak("fp32"), key
    h100 = get_hardware("h100-sxm")
    assert h100.peaks["fp16"] == pytest.approx(989.5e12)  # the dense half of 1979 (sparse)
    assert h100.peak("fp4") == h100.peaks["fp8"]  # no FP4 on Hopper: runs at FP8
    assert math.isclose(h100.ridge("fp16"), 989.5e12 / 3350e9)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: get_hardware("h100-sxn"), "did you mean 'h100-sxm'"),
        (lambda: Layout(tp=3).check(SHAPE), "does not divide the 4 attention heads"),
        (lambda: Layout(batch=0), "batch must be a positive integer"),
        (lambda: Layout(prompt=-5), "prompt must be a positive integer"),
        (lambda: Layout(pp=3).check(SHAPE), "exceeds the 2 layers"),
        (lambda: Layout(ep=2).check(SHAPE), "mixture-of-experts"),
        (
            lambda: precision_for(
                SHAPE, Plan(spec(4), (Rule("model.decoder.layers.0.fc1", None),))
            ),
            "plan does not fit this model",
        ),
        (lambda: precision_for(SHAPE, None, kv_bits=3), "KV-cache bits"),
        (lambda: shape_from_config({"model_type": "gpt2"}), "not 'gpt2'"),
    ],
)
def test_bad_input_is_a_clear_error(make, message):
    with pytest.raises((ConfigError, UnknownNameError), match=message):
        make()


def test_runtime_overheads_and_measured_curves():
    from dataclasses import replace

    from lowbit.perf.runtime import RUNTIMES

    hw = replace(
        get_hardware("a100-40gb"),
        dispatch_s=1e-6,
        module_s=2e-6,
        bandwidth_curve=((1e3, 1e9), (1e9, 1e12)),
        compute_curves={"fp16": ((1e3, 1e9), (1e12, 1e14))},
    )
    op = _ops(Step(1, 1, 8))["input_norm"][0]
    eager, fused, graphs = (RUNTIMES.get(n) for n in ("eager", "fused", "graphs"))
    base = time_op(op, hw, graphs).seconds
    assert time_op(op, hw, fused).seconds == pytest.approx(base + 1e-6)
    assert time_op(op, hw, eager).seconds == pytest.approx(base + 2e-6 + 8e-6)  # 1 module, 8 ops
    assert hw.attained_bandwidth(1e6) == pytest.approx(1e9 + 0.5 * (1e12 - 1e9))
    assert hw.attained_bandwidth(1e12) == 1e12 and hw.attained_bandwidth(1) == 1e9
    assert hw.attained_peak("fp16", 1e15) == 1e14
    measured = replace(hw, op_overhead={"input_norm": 5e-5})
    assert time_op(op, measured, eager).seconds == pytest.approx(base + 5e-5)
    with pytest.raises(UnknownNameError, match="runtime"):
        Layout(runtime="jit")


def test_tiny_twin_overheads_cover_every_operator(tiny_llama):
    from transformers import AutoConfig

    from lowbit.models.twin import tiny_twin
    from lowbit.perf.profile import operator_overheads

    twin = tiny_twin(AutoConfig.from_pretrained(tiny_llama))
    assert twin.config.hidden_size == 64 and twin.config.num_key_value_heads == 2
    overheads = operator_overheads(twin, steps=4)
    names = {op.name for op in _all_ops(Step(1, 1, 4))} - {"all_reduce"}
    assert names <= set(overheads)
    assert overheads["attention"] > 0 and overheads["input_norm"] > 0


def test_w8a8_runs_only_8_bit_linears_in_int8():
    prec = precision_for(SHAPE, uniform_plan(spec(8)), act_bits=8)
    assert prec.compute == "int8"
    ops = _ops(Step(1, 4, 4), prec=prec)
    assert ops["q_proj"][0].dtype == "int8"
    assert ops["attention"][0].dtype == "fp16" and ops["input_norm"][0].dtype == "fp16"
    assert head_ops(SHAPE, prec, Step(1, 4, 4), 1)[1].dtype == "fp16"
    mixed = precision_for(SHAPE, Plan(spec(8), (Rule("re:.*down_proj", None),)), act_bits=8)
    assert mixed.compute == "fp16"  # a 16-bit layer: no int8 matmuls


def test_transfers_run_at_half_the_bidirectional_interconnect():
    hw = get_hardware("h100-sxm")
    op = _ops(Step(4, 1, 8), tp=2)["all_reduce"][0]
    assert op.bytes == 2 * (2 - 1) / 2 * 4 * 64 * 2
    assert time_op(op, hw).seconds == pytest.approx(op.bytes / (900e9 / 2))


def test_replicated_kv_heads_are_not_split_in_memory():
    wide = Layout(tp=4)  # 2 KV heads over 4 GPUs: each GPU holds one KV head's rows
    mem = memory_per_gpu(SHAPE, DENSE, wide)["weights"]
    per_block = (64 * 64 * 2 + 64 * 96 * 3) / 4 + 2 * 64 * 32 / 2
    expected = (per_block + 2 * 64) * 2 + 320 * 64 / 4 + 64  # blocks, norms, tied table, norm
    assert mem == pytest.approx(expected * 2)  # fp16


def test_qwen3_counts_its_q_and_k_norms():
    qwen = shape_from_config(config_for("qwen3"))
    assert qwen.qk_norm
    names = [op.name for op in block_ops(0, qwen, DENSE, Step(1, 1, 4), 1)]
    assert "qk_norm" in names and names.index("qk_norm") < names.index("rotary")
    assert "qk_norm" not in [op.name for op in block_ops(0, SHAPE, DENSE, Step(1, 1, 4), 1)]
