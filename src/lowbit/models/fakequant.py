"""Fake quantization: a dense model whose quantized layers hold their dequantized weights."""

from __future__ import annotations

from typing import Any

import torch

from lowbit.formats import QuantizedWeight


def apply_weights(model: Any, weights: dict[str, QuantizedWeight]) -> Any:
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
