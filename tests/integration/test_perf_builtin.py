"""The performance model on the real built-in model's config: its FLOPs equal torch's FLOP
counter on a real forward pass, and its weight memory equals the bytes the model and a
quantization plan actually store."""

from __future__ import annotations

import pytest
import torch

from lowbit import api
from lowbit.algorithms import RTNConfig
from lowbit.formats import IntFormat, PerGroup
from lowbit.perf.estimate import Layout, memory_per_gpu
from lowbit.perf.operators import Step, block_ops, head_ops
from lowbit.perf.precision import precision_for
from lowbit.perf.shape import shape_from_config
from lowbit.plan import LayerSpec, uniform_plan
from tests.conftest import require_builtin_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def handle():
    require_builtin_model()
    return api.load("smollm2-135m")


def test_flops_match_torch_on_the_real_model(handle):
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        handle.path, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    b, t = 1, 64
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randint(0, 49152, (b, t)), logits_to_keep=1)
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    attention = counts.pop("aten.bmm")
    shape = shape_from_config(handle.config)
    prec = precision_for(shape, None, dense_bits=32, act_bits=32, kv_bits=32)
    step = Step(b, t, t)
    ops = block_ops(0, shape, prec, step, 1)
    linear = sum(op.flops for op in ops if op.kind == "linear") * shape.layers
    assert sum(counts.values()) == linear + head_ops(shape, prec, step, 1)[1].flops
    attn = next(op for op in ops if op.kind == "attention").flops * shape.layers
    matmul_part = attn * 4 * shape.head_dim / (4 * shape.head_dim + 5)
    assert matmul_part == pytest.approx(attention * (t + 1) / (2 * t))


def test_weight_memory_equals_stored_bytes(handle):
    from lowbit.models.footprint import footprint

    shape = shape_from_config(handle.config)
    dense = memory_per_gpu(shape, precision_for(shape, None, dense_bits=32), Layout())
    assert dense["weights"] == footprint(handle, None).size_bytes
    spec = LayerSpec(IntFormat(4), PerGroup(32), RTNConfig())
    plan = uniform_plan(spec)
    qm = api.quantize(handle, plan, None)
    planned = memory_per_gpu(shape, precision_for(shape, plan, dense_bits=32), Layout())
    assert planned["weights"] == pytest.approx(footprint(handle, qm).size_bytes, abs=1)
