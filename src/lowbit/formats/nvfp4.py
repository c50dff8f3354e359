"""NVFP4 (NVIDIA ModelOpt, compressed-tensors ``nvfp4``): FP4 E2M1 elements in blocks of 16
input columns, one FP8 E4M3 scale per block and one fp32 scale per tensor.

global = absmax(W) / (448 · 6); block scale s_b = fp8_e4m3(absmax(block) / (6 · global));
element = fp4(x / (s_b · global)); x̂ = fp4 value · s_b · global. ``tensor_scale`` holds
``global`` as a multiplier (compressed-tensors stores its reciprocal, 448·6 / absmax).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.formats.floating import FP4_E2M1, FP8_E4M3
from lowbit.formats.granularity import Granularity
from lowbit.formats.scaling import columns, require_group, scale_bits_per_weight
from lowbit.formats.tensor import TENSOR_SCALE_BITS, QuantizedWeight, granularity_label

NVFP4_BLOCK = 16


@dataclass(frozen=True)
class NVFP4Format:
    """NVFP4: FP4 E2M1 in blocks of 16 with FP8 E4M3 block scales and one fp32 tensor scale."""

    name = "nvfp4"
    bits = 4
    scale_bits = 8
    symmetric = True
    signed_codes = False

    def bits_per_weight(
        self, in_features: int, granularity: Granularity, out_features: int = 1
    ) -> float:
        self.check_granularity(granularity)
        blocks = scale_bits_per_weight(8, in_features, granularity, out_features)
        return self.bits + blocks + TENSOR_SCALE_BITS / (in_features * out_features)

    def check_granularity(self, granularity: Granularity) -> None:
        require_group(self.name, granularity, NVFP4_BLOCK, "NVIDIA NVFP4")

    def describe(self, granularity: Granularity) -> str:
        return f"NVFP4 {granularity_label(granularity)}"

    def encode(
        self, W: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, granularity: Granularity
    ) -> QuantizedWeight:
        """``lo``/``hi`` clip the blocks; the tensor scale always covers the whole tensor."""
        return self.encode_with_tensor_scale(W, lo, hi, granularity, nvfp4_tensor_scale(W))

    def encode_with_tensor_scale(
        self,
        W: torch.Tensor,
        lo: torch.Tensor,
        hi: torch.Tensor,
        granularity: Granularity,
        global_scale: torch.Tensor,
    ) -> QuantizedWeight:
        """:meth:`encode` with the fp32 tensor scale ``global_scale`` (a 0-d tensor) given, as
        when the blocks of one tensor are encoded apart (GPTQ chooses them one at a time)."""
        W = W.float()
        block_amax = torch.maximum(lo.abs(), hi.abs())
        block_scale = FP8_E4M3.round(block_amax / (FP4_E2M1.max_value * global_scale))
        step = columns(block_scale, granularity, W.shape[1]) * global_scale
        codes = FP4_E2M1.to_codes(torch.where(step > 0, W / step.clamp(min=1e-38), 0.0))
        return QuantizedWeight(
            codes,
            block_scale.to(torch.float8_e4m3fn),
            None,
            self,
            granularity,
            tensor_scale=global_scale.float(),
        )

    def decode(self, qw: QuantizedWeight) -> torch.Tensor:
        if qw.tensor_scale is None:
            raise ValueError("an NVFP4 weight needs its fp32 tensor_scale")
        step = columns(qw.scale.float(), qw.granularity, qw.shape[1]) * qw.tensor_scale.float()
        return FP4_E2M1.from_codes(qw.codes) * step


def nvfp4_tensor_scale(W: torch.Tensor) -> torch.Tensor:
    """absmax(W) / (448 · 6) as a 0-d fp32 tensor (1 for an all-zero tensor)."""
    tensor_amax = W.float().abs().amax()
    return torch.where(
        tensor_amax > 0, tensor_amax / (FP8_E4M3.max_value * FP4_E2M1.max_value), 1.0
    ).reshape(())
