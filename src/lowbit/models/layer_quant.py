"""One layer's quantization: the handler registered for its algorithm on its weight and
statistics, and the record of what was done (:class:`LayerReport`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lowbit.algorithms.handlers import LayerJob, quantize_layer
from lowbit.errors import DataError
from lowbit.plan import LayerSpec


@dataclass(frozen=True)
class LayerReport:
    name: str
    spec: str
    shape: tuple[int, int]
    bits_per_weight: float
    seconds: float
    gptq_loss: float | None = None
    damp: float | None = None


def dtype_name(W: torch.Tensor) -> str:
    short = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    return short.get(W.dtype, str(W.dtype).removeprefix("torch."))


def quantize_weight(
    name: str,
    W: torch.Tensor,
    spec: LayerSpec,
    H: torch.Tensor | None,
    *,
    clip: bool = True,
    shared: dict[tuple[object, ...], object] | None = None,
) -> Any:
    """Quantize ``W`` (out, in) as ``spec`` says with the handler registered for its algorithm
    (``H`` (in, in): the fp32 second moment of its inputs); returns the handler's Outcome."""
    try:
        return quantize_layer(
            LayerJob(name, W, spec.fmt, spec.granularity, H, clip), spec.algorithm
        )
    except DataError as exc:
        raise DataError(f"layer {name}: {exc}") from None
