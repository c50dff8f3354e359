"""Export to compressed-tensors (the layout llm-compressor writes and vLLM loads), through the
``compressed-tensors`` library itself.

Each distinct scheme of the plan becomes one config group whose targets are the exact layer
names; the weights are packed by the library's ``pack-quantized`` compressor from the
dequantized weights and lowbit's own scales and zero points, and the packed codes are then
unpacked again and checked against lowbit's codes, so the export holds exactly the evaluated
weights. compressed-tensors codes are signed for every integer scheme: an asymmetric code q with
zero point z is stored as q - 2^(b-1) with zero point z - 2^(b-1), which dequantizes to the
same (q - z)·s.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from lowbit._io import atomic_dir
from lowbit.errors import ExportError
from lowbit.export.card import write_card
from lowbit.export.common import (
    WRITABLE,
    ExportInput,
    ExportOptions,
    ExportReport,
    Target,
    check_fused,
    predicted_bytes,
    refuse,
    scheme_of,
)
from lowbit.formats import IntFormat, PerChannel, PerGroup, QuantizedWeight
from lowbit.models.files import copy_model_files

VLLM_BITS = (4, 8)  # weight-only integer widths vLLM's compressed-tensors kernels serve


def write_compressed_tensors(inp: ExportInput, out: Path, opts: ExportOptions) -> ExportReport:
    """Write ``inp`` to the directory ``out``. The dense model in ``inp`` is consumed (its
    linear layers are compressed in place)."""
    start = time.perf_counter()
    qm = inp.qm
    problems = {n: why for n, qw in qm.weights.items() if (why := _unsupported(qw))}
    if problems:
        raise refuse(
            Target.COMPRESSED_TENSORS,
            problems,
            "Quantize those layers with act-order 'static' or 'off' and a group size that "
            "divides their input width, or keep them in full precision",
        )
    _check_expert_names(qm)
    notes = check_fused(qm, opts, "vLLM") + _serving_notes(qm)
    compressor = _compress(inp.model, qm)
    kept_error = _cast_kept(inp.model, getattr(torch, opts.dtype))
    with atomic_dir(Path(out), overwrite=opts.overwrite) as tmp:
        copy_model_files(qm.handle.path, tmp)  # tokenizer; config is written below
        inp.model.save_pretrained(tmp, safe_serialization=True)
        compressor.update_config(str(tmp))
        report = ExportReport(
            Target.COMPRESSED_TENSORS.value,
            Path(out),
            {},
            {n: scheme_of(qm.weights.get(n)) for n in [*qm.weights, *qm.kept]},
            0.0,
            predicted_bytes(qm, opts.dtype),
            notes=notes,
            kept_max_error=kept_error,
        )
        write_card(tmp, inp, report)
        report.files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
    report.seconds = time.perf_counter() - start
    return report


def _unsupported(qw: QuantizedWeight) -> str | None:
    if not isinstance(qw.fmt, IntFormat):
        return (
            f"format {qw.fmt.name} is not an integer format; this exporter writes integer "
            "weights only (MX, NVFP4, FP and codebook formats are not exported yet)"
        )
    if qw.perm is not None:
        return (
            "GPTQ act-order 'group' saved a column permutation, which compressed-tensors "
            "(0.20 and later) does not store"
        )
    in_f = qw.shape[1]
    if isinstance(qw.granularity, PerGroup) and in_f % qw.granularity.size:
        return f"group size {qw.granularity.size} does not divide its {in_f} input columns"
    return None


def _serving_notes(qm: Any) -> list[str]:
    odd = sorted({qw.fmt.bits for qw in qm.weights.values()} - set(VLLM_BITS))
    if not odd:
        return []
    return [
        f"vLLM serves 4- and 8-bit integer weights only; this export also has "
        f"{', '.join(f'{b}-bit' for b in odd)} layers (transformers can still load it)"
    ]


def _quantization_args(qw: QuantizedWeight) -> Any:
    from compressed_tensors.quantization import QuantizationArgs

    if isinstance(qw.granularity, PerGroup):
        strategy, group_size = "group", qw.granularity.size
    else:
        strategy = "channel" if isinstance(qw.granularity, PerChannel) else "tensor"
        group_size = None
    return QuantizationArgs(
        num_bits=qw.fmt.bits,
        type="int",
        symmetric=qw.fmt.symmetric,
        strategy=strategy,
        group_size=group_size,
        scale_dtype=qw.fmt.torch_scale_dtype,
    )


def quantization_config(qm: Any) -> Any:
    """One config group per distinct scheme, targeting exact layer names."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme

    by_scheme: dict[tuple[str, str], list[str]] = {}
    for name, qw in qm.weights.items():
        by_scheme.setdefault((scheme_of(qw), qw.fmt.scale_dtype), []).append(name)
    groups = {
        f"group_{i}": QuantizationScheme(
            targets=names, weights=_quantization_args(qm.weights[names[0]])
        )
        for i, names in enumerate(by_scheme.values())
    }
    return QuantizationConfig(config_groups=groups, ignore=[*qm.kept, "lm_head"])


