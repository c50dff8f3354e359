"""Activation quantization in a model: forward pre-hooks that fake-quantize the input of each
quantized linear layer, and the calibration passes that set static per-tensor thresholds.

The maths lives in :mod:`lowbit.formats.activation` (fake quantization) and
:mod:`lowbit.algorithms.activation_ranges` (thresholds from statistics); this module only
plumbs tensors in and out of ``nn.Linear`` modules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lowbit._tensor import all_finite
from lowbit.algorithms.activation_ranges import (
    HIST_BINS,
    MinMaxRange,
    abs_histogram,
    threshold,
)
from lowbit.algorithms.activation_specs import ActGranularity, ActivationSpec
from lowbit.errors import ArtefactError, DataError
from lowbit.formats.activation import fake_quantize_rows, fake_quantize_tensor
from lowbit.models.capture import capture
from lowbit.models.views import ModelView
from lowbit.runtime import Runtime
from lowbit.runtime.runner import Activations, for_each_block, forward_chunks


def quantize_activation(
    x: torch.Tensor, spec: ActivationSpec, static_threshold: float | None = None
) -> torch.Tensor:
    """x̂ for an input ``x`` (..., in) of a linear layer under ``spec``, in x's dtype: per token
    (each row its own scale), per tensor dynamic, or per tensor with ``static_threshold``."""
    if spec.granularity is ActGranularity.PER_TOKEN:
        out = fake_quantize_rows(x, spec.fmt)
    else:
        out = fake_quantize_tensor(x, spec.fmt, None if spec.dynamic else static_threshold)
    return out.to(x.dtype)


def attach_activation_quant(
    model: nn.Module,
    names: list[str],
    spec: ActivationSpec,
    thresholds: dict[str, float] | None = None,
) -> list[Any]:
    """Fake-quantize the input of each named linear layer of ``model`` on every forward; returns
    the hook handles (``handle.remove()`` undoes it). Static specs need a threshold per name."""
    thresholds = thresholds or {}
    if not spec.dynamic:
        missing = [n for n in names if n not in thresholds]
        if missing:
            raise ArtefactError(
                f"static activation scales are missing for {len(missing)} layer(s) (first: "
                f"{missing[0]}); calibrate them by quantizing the model again with this plan"
            )
    handles = []
    for name in names:
        t = thresholds.get(name)

        def hook(module: nn.Module, args: tuple, t: float | None = t) -> tuple:
            return (quantize_activation(args[0], spec, t), *args[1:])

        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    return handles


def calibrate_activations(
    view: ModelView,
    names: list[str],
    windows: torch.Tensor,
    spec: ActivationSpec,
    runtime: Runtime,
    chunk_size: int = 4,
) -> dict[str, float]:
    """Static thresholds (one per named linear of ``view``, whose weights are already
    quantized; activations unquantized) by ``spec.calibration`` over ``windows`` (n, ctx),
    layer-wise on the block runner: per block one pass for min-max; for percentile, MSE and KL a
    second pass builds each input's 2048-bin |x| histogram over [0, absmax]."""
    if windows is None or windows.numel() == 0:
        raise DataError("static activation scales need calibration windows; give --calib text")
    lazy = view.lazy(runtime, attach=False)
    acts = capture(lazy, windows, chunk_size, runtime.device)
    thresholds: dict[str, float] = {}
    prefix = lazy.arch.blocks_path

    def stage(i: int, block: nn.Module, inputs: Activations) -> Activations:
        mine = {n: block.get_submodule(n[len(f"{prefix}.{i}.") :]) for n in names
                if n.startswith(f"{prefix}.{i}.")}  # fmt: skip
        absmax, out = _absmax(block, inputs, mine)
        if isinstance(spec.calibration, MinMaxRange):
            thresholds.update(absmax)
            return out
        counts = _histograms(block, inputs, mine, absmax)
        thresholds.update(
            {n: threshold(spec.calibration, spec.fmt, absmax[n], counts[n]) for n in mine}
        )
        return out

    for_each_block(lazy, acts, stage)
    missing = [n for n in names if n not in thresholds]
    if missing:
        raise DataError(f"layers {missing[:3]} are not decoder-block linears of {view.name}")
    return {n: thresholds[n] for n in names}


def _absmax(
    block: nn.Module, inputs: Activations, modules: dict[str, nn.Module]
) -> tuple[dict[str, float], Activations]:
    """Largest |x| of each module's input over every chunk, and the block's outputs; NaN or
    infinity is a DataError naming the layer."""
    found = dict.fromkeys(modules, 0.0)

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            if not all_finite(x):
                raise DataError(
                    f"layer {name}: its input activations hold NaN or infinity on the "
                    "calibration windows; check the model's weights (or the SmoothQuant scales) "
                    "and the calibration text, or keep this layer in full precision"
                )
            found[name] = max(found[name], float(x.detach().abs().max()))

        return hook

    out = forward_chunks(block, inputs, [(m, hook_for(n)) for n, m in modules.items()])
    assert out is not None
    return found, out


def _histograms(
    block: nn.Module,
    inputs: Activations,
    modules: dict[str, nn.Module],
    absmax: dict[str, float],
    bins: int = HIST_BINS,
) -> dict[str, torch.Tensor]:
    """Histogram (bins,) of |x| over [0, absmax[name]] of each module's input."""
    counts = {n: torch.zeros(bins, dtype=torch.float64) for n in modules}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            counts[name] += abs_histogram(args[0], absmax[name], bins).to(counts[name].device)

        return hook

    forward_chunks(block, inputs, [(m, hook_for(n)) for n, m in modules.items()])
    return counts
