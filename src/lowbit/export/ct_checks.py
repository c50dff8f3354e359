"""Checks of a compressed-tensors export that span layers or read the written layers back:
activations the format can carry, NVFP4 global scales shared within fused groups, and each
layer decompressed by the library itself and compared with the weight lowbit evaluated."""

from __future__ import annotations

from typing import Any

import torch

from lowbit.errors import ExportError
from lowbit.export.common import fused_groups
from lowbit.export.ct_inputs import input_problem, unequal_fused_thresholds
from lowbit.export.ct_writers import writer_for
from lowbit.formats import NVFP4Format, QuantizedWeight


def check_inputs(qm: Any) -> None:
    """A plan's activations must be a W8A8 scheme the library carries, on weight formats that
    can run with it, with one static threshold per fused group."""
    acts = qm.plan.activations
    if acts is None:
        return
    why = input_problem(acts)
    no_inputs = sorted(
        {qw.fmt.name for qw in qm.weights.values() if writer_for(qw).with_inputs is None}  # type: ignore[union-attr]
    )
    if why is None and no_inputs:
        why = (
            f"weight format(s) {', '.join(no_inputs)} are written weight-only (W4A16); "
            "compressed-tensors' NVFP4/MXFP4 activations are FP4 groups, not lowbit's "
            "per-token or per-tensor scales"
        )
    if why is None and not acts.dynamic:
        lines = unequal_fused_thresholds(fused_groups(qm), dict(qm.activation_ranges))
        if lines:
            why = (
                "vLLM runs each fused group on one input scale, but these static thresholds "
                "differ: " + "; ".join(lines[:4])
            )
    if why is not None:
        raise ExportError(
            f"compressed-tensors cannot carry this plan's activations ({acts.describe()}): "
            f"{why}. Quantize with int8 or fp8_e4m3 activations on INT or FP8 weights, or "
            "without activations"
        )


def check_shared_global_scales(qm: Any) -> None:
    """NVFP4 layers of one fused group (q/k/v, gate/up) must share their fp32 global scale:
    vLLM and TensorRT Model Optimizer run the group as one matmul with one global scale, so a
    group written with several would be served with other weights than were evaluated."""
    lines = []
    for members in fused_groups(qm):
        scales = {
            m: qw.tensor_scale
            for m in members
            if (qw := qm.weights.get(m)) is not None and isinstance(qw.fmt, NVFP4Format)
        }
        values = list(scales.values())
        if any(not torch.equal(values[0], v) for v in values[1:]):
            shown = ", ".join(f"{m.rsplit('.', 1)[1]} {float(v):.6g}" for m, v in scales.items())
            lines.append(f"{members[0].rsplit('.', 1)[0]}: {shown}")
    if lines:
        raise ExportError(
            f"NVFP4 layers of {len(lines)} fused group(s) have different global (tensor) "
            "scales, but vLLM serves each fused group with one:\n  "
            + "\n  ".join(lines[:8])
            + "\nQuantize those groups with round to nearest and share their scale "
            "(lowbit.models.nvfp4_fused.share_fused_nvfp4_scales), then evaluate and export "
            "that model"
        )


def _widened(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating-point scales widened to fp32 (payloads and integer tensors as stored), so the
    library dequantizes without rounding its products."""
    return {
        k: v.float() if k.endswith("_scale") and v.is_floating_point() else v
        for k, v in state.items()
    }


def read_back(name: str, module: Any, qw: QuantizedWeight) -> float:
    """Decompress ``module`` with its format's compressor (compressed-tensors' own) and
    compare with lowbit's dequantized weight; returns the largest difference, refuses one
    beyond the writer's stated bound."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.utils import get_direct_state_dict

    scheme = module.quantization_scheme
    compressor = BaseCompressor.get_value_from_registry(str(scheme.format.value))
    state = _widened(dict(get_direct_state_dict(module)))
    weight = compressor.decompress(state, scheme)["weight"].float()
    expected = qw.dequantize().to(weight.device)
    diff = (weight - expected).abs()
    bound = writer_for(qw).bound(qw)  # type: ignore[union-attr]
    if weight.shape != expected.shape or bool((diff > bound).any()):
        raise ExportError(
            f"layer {name}: compressed-tensors reads back other weights than lowbit evaluated "
            f"(largest difference {float(diff.max()):.3g}); this is a bug, please report it "
            "with the plan"
        )
    return float(diff.max()) if diff.numel() else 0.0
