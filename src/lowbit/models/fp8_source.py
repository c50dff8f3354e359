"""FP8 checkpoints with block scales (DeepSeek-V3, Qwen3-FP8: ``quant_method: "fp8"``) read as
dense weights, dequantized as each tensor is read.

Each quantized ``X.weight`` is stored as float8 (e4m3fn, or e5m2) beside ``X.weight_scale_inv``:
with ``weight_block_size: [bm, bn]`` a float grid of shape ``(ceil(out / bm), ceil(in / bn))``
(the last row and column of blocks may be partial), without it one scale per tensor or per
output row. The weight is ``weight.float() * scale_inv`` with each scale spread over its block:
transformers' convention (``integrations/finegrained_fp8.py``, ``_dequantize_fp8_weight``).

:class:`FP8Weights` wraps the directory's :class:`~lowbit.models.weights.WeightSource`: it hides
the scales (and static ``activation_scale`` s) from ``keys()`` and returns each quantized weight
in float32, so no dense copy is written and only one module is in memory at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lowbit.errors import ModelSourceError
from lowbit.models.weights import WeightSource

SCALE = "_scale_inv"  # X.weight → X.weight_scale_inv
ACTIVATION_SCALE = ".activation_scale"
FP8_DTYPES = ("F8_E4M3", "F8_E5M2")
SCALE_DTYPES = ("F32", "BF16", "F16", "F8_E8M0")


def dequantize_fp8(
    weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] | None
) -> torch.Tensor:
    """The float32 weight of an FP8 ``weight: (..., out, in)`` and its ``scale_inv``:
    ``(..., ceil(out / bm), ceil(in / bn))`` for ``block = (bm, bn)``; a single value, or one
    per output row (``(..., out)`` or ``(..., out, 1)``), for ``block = None``. Each element is
    ``float(weight) * scale`` of its block, one float32 product (exact as transformers')."""
    w = weight.to(torch.float32)
    s = scale_inv.to(device=w.device, dtype=torch.float32)
    rows, cols = w.shape[-2:]
    if block is None:
        if s.numel() == 1:
            return w.mul_(s.reshape(()))
        if s.shape in (w.shape[:-1], (*w.shape[:-1], 1)):
            return w.mul_(s.reshape(*w.shape[:-1], 1))
        raise ValueError(f"scale of shape {tuple(s.shape)} fits neither a tensor nor its rows")
    bm, bn = block
    if tuple(s.shape) != grid_shape(tuple(w.shape), block):
        raise ValueError(
            f"scale of shape {tuple(s.shape)} is not the {block} block grid of a weight of shape "
            f"{tuple(w.shape)}; expected {grid_shape(tuple(w.shape), block)}"
        )
    # spread over rows only; columns broadcast through a view (no second weight-sized tensor)
    s = s.repeat_interleave(bm, dim=-2)[..., :rows, :]
    full, rem = divmod(cols, bn)
    w[..., : full * bn].unflatten(-1, (full, bn)).mul_(s[..., :full, None])
    if rem:
        w[..., full * bn :].mul_(s[..., full:])
    return w


def grid_shape(shape: tuple[int, ...], block: tuple[int, int]) -> tuple[int, ...]:
    """The block-scale grid of a weight of ``shape`` (partial edge blocks count)."""
    rows, cols = shape[-2:]
    return (*shape[:-2], -(-rows // block[0]), -(-cols // block[1]))


@dataclass(frozen=True)
class FP8Format:
    """An FP8 checkpoint as found: its block size and which weight each scale belongs to."""

    config: Path
    block: tuple[int, int] | None
    scales: Mapping[str, str]  # X.weight → X.weight_scale_inv
    hidden: frozenset[str]  # the scales and activation scales
    details: dict[str, Any] = field(default_factory=dict)

    method = "fp8"

    def wrap(self, base: WeightSource, where: str) -> WeightSource:
        return FP8Weights(base, self, where)

    def owner(self, key: str) -> str | None:
        """The weight a hidden scale belongs to (``None`` for any other key)."""
        if key.endswith(SCALE) and key in self.hidden:
            return key[: -len(SCALE)]
        if key.endswith(ACTIVATION_SCALE) and key in self.hidden:
            return key[: -len(ACTIVATION_SCALE)] + ".weight"
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "quant_method": self.method,
            "weight_block_size": None if self.block is None else list(self.block),
            "fp8_tensors": len(self.scales),
            "dequantized": "on read: float8 x scale_inv, in float32",
            **self.details,
        }


class FP8Weights:
    """``base`` with each FP8 weight dequantized on read and its scales hidden."""

    def __init__(self, base: WeightSource, fmt: FP8Format, where: str) -> None:
        self.base, self.fmt, self.where = base, fmt, where

    def keys(self) -> set[str]:
        return self.base.keys() - self.fmt.hidden

    def read(self, keys: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
        hidden = [k for k in keys if k in self.fmt.hidden]
        if hidden:
            raise ModelSourceError(
                f"{self.where}: {hidden[0]!r} is an FP8 scale, folded into its weight on read"
            )
        scales = [self.fmt.scales[k] for k in keys if k in self.fmt.scales]
        raw = self.base.read(list(dict.fromkeys([*keys, *scales])), device)
        out: dict[str, torch.Tensor] = {}
        for key in keys:
            if key in self.fmt.scales:
                out[key] = dequantize_fp8(raw[key], raw[self.fmt.scales[key]], self.fmt.block)
            else:
                out[key] = raw[key]
        return out


def fp8_format(config: Path, qcfg: Mapping[str, Any], headers: Mapping[str, dict]) -> FP8Format:
    """Check an ``fp8`` quantization_config against the tensors' headers (``key → {dtype,
    shape}``), before anything is read; every problem names the file, the tensor and the fix."""
    block = _block_size(config, qcfg.get("weight_block_size"))
    if qcfg.get("expert_dtype", "fp8") != "fp8":
        raise ModelSourceError(
            f"{config}: quantization_config.expert_dtype is {qcfg['expert_dtype']!r} (FP4-packed "
            "experts), which lowbit cannot dequantize yet; give the original (unquantized) "
            "checkpoint: lowbit quantizes from full precision"
        )
    scales = {k[: -len(SCALE)]: k for k in headers if k.endswith(SCALE)}
    for weight, key in scales.items():
        problem = _pair_problem(headers.get(weight), headers[key], key, block)
        if problem:
            raise ModelSourceError(f"{config}: FP8 tensor {weight!r} {problem}")
    for key, head in headers.items():
        if head["dtype"].startswith("F8") and key not in scales and not key.endswith(SCALE):
            raise ModelSourceError(
                f"{config}: tensor {key!r} is {head['dtype']} but has no {key + SCALE!r}; the "
                "checkpoint is incomplete (download it again) or of another FP8 layout"
            )
    hidden = frozenset(scales.values()) | {k for k in headers if k.endswith(ACTIVATION_SCALE)}
    details = {"activation_scheme": qcfg.get("activation_scheme", "dynamic")}
    return FP8Format(config, block, scales, hidden, details)


def _block_size(config: Path, value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    ok = isinstance(value, (list, tuple)) and len(value) == 2
    if not ok or not all(isinstance(v, int) and v > 0 for v in value):
        raise ModelSourceError(
            f"{config}: quantization_config.weight_block_size is {value!r}; it must be two "
            "positive integers such as [128, 128] (or null for per-tensor / per-row scales)"
        )
    return (value[0], value[1])


def _pair_problem(w: dict | None, s: dict, key: str, block: tuple[int, int] | None) -> str | None:
    """What is wrong with an FP8 weight header ``w`` and its scale's ``s`` (None: nothing)."""
    if w is None:
        return f"is missing, but its scale {key!r} is stored; download the checkpoint again"
    if w["dtype"] not in FP8_DTYPES:
        return (
            f"is {w['dtype']}, not float8 ({', '.join(FP8_DTYPES)}); lowbit cannot dequantize "
            "this layout: give the original (unquantized) checkpoint"
        )
    if s["dtype"] not in SCALE_DTYPES:
        return (
            f"has a {s['dtype']} scale {key!r}; lowbit reads {', '.join(SCALE_DTYPES)} scales "
            "only: give the original (unquantized) checkpoint"
        )
    shape, scale = tuple(w["shape"]), tuple(s["shape"])
    if len(shape) < 2:
        return f"has shape {shape}; FP8 weights are matrices"
    if block is not None and scale != grid_shape(shape, block):
        return (
            f"of shape {shape} has a scale of shape {scale}, not the {grid_shape(shape, block)} "
            f"grid of weight_block_size {list(block)}; the config does not match the tensors"
        )
    per_tensor = all(d == 1 for d in scale)
    if block is None and not (per_tensor or scale in (shape[:-1], (*shape[:-1], 1))):
        return (
            f"of shape {shape} has a scale of shape {scale}, neither per tensor nor per row, "
            "and config.json gives no weight_block_size"
        )
    return None
