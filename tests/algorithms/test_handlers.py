"""Algorithms are dispatched by config type through a registry: every registered config reaches
its own algorithm, and an unregistered one is an error naming it, never a silent RTN."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from lowbit.algorithms import (
    ALGORITHMS,
    AWQConfig,
    GPTQConfig,
    RTNConfig,
    SqueezeLLMConfig,
    gptq_quantize,
    rtn_quantize,
)
from lowbit.algorithms.handlers import HANDLERS, LayerJob, quantize_layer, register_handler
from lowbit.errors import ConfigError, LowbitError
from lowbit.formats import IntFormat, LUTFormat, PerChannel, PerGroup


def _job(fmt=None, granularity=None, H=True):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(16, 32, generator=g)
    X = torch.randn(256, 32, generator=g)
    return LayerJob(
        "layer", W, fmt or IntFormat(3), granularity or PerGroup(16), X.T @ X / 256 if H else None
    )


def test_every_registered_algorithm_has_a_handler():
    assert {config for _, config in ALGORITHMS} <= set(HANDLERS)


def test_each_config_reaches_its_own_algorithm():
    job = _job()
    rtn = quantize_layer(job, RTNConfig())
    assert torch.equal(rtn.weight.codes, rtn_quantize(job.W, job.fmt, job.granularity).codes)
    assert rtn.loss is None
    gptq = quantize_layer(job, GPTQConfig())
    direct = gptq_quantize(job.W, job.H, job.fmt, job.granularity, GPTQConfig())
    assert torch.equal(gptq.weight.codes, direct.weight.codes) and gptq.loss == direct.loss
    assert not torch.equal(gptq.weight.codes, rtn.weight.codes)
    awq = quantize_layer(job, AWQConfig())
    assert awq.weight.shape == job.W.shape
    lut = quantize_layer(_job(LUTFormat(3), PerChannel()), SqueezeLLMConfig())
    assert lut.weight.outliers is not None


def test_an_unregistered_config_is_refused_by_name():
    @dataclass(frozen=True)
    class HQQConfig:
        name = "hqq"
        needs_calibration = False

    with pytest.raises(ConfigError, match="no quantization handler is registered for HQQConfig"):
        quantize_layer(_job(), HQQConfig())


def test_a_calibrated_algorithm_without_statistics_is_refused():
    with pytest.raises(LowbitError, match="layer layer: GPTQ needs calibration statistics"):
        quantize_layer(_job(H=False), GPTQConfig())


def test_a_handler_is_registered_once():
    with pytest.raises(ConfigError, match="registered twice"):
        register_handler(RTNConfig)(lambda job, cfg: None)
