"""The input activations of a W8A8 export to compressed-tensors: lowbit's activation spec as
the library's ``QuantizationArgs`` and, for static scales, the ``input_scale`` of each layer
(lowbit's calibrated threshold / the format's largest code, exactly the scale lowbit applied).

Representable: INT8 (symmetric, or asymmetric when dynamic) and FP8 E4M3, per token (dynamic)
or per tensor (dynamic or static); vLLM runs fused q/k/v and gate/up on one input scale, so
static thresholds of a fused group must be equal (they are when calibrated on the shared
input, as lowbit does).
"""

from __future__ import annotations

from typing import Any

import torch

from lowbit.algorithms.activation_specs import ActGranularity, ActivationSpec
from lowbit.formats import FloatFormat, IntFormat
from lowbit.formats.activation import symmetric_scale


def input_problem(spec: ActivationSpec) -> str | None:
    """Why compressed-tensors cannot carry ``spec`` (None when it can)."""
    fmt = spec.fmt
    if isinstance(fmt, IntFormat) and fmt.bits == 8:
        return None
    if isinstance(fmt, FloatFormat) and (fmt.exponent_bits, fmt.mantissa_bits) == (4, 3):
        return None
    return (
        f"activation format {fmt.name} is not one compressed-tensors' W8A8 schemes carry; "
        "use int8 or fp8_e4m3 activations"
    )


def input_args(spec: ActivationSpec) -> Any:
    from compressed_tensors.quantization import QuantizationArgs

    per_token = spec.granularity is ActGranularity.PER_TOKEN
    return QuantizationArgs(
        num_bits=8,
        type="int" if isinstance(spec.fmt, IntFormat) else "float",
        symmetric=spec.fmt.symmetric,
        strategy="token" if per_token else "tensor",
        dynamic=spec.dynamic,
    )


def input_scale(spec: ActivationSpec, threshold: float) -> torch.Tensor:
    """The static scale lowbit applied to a layer's input: threshold / largest code, fp32."""
    return symmetric_scale(torch.tensor(threshold, dtype=torch.float32), spec.fmt).reshape(1)


def unequal_fused_thresholds(groups: list[list[str]], thresholds: dict[str, float]) -> list[str]:
    """One line per fused group whose members' static thresholds differ."""
    lines = []
    for members in groups:
        values = {m: thresholds[m] for m in members if m in thresholds}
        if len(set(values.values())) > 1:
            lines.append(", ".join(f"{m} {v:.6g}" for m, v in values.items()))
    return lines
