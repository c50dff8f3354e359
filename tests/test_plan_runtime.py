"""Plan-level options (activations, KV cache, embedding/head, SmoothQuant): round trips,
versioning (old plans unchanged), and refusals with the fix named."""

from __future__ import annotations

import json

import pytest
import yaml

from lowbit.algorithms import GPTQConfig, RTNConfig
from lowbit.algorithms.activation_ranges import KLRange, PercentileRange
from lowbit.algorithms.activation_specs import ActivationSpec, KVCacheSpec, KVGranularity
from lowbit.errors import ConfigError
from lowbit.formats import FP8_E4M3, IntFormat, PerChannel, PerGroup
from lowbit.plan import PLAN_VERSION, PLAN_VERSION_RUNTIME, LayerSpec, Plan

W8 = LayerSpec(IntFormat(8), PerChannel(), RTNConfig())
A8 = ActivationSpec(IntFormat(8))
FP8_STATIC = ActivationSpec(FP8_E4M3, "per_tensor", dynamic=False, calibration=KLRange())

PLANS = [
    Plan(W8, activations=A8),
    Plan(LayerSpec(IntFormat(4), PerGroup(64), RTNConfig()), activations=A8),  # W4A8
    Plan(LayerSpec(FP8_E4M3, PerChannel(), RTNConfig()), activations=FP8_STATIC),
    Plan(None, kv_cache=KVCacheSpec(IntFormat(4, symmetric=False), "per_channel", "per_token")),
    Plan(W8, embedding=W8, head=W8),
    Plan(W8, head=LayerSpec(IntFormat(4), PerGroup(32), RTNConfig()), untie_embeddings=True),
    Plan(W8, activations=ActivationSpec(IntFormat(8), "per_tensor", False, PercentileRange())),
]


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_round_trip(plan, fmt):
    text = plan.dumps(fmt)
    data = yaml.safe_load(text) if fmt == "yaml" else json.loads(text)
    assert data["lowbit_plan_version"] == PLAN_VERSION_RUNTIME
    assert Plan.from_dict(data) == plan


def test_old_plan_loads_unchanged_and_writes_version_1():
    old = {
        "lowbit_plan_version": 1,
        "default": W8.to_dict(),
        "rules": [{"target": "re:.*down_proj", "spec": None}],
    }
    plan = Plan.from_dict(old)
    assert plan.activations is None and plan.kv_cache is None and plan.embedding is None
    assert plan.to_dict() == old
    assert PLAN_VERSION == 1


def test_yaml_example_from_the_readme():
    text = """
lowbit_plan_version: 2
default: {format: {type: int, bits: 8}, granularity: {type: channel}, algorithm: {name: rtn}}
activations: {format: {type: int, bits: 8}, granularity: per_token, dynamic: true}
kv_cache: {format: {type: float, exponent_bits: 4, mantissa_bits: 3}, granularity: per_head}
embedding: {format: {type: int, bits: 8}, granularity: {type: channel}}
head: {format: {type: int, bits: 8}, granularity: {type: channel}}
"""
    plan = Plan.from_dict(yaml.safe_load(text))
    assert plan.kv_cache == KVCacheSpec(FP8_E4M3, KVGranularity.PER_HEAD, KVGranularity.PER_HEAD)
    assert plan.embedding == plan.head == W8
    assert plan.activations == A8
    assert not plan.needs_calibration()
    assert Plan(W8, activations=FP8_STATIC).needs_calibration()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ActivationSpec(IntFormat(8), "per_token", dynamic=False), "static activation"),
        (lambda: ActivationSpec(IntFormat(8), calibration=KLRange()), "dynamic scales"),
        (
            lambda: ActivationSpec(IntFormat(8, False), "per_tensor", dynamic=False),
            "symmetric",
        ),
        (lambda: ActivationSpec(IntFormat(8), "per_row"), "per_token"),
        (lambda: KVCacheSpec(IntFormat(8), "per_layer"), "per_head"),
        (lambda: Plan(W8, embedding=LayerSpec(IntFormat(8), PerChannel(), GPTQConfig())), "RTN"),
        (lambda: Plan(W8, smoothquant=1.5), "alpha"),
    ],
)
def test_refusals(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_unknown_calibration_in_a_plan_suggests():
    data = Plan(W8, activations=FP8_STATIC).to_dict()
    data["activations"]["calibration"] = {"method": "entropy_kl"}
    with pytest.raises(ConfigError, match="unknown activation calibration 'entropy_kl'"):
        Plan.from_dict(data)
