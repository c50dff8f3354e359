"""Algorithm configurations: defaults and validation that names the bad value."""

from __future__ import annotations

import re

import pytest

from lowbit.algorithms import ALGORITHMS, ActOrder, GPTQConfig, RTNConfig, SqueezeLLMConfig
from lowbit.errors import ConfigError


def test_defaults():
    cfg = GPTQConfig()
    assert (cfg.damp, cfg.block_size, cfg.act_order) == (0.01, 128, ActOrder.STATIC)
    assert cfg.name == "gptq" and cfg.needs_calibration
    assert RTNConfig().name == "rtn" and not RTNConfig().needs_calibration


@pytest.mark.parametrize("damp", [-0.01, 1.0, 1.5, float("nan")])
def test_damp_out_of_range(damp):
    with pytest.raises(ConfigError, match=re.escape(f"got {damp!r}")):
        GPTQConfig(damp=damp)


@pytest.mark.parametrize("damp", [0.0, 0.1, 0.999])
def test_damp_in_range(damp):
    assert GPTQConfig(damp=damp).damp == damp


@pytest.mark.parametrize("block_size", [0, -128, 2.5, True])
def test_block_size_must_be_a_positive_integer(block_size):
    with pytest.raises(ConfigError, match=re.escape(f"got {block_size!r}")):
        GPTQConfig(block_size=block_size)


@pytest.mark.parametrize("value", ["off", "static", "group", "group_aware", ActOrder.GROUP])
def test_act_order_accepts_names(value):
    assert GPTQConfig(act_order=value).act_order is ActOrder(value)


def test_unknown_act_order_names_the_value_and_the_choices():
    with pytest.raises(
        ConfigError, match=re.escape("one of 'off', 'static', 'group', 'group_aware', got 'desc'")
    ):
        GPTQConfig(act_order="desc")


def test_squeezellm_defaults_and_registry():
    cfg = SqueezeLLMConfig()
    assert (cfg.outlier_fraction, cfg.sensitivity) == (0.0045, "hessian")
    assert cfg.name == "squeezellm" and cfg.needs_calibration
    assert ALGORITHMS.get("squeezellm") is SqueezeLLMConfig
    assert cfg.outlier_count(4096 * 4096) == 75497  # 0.45% of 16,777,216, rounded
    assert SqueezeLLMConfig(outlier_fraction=0.0).outlier_count(10**6) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"outlier_fraction": -0.1}, "outlier_fraction must be in [0, 0.5), got -0.1"),
        ({"outlier_fraction": float("nan")}, "outlier_fraction must be in [0, 0.5), got nan"),
        ({"iterations": -1}, "iterations must be a non-negative integer, got -1"),
        ({"tol": 1.0}, "tol must be in [0, 1), got 1.0"),
        ({"sensitivity": "fisher"}, "one of 'hessian', 'uniform', got 'fisher'"),
    ],
)
def test_squeezellm_bad_values_are_named(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        SqueezeLLMConfig(**kwargs)
