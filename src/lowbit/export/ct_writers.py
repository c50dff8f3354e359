"""How each lowbit weight format is written to compressed-tensors: the library's compression
format, its ``QuantizationArgs``, the module parameters its compressor reads, and how closely
the library's own decompression must give back lowbit's dequantized weight.

A writer is looked up by the format's type (:data:`WRITERS`); a format without one is refused
by name with the list of what is supported. Formats and their compressors:

- INT (``IntFormat``) → ``pack-quantized`` (weight-only) or ``int-quantized`` (with 8-bit
  activations): codes shifted to the signed range, scale in the format's scale dtype;
- FP8 E4M3 (``FloatFormat(4, 3)``, per tensor / channel / group) → ``float-quantized``: the
  weight stored as ``float8_e4m3fn`` with one float scale per tensor, row or group of columns;
- NVFP4 → ``nvfp4-pack-quantized``: FP4 E2M1 codes two per byte, FP8 E4M3 scales per 16
  columns and ``weight_global_scale`` = 1 / lowbit's ``tensor_scale`` (448·6 / absmax);
- MXFP4 (``MXFormat('fp4_e2m1')``) → ``mxfp4-pack-quantized``: FP4 codes and E8M0 scale bytes.

Read-back bounds (``bound``: the largest allowed |decompressed - evaluated| per element):
0 for INT and FP8 (products of a few-bit code and a float scale are exact in fp32, where the
check decompresses: scales are widened to fp32 first); 0 for MXFP4 (FP4 × 2^k is exact in
bfloat16, the dtype the library unpacks to); for NVFP4 the library unpacks to bfloat16 and
divides the block scale by the fp32 global scale (a reciprocal of lowbit's multiplier), so each
element is within 2^-8 of its own magnitude (one bfloat16 rounding, 2^-9, plus the reciprocal's
2^-24): far below the step between FP4 values (≥ 1/3 of the smaller) or FP8 scales (≥ 1/16), so
any different code or block scale fails the check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lowbit.formats import (
    FloatFormat,
    IntFormat,
    MXFormat,
    NVFP4Format,
    PerChannel,
    PerGroup,
    QuantizedWeight,
)

NVFP4_RELATIVE_BOUND = 2.0**-8


@dataclass(frozen=True)
class Writer:
    """``compression``: the compressed-tensors format name; ``check``: why a weight of this
    format cannot be written (None when it can); ``args``: its QuantizationArgs;
    ``params``: the values of the module's quantization parameters; ``bound``: the allowed
    read-back error per element; ``with_inputs``: the compression format when the layers'
    input activations are quantized too (None: this format cannot carry them)."""

    compression: str
    with_inputs: str | None
    supported: str
    check: Callable[[QuantizedWeight], str | None]
    args: Callable[[QuantizedWeight], Any]
    params: Callable[[QuantizedWeight], dict[str, torch.Tensor]]
    bound: Callable[[QuantizedWeight], torch.Tensor | float]


def _strategy(qw: QuantizedWeight) -> dict[str, Any]:
    g = qw.granularity
    if isinstance(g, PerGroup):
        return {"strategy": "group", "group_size": g.size}
    return {"strategy": "channel" if isinstance(g, PerChannel) else "tensor"}


def _divides(qw: QuantizedWeight) -> str | None:
    g, in_f = qw.granularity, qw.shape[1]
    if isinstance(g, PerGroup) and in_f % g.size:
        return f"group size {g.size} does not divide its {in_f} input columns"
    return None


def _args(**kw: Any) -> Any:
    from compressed_tensors.quantization import QuantizationArgs

    return QuantizationArgs(**kw)


# INT -------------------------------------------------------------------------------------------
def _int_args(qw: QuantizedWeight) -> Any:
    fmt = qw.fmt
    return _args(
        num_bits=fmt.bits,
        type="int",
        symmetric=fmt.symmetric,
        scale_dtype=fmt.torch_scale_dtype,
        **_strategy(qw),
    )


def _int_params(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    out = {"weight_scale": qw.scale.to(qw.fmt.torch_scale_dtype)}
    if qw.zero is not None:  # signed codes: zero point z - 2^(b-1)
        out["weight_zero_point"] = qw.zero.to(torch.int32) - 2 ** (qw.fmt.bits - 1)
    return out


# FP8 -------------------------------------------------------------------------------------------
def _fp8_check(qw: QuantizedWeight) -> str | None:
    if (qw.fmt.exponent_bits, qw.fmt.mantissa_bits) != (4, 3):
        return (
            f"format {qw.fmt.name}: compressed-tensors' float-quantized layout stores FP8 "
            "E4M3 (float8_e4m3fn) only"
        )
    return _divides(qw)


def _fp8_args(qw: QuantizedWeight) -> Any:
    scale_dtype = qw.fmt.torch_scale_dtype
    return _args(num_bits=8, type="float", symmetric=True, scale_dtype=scale_dtype, **_strategy(qw))


def _scale_only(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    return {"weight_scale": qw.scale.to(qw.fmt.torch_scale_dtype)}


# NVFP4 / MXFP4 --------------------------------------------------------------------------------
def _nvfp4_args(qw: QuantizedWeight) -> Any:
    from compressed_tensors.quantization.quant_scheme import NVFP4A16

    return NVFP4A16["weights"].model_copy()


def _nvfp4_params(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    if qw.tensor_scale is None:
        raise ValueError("an NVFP4 weight needs its fp32 tensor_scale")
    return {
        "weight_scale": qw.scale.float(),  # FP8 values; the compressor stores them as FP8
        "weight_global_scale": (1.0 / qw.tensor_scale.float()).reshape(1),
    }


def _nvfp4_bound(qw: QuantizedWeight) -> torch.Tensor:
    return qw.dequantize().abs() * NVFP4_RELATIVE_BOUND


def _mx_check(qw: QuantizedWeight) -> str | None:
    if qw.fmt.element != "fp4_e2m1":
        return (
            f"format {qw.fmt.name}: compressed-tensors {_ct_version()} has MX compressors for "
            "MXFP4, MXFP6 and MXFP8 but vLLM and this exporter take MXFP4 only; use mxfp4"
        )
    return None


def _mxfp4_args(qw: QuantizedWeight) -> Any:
    from compressed_tensors.quantization.quant_scheme import MXFP4A16

    return MXFP4A16["weights"].model_copy()


def _mx_params(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    from lowbit.formats.microscaling import e8m0_decode

    # the library stores its float scale as 127 + floor(log2(scale)): give it lowbit's 2^k
    return {"weight_scale": e8m0_decode(qw.scale)}


def _ct_version() -> str:
    import compressed_tensors

    return compressed_tensors.__version__


def _no_problem(qw: QuantizedWeight) -> str | None:
    return None


def _exact(qw: QuantizedWeight) -> float:
    return 0.0


WRITERS: dict[type, Writer] = {
    IntFormat: Writer(
        compression="pack-quantized",
        with_inputs="int-quantized",
        supported="int2…int8 per tensor/channel/group",
        check=_divides,
        args=_int_args,
        params=_int_params,
        bound=_exact,
    ),
    FloatFormat: Writer(
        compression="float-quantized",
        with_inputs="float-quantized",
        supported="fp8_e4m3 per tensor/channel/group",
        check=_fp8_check,
        args=_fp8_args,
        params=_scale_only,
        bound=_exact,
    ),
    NVFP4Format: Writer(
        compression="nvfp4-pack-quantized",
        with_inputs=None,
        supported="nvfp4 (group 16)",
        check=_no_problem,
        args=_nvfp4_args,
        params=_nvfp4_params,
        bound=_nvfp4_bound,
    ),
    MXFormat: Writer(
        compression="mxfp4-pack-quantized",
        with_inputs=None,
        supported="mxfp4 (group 32)",
        check=_mx_check,
        args=_mxfp4_args,
        params=_mx_params,
        bound=_exact,
    ),
}


def supported() -> str:
    return "; ".join(w.supported for w in WRITERS.values())


def writer_for(qw: QuantizedWeight) -> Writer | None:
    return WRITERS.get(type(qw.fmt))


def problem(qw: QuantizedWeight) -> str | None:
    """Why ``qw`` cannot be written (None when it can)."""
    writer = writer_for(qw)
    if writer is None:
        return f"format {qw.fmt.name} has no compressed-tensors writer (supported: {supported()})"
    if qw.perm is not None:
        return (
            "GPTQ act-order 'group' saved a column permutation, which compressed-tensors "
            "(0.20 and later) does not store"
        )
    return writer.check(qw)
