"""One NVFP4 global scale per fused group (q/k/v, gate/up), as vLLM and TensorRT Model
Optimizer serve them: each fused group runs as one matmul with one fp32 global scale, so
layers quantized with a global scale each cannot be served as evaluated.

:func:`share_fused_nvfp4_scales` re-encodes the NVFP4 layers of every fused group whose members
are all NVFP4 round-to-nearest (min-max) on the group's global scale, absmax(group) / (448·6),
from the checkpoint's weights: the block scales and codes are what RTN gives on that scale
(``NVFP4Format.encode_with_tensor_scale``). Layers quantized by other algorithms are refused:
their choices (GPTQ's updates, AWQ's scales, clipping) depend on the scale and cannot be
redone here.
"""

from __future__ import annotations

import dataclasses

import torch

from lowbit.algorithms import RTNConfig
from lowbit.errors import ConfigError
from lowbit.formats import MinMax, QuantizedWeight
from lowbit.formats.clipping import minmax_range
from lowbit.formats.nvfp4 import NVFP4Format, nvfp4_tensor_scale
from lowbit.models.qstore import QuantizedLayers
from lowbit.models.quantize import QuantizedModel
from lowbit.runtime import HOST


def fused_groups(qm: QuantizedModel) -> list[list[str]]:
    """The full names of every fused group (q/k/v, gate/up …) of the blocks in ``qm``."""
    arch = qm.handle.arch
    start = arch.blocks_path + "."
    names = [*qm.weights, *qm.kept]
    blocks = sorted({int(n[len(start) :].split(".", 1)[0]) for n in names if n.startswith(start)})
    return [
        [f"{arch.blocks_path}.{i}.{m}" for m in group]
        for i in blocks
        for group in arch.block(i).fused_groups
    ]


def _nvfp4_members(qm: QuantizedModel, members: list[str]) -> list[str]:
    """The members to share a scale (all NVFP4), refused when they are not RTN min-max."""
    layers = [qm.weights.get(m) for m in members]
    if not all(qw is not None and isinstance(qw.fmt, NVFP4Format) for qw in layers):
        return []
    for m in members:
        spec = qm.plan.spec_for(m)
        algo = None if spec is None else spec.algorithm
        if not (isinstance(algo, RTNConfig) and isinstance(algo.clipping, MinMax)):
            name = getattr(algo, "name", type(algo).__name__)
            raise ConfigError(
                f"layer {m}: a shared NVFP4 global scale is re-encoded by round to nearest, but "
                f"this layer was quantized with {name}; quantize its fused group with "
                "algorithm 'rtn' (min-max) to share the scale"
            )
    return members


def share_fused_nvfp4_scales(qm: QuantizedModel) -> QuantizedModel:
    """``qm`` with every all-NVFP4 fused group re-encoded on one global scale (the other
    layers unchanged); build the evaluated (fake-quantized) model from the result."""
    weights = qm.handle.weights()
    shared: dict[str, QuantizedWeight] = {}
    for members in fused_groups(qm):
        names = _nvfp4_members(qm, members)
        if not names:
            continue
        W = weights.read([f"{m}.weight" for m in names], HOST)
        Ws = [W[f"{m}.weight"].float() for m in names]
        scale = nvfp4_tensor_scale(torch.cat(Ws, dim=0))
        for m, w in zip(names, Ws, strict=True):
            qw = qm.weights[m]
            lo, hi = minmax_range(w, qw.granularity)
            shared[m] = qw.fmt.encode_with_tensor_scale(w, lo, hi, qw.granularity, scale)
    if not shared:
        return qm
    layers = QuantizedLayers()
    for name in qm.weights:
        layers.add(name, shared.get(name) or qm.weights[name])
    return dataclasses.replace(qm, weights=layers)
