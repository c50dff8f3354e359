"""The plan's activation and KV-cache formats become the performance model's act/KV bits and
compute dtype; explicit contradicting bits are refused."""

from __future__ import annotations

import pytest

from lowbit.algorithms import RTNConfig
from lowbit.algorithms.activation_specs import ActivationSpec, KVCacheSpec
from lowbit.errors import ConfigError
from lowbit.formats import FP8_E4M3, IntFormat, PerChannel, PerGroup
from lowbit.perf.estimate import Layout, memory_per_gpu
from lowbit.perf.precision import precision_for
from lowbit.perf.shape import shape_from_config
from lowbit.plan import LayerSpec, Plan
from tests.helpers.tiny import config_for

SHAPE = shape_from_config(config_for("llama"))
W8 = LayerSpec(IntFormat(8), PerChannel(), RTNConfig())
W4 = LayerSpec(IntFormat(4), PerGroup(32), RTNConfig())
FP8W = LayerSpec(FP8_E4M3, PerChannel(), RTNConfig())
FP8_STATIC = ActivationSpec(FP8_E4M3, "per_tensor", dynamic=False)


@pytest.mark.parametrize(
    ("plan", "act", "kv", "compute"),
    [
        (Plan(W8), 16, 16, "fp16"),
        (Plan(W8, activations=ActivationSpec(IntFormat(8))), 8, 16, "int8"),
        (Plan(W4, activations=ActivationSpec(IntFormat(8))), 8, 16, "int8"),  # W4A8
        (Plan(FP8W, activations=FP8_STATIC), 8, 16, "fp8"),
        (Plan(W4, kv_cache=KVCacheSpec(IntFormat(4))), 16, 4, "fp16"),
        (Plan(W8, kv_cache=KVCacheSpec(FP8_E4M3)), 16, 8, "fp16"),
    ],
)
def test_plan_bits_reach_the_model(plan, act, kv, compute):
    prec = precision_for(SHAPE, plan)
    assert (prec.act_bits, prec.kv_bits, prec.compute) == (act, kv, compute)


def test_kv_bits_shrink_the_cache():
    layout = Layout(batch=4, prompt=256, gen=64)
    full = memory_per_gpu(SHAPE, precision_for(SHAPE, Plan(W8)), layout)["kv_cache"]
    int4 = precision_for(SHAPE, Plan(W8, kv_cache=KVCacheSpec(IntFormat(4))))
    assert memory_per_gpu(SHAPE, int4, layout)["kv_cache"] == full / 4


def test_contradicting_bits_refused():
    plan = Plan(W8, activations=ActivationSpec(IntFormat(8)))
    assert precision_for(SHAPE, plan, act_bits=8).act_bits == 8
    with pytest.raises(ConfigError, match="--act-bits 16 contradicts the plan's activations"):
        precision_for(SHAPE, plan, act_bits=16)