def _check_expert_names(qm: Any) -> None:
    """Experts are written per expert under lowbit's names (``experts.{e}.gate_proj``), which
    are the checkpoint's own for Qwen-MoE and DeepSeek; a checkpoint that names its experts
    otherwise (Mixtral's w1/w2/w3, GPT-OSS's fused tensors) would not load in vLLM."""
    stored = qm.handle.weights().keys()
    arch = qm.handle.arch
    for i, block in enumerate(arch.blocks):
        for path in block.experts:
            first = f"{arch.blocks_path}.{i}.{path}.0.down_proj"
            if f"{first}.weight" not in stored:
                raise ExportError(
                    f"{qm.handle.source}: its experts are stored under other names than "
                    f"lowbit's ({first}.weight is not in the checkpoint: e.g. Mixtral's "
                    "w1/w2/w3, GPT-OSS's fused tensors); exporting them to compressed-tensors "
                    "under the checkpoint's names is not supported yet: export a Qwen-MoE or "
                    "DeepSeek-style model, or evaluate this one in lowbit"
                )


def _compress(model: Any, qm: Any) -> Any:
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config

    apply_quantization_config(model, quantization_config(qm), show_progress=False)
    with torch.no_grad():
        for name, qw in qm.weights.items():
            module = model.get_submodule(name)
            module.weight.data = qw.dequantize().to(module.weight.dtype)
            module.weight_scale.data = qw.scale.reshape(module.weight_scale.shape).to(
                qw.fmt.torch_scale_dtype
            )
            if qw.zero is not None:
                zero = qw.zero.to(torch.int32) - 2 ** (qw.fmt.bits - 1)
                module.weight_zero_point.data = zero.reshape(module.weight_zero_point.shape).to(
                    module.weight_zero_point.dtype
                )
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    _quiet(compressor.compress_model, model)
    for name, qw in qm.weights.items():
        _verify_codes(name, model.get_submodule(name), qw)
    return compressor


def _verify_codes(name: str, module: Any, qw: QuantizedWeight) -> None:
    """The packed codes must be lowbit's codes (shifted to the signed range)."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    bits = qw.fmt.bits
    shift = 0 if qw.fmt.symmetric else 2 ** (bits - 1)
    codes = unpack_from_int32(module.weight_packed, bits, torch.Size(qw.shape)).to(torch.int16)
    if not torch.equal(codes + shift, qw.codes.to(torch.int16)):
        raise ExportError(
            f"layer {name}: compressed-tensors packed different codes than lowbit evaluated; "
            "this is a bug, please report it with the plan"
        )


def _cast_kept(model: Any, dtype: torch.dtype) -> float:
    """Cast the floating-point tensors kept in full precision (scales stay as stored); returns
    the largest change."""
    error = 0.0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.is_floating_point() and not name.endswith(("_scale", "_zero_point")):
                cast = param.data.to(dtype)
                error = max(error, float((cast.float() - param.data.float()).abs().max()))
                param.data = cast
    model.config.dtype = dtype
    return error


def _quiet(fn: Any, *args: Any) -> Any:
    """Run a compressed-tensors call without its tqdm bars (lowbit shows its own progress)."""
    import os

    old = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        return fn(*args)
    finally:
        if old is None:
            os.environ.pop("TQDM_DISABLE")
        else:
            os.environ["TQDM_DISABLE"] = old


WRITABLE.register(Target.COMPRESSED_TENSORS.value, _unsupported)
