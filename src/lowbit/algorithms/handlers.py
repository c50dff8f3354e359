"""Which function quantizes a weight for each algorithm configuration type.

``HANDLERS`` maps a config type (``RTNConfig``, ``GPTQConfig``, ``AWQConfig``,
``SqueezeLLMConfig``) to its handler; :func:`quantize_layer` looks the config's type up and
calls it. A config type with no handler is an error naming it: nothing falls back to RTN.
A new algorithm registers its handler with :func:`register_handler`; the drivers never test
config types themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lowbit._tensor import all_finite
from lowbit.algorithms.awq import awq_quantize
from lowbit.algorithms.config import AWQConfig, GPTQConfig, RTNConfig, SqueezeLLMConfig
from lowbit.algorithms.gptq import gptq_factor, gptq_quantize
from lowbit.algorithms.gptq_ggml import sweep_granularity
from lowbit.algorithms.rtn import rtn_quantize
from lowbit.algorithms.squeezellm import squeezellm_quantize
from lowbit.errors import ConfigError, LowbitError
from lowbit.formats import Granularity, QuantizedWeight, WeightFormat


@dataclass(frozen=True)
class LayerJob:
    """One weight to quantize: ``W`` (out, in) in its compute dtype on the device, ``H`` the
    fp32 second moment of its inputs (in, in) when calibration ran, ``clip`` whether AWQ's clip
    search may run on it, ``name`` for errors. ``shared``: a cache the driver gives every
    linear of one input group, where handlers keep what depends on H alone (GPTQ's factor)."""

    name: str
    W: torch.Tensor
    fmt: WeightFormat
    granularity: Granularity
    H: torch.Tensor | None = None
    clip: bool = True
    shared: dict[tuple[object, ...], object] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Outcome:
    """The quantized weight, GPTQ's objective and the damping it used (None otherwise)."""

    weight: QuantizedWeight
    loss: float | None = None
    damp: float | None = None


Handler = Callable[[LayerJob, object], Outcome]
HANDLERS: dict[type, Handler] = {}


def register_handler(config_type: type) -> Callable[[Handler], Handler]:
    def add(fn: Handler) -> Handler:
        if config_type in HANDLERS:
            raise ConfigError(f"a handler for {config_type.__name__} is registered twice")
        HANDLERS[config_type] = fn
        return fn

    return add


def quantize_layer(job: LayerJob, config: object) -> Outcome:
    """Quantize ``job`` with the handler registered for ``type(config)``."""
    handler = HANDLERS.get(type(config))
    if handler is None:
        known = ", ".join(sorted(t.__name__ for t in HANDLERS))
        raise ConfigError(
            f"layer {job.name}: no quantization handler is registered for "
            f"{type(config).__name__} (registered: {known}); register one with "
            "lowbit.algorithms.handlers.register_handler"
        )
    return handler(job, config)


def _hessian(job: LayerJob, what: str) -> torch.Tensor:
    if job.H is None:
        raise LowbitError(f"layer {job.name}: {what} needs calibration statistics")
    if not all_finite(job.H):
        raise LowbitError(f"layer {job.name}: its calibration inputs contain NaN or infinity")
    return job.H


@register_handler(RTNConfig)
def _rtn(job: LayerJob, cfg: RTNConfig) -> Outcome:  # type: ignore[misc]
    return Outcome(rtn_quantize(job.W, job.fmt, job.granularity, cfg.clipping, job.name))


@register_handler(GPTQConfig)
def _gptq(job: LayerJob, cfg: GPTQConfig) -> Outcome:  # type: ignore[misc]
    H = _hessian(job, "GPTQ")
    factor = None
    if job.shared is not None:  # one factorisation for every linear of the group
        sweep = sweep_granularity(job.fmt, job.granularity, job.W.shape[1])
        key = ("gptq", sweep, cfg.act_order, cfg.damp)
        factor = job.shared.get(key)
        if factor is None:
            factor = job.shared[key] = gptq_factor(H, sweep, cfg)
    out = gptq_quantize(job.W, H, job.fmt, job.granularity, cfg, factor)  # type: ignore[arg-type]
    return Outcome(out.weight, out.loss, out.damp)


@register_handler(AWQConfig)
def _awq(job: LayerJob, cfg: AWQConfig) -> Outcome:  # type: ignore[misc]
    """AWQ's clip search (with ``H`` and ``clip``) and round to nearest: its scales are folded
    into the block before (``lowbit.models.smoothing``); a layer quantized alone (sensitivity
    probes) gets no scales."""
    qw = awq_quantize(job.W, job.H, job.fmt, job.granularity, cfg, clip=job.clip, name=job.name)
    return Outcome(qw)


@register_handler(SqueezeLLMConfig)
def _squeezellm(job: LayerJob, cfg: SqueezeLLMConfig) -> Outcome:  # type: ignore[misc]
    sensitivity = torch.diagonal(_hessian(job, "SqueezeLLM"))
    return Outcome(squeezellm_quantize(job.W, sensitivity, job.fmt, job.granularity, cfg, job.name))
