"""Activation quantization in a model: forward pre-hooks that fake-quantize the input of each
quantized linear layer, and the calibration passes that set static per-tensor thresholds.

The maths lives in :mod:`lowbit.formats.activation` (fake quantization) and
:mod:`lowbit.algorithms.activation_ranges` (thresholds from statistics); this module only
plumbs tensors in and out of ``nn.Linear`` modules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lowbit.algorithms.activation_ranges import (
    HIST_BINS,
    MinMaxRange,
    abs_histogram,
    threshold,
)
from lowbit.algorithms.activation_specs import ActGranularity, ActivationSpec
from lowbit.errors import ArtefactError, DataError
from lowbit.formats.activation import fake_quantize_rows, fake_quantize_tensor


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


@contextmanager
def _input_hooks(
    model: nn.Module, names: list[str], fn: Callable[[str, torch.Tensor], None]
) -> Iterator[None]:
    handles = [
        model.get_submodule(n).register_forward_pre_hook(
            lambda module, args, n=n: fn(n, args[0])  # type: ignore[misc]
        )
        for n in names
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _run(model: nn.Module, windows: torch.Tensor) -> Iterator[int]:
    with torch.inference_mode():
        for w in range(windows.shape[0]):
            yield w
            model(input_ids=windows[w : w + 1], use_cache=False)


def activation_absmax(
    model: nn.Module, names: list[str], windows: torch.Tensor
) -> dict[str, float]:
    """Largest |x| of each named linear layer's input over ``windows`` (n, ctx); NaN or
    infinity is a DataError naming the layer and window."""
    absmax = dict.fromkeys(names, 0.0)
    window = [0]

    def observe(name: str, x: torch.Tensor) -> None:
        if not bool(torch.isfinite(x).all()):
            raise DataError(
                f"layer {name}: its input activations hold NaN or infinity on calibration window "
                f"{window[0]}; check the model's weights (or the SmoothQuant scales) and the "
                "calibration text, or keep this layer in full precision"
            )
        absmax[name] = max(absmax[name], float(x.detach().abs().max()))

    with _input_hooks(model, names, observe):
        for w in _run(model, windows):
            window[0] = w
    return absmax


def activation_histograms(
    model: nn.Module,
    names: list[str],
    windows: torch.Tensor,
    absmax: dict[str, float],
    bins: int = HIST_BINS,
) -> dict[str, torch.Tensor]:
    """Histogram (bins,) of |x| over [0, absmax[name]] of each named layer's input."""
    counts = {n: torch.zeros(bins, dtype=torch.float64) for n in names}

    def observe(name: str, x: torch.Tensor) -> None:
        counts[name] += abs_histogram(x, absmax[name], bins)

    with _input_hooks(model, names, observe):
        for _ in _run(model, windows):
            pass
    return counts


def calibrate_activations(
    model: nn.Module, names: list[str], windows: torch.Tensor, spec: ActivationSpec
) -> dict[str, float]:
    """Static thresholds (one per named layer) by ``spec.calibration``: one pass for min-max,
    two (absmax, then the 2048-bin histogram) for percentile, MSE and KL."""
    if windows is None or windows.numel() == 0:
        raise DataError("static activation scales need calibration windows; give --calib text")
    absmax = activation_absmax(model, names, windows)
    if isinstance(spec.calibration, MinMaxRange):
        return absmax
    hists = activation_histograms(model, names, windows, absmax)
    return {n: threshold(spec.calibration, spec.fmt, absmax[n], hists[n]) for n in names}
