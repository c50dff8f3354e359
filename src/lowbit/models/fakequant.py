"""Fake quantization: a dense model whose quantized layers hold their dequantized weights, with
the plan's activation and KV-cache quantization attached as hooks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lowbit.formats import QuantizedWeight
from lowbit.plan import Plan
from lowbit.runtime import Runtime


def apply_weights(model: Any, weights: Mapping[str, QuantizedWeight]) -> Any:
    """Replace each named linear layer's weight with its dequantized value (in place)."""
    with torch.no_grad():
        for name, qw in weights.items():
            module = model.get_submodule(name)
            if tuple(module.weight.shape) != qw.shape:
                from lowbit.errors import ArtefactError

                raise ArtefactError(
                    f"layer {name}: quantized shape {qw.shape} does not match the model's "
                    f"{tuple(module.weight.shape)}; the weights are from another model"
                )
            module.weight.data = qw.dequantize().to(module.weight.dtype)
    return model


def activation_layers(model: Any, weights: Mapping[str, QuantizedWeight]) -> list[str]:
    """The quantized linear layers whose inputs a plan's activation spec quantizes: every
    quantized ``nn.Linear`` but the output head."""
    from lowbit.models.embeddings import HEAD_PATH

    return [n for n in weights if n != HEAD_PATH and isinstance(model.get_submodule(n), nn.Linear)]


def attach_runtime(
    model: Any,
    plan: Plan,
    weights: Mapping[str, QuantizedWeight],
    activation_ranges: dict[str, float] | None = None,
) -> Any:
    """Attach ``plan``'s activation quantization (static thresholds from ``activation_ranges``)
    and KV-cache quantization to ``model`` (in place, weights already applied)."""
    if plan.activations is not None:
        from lowbit.models.activations import attach_activation_quant

        names = activation_layers(model, weights)
        attach_activation_quant(model, names, plan.activations, activation_ranges)
    if plan.kv_cache is not None:
        from lowbit.models.kvcache import attach_kv_quant

        attach_kv_quant(model, plan.kv_cache)
    return model


def fake_quant(model: Any, qm: Any, *, runtime: bool = True) -> Any:
    """``model`` (the original, dense) with ``qm``'s weights, untied first when ``qm`` stores
    the head apart, and with the activation and KV-cache quantization unless ``runtime`` is
    False."""
    if qm.untied_head:
        from lowbit.models.embeddings import untie_head

        untie_head(model)
    if qm.smoothed:  # norms and biases rescaled by AWQ / SmoothQuant
        from lowbit.models.smoothing import load_smoothed

        load_smoothed(model, qm.smoothed)
    apply_weights(model, qm.weights)
    if runtime:
        attach_runtime(model, qm.plan, qm.weights, qm.activation_ranges)
    return model


def calibrate_static_activations(
    qm: Any, windows: torch.Tensor, runtime: Runtime
) -> dict[str, float]:
    """Static activation thresholds of ``qm`` (a QuantizedModel whose plan has static
    activations), measured layer-wise on its fake-quantized weights, activations unquantized."""
    from lowbit.models.activations import calibrate_activations
    from lowbit.models.views import quantized_view

    view = quantized_view(qm)
    names = activation_layers(view.lazy(runtime, attach=False).model, qm.weights)
    return calibrate_activations(view, names, windows, qm.plan.activations, runtime)
