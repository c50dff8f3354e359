"""Export to compressed-tensors (the layout llm-compressor writes and vLLM loads), through the
``compressed-tensors`` library itself.

Each distinct scheme of the plan becomes one config group whose targets are the exact layer
names; the weights are compressed by the library's own compressor for their format (INT
``pack-quantized`` / ``int-quantized``, FP8 ``float-quantized``, ``nvfp4-pack-quantized``,
``mxfp4-pack-quantized``: see :mod:`lowbit.export.ct_writers`) from the dequantized weights and
lowbit's own scales, and every layer is then decompressed again by the library and compared with
the evaluated weight, so the export holds exactly the evaluated weights (NVFP4 within the bound
stated there). A plan with activations (W8A8) writes them as the layers' input_activations
(:mod:`lowbit.export.ct_inputs`). compressed-tensors codes are signed for every integer
scheme: an asymmetric code q with zero point z is stored as q - 2^(b-1) with zero point
z - 2^(b-1), which dequantizes to the same (q - z)·s.
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
from lowbit.export.ct_checks import check_inputs, check_shared_global_scales, read_back
from lowbit.export.ct_inputs import input_args, input_scale
from lowbit.export.ct_writers import problem, writer_for
from lowbit.formats import FloatFormat, IntFormat, PerGroup, QuantizedWeight
from lowbit.models.files import copy_model_files

VLLM_BITS = (4, 8)  # weight-only integer widths vLLM's compressed-tensors kernels serve


def write_compressed_tensors(inp: ExportInput, out: Path, opts: ExportOptions) -> ExportReport:
    """Write ``inp`` to the directory ``out``. The dense model in ``inp`` is consumed (its
    linear layers are compressed in place)."""
    start = time.perf_counter()
    qm = inp.qm
    problems = {n: why for n, qw in qm.weights.items() if (why := problem(qw))}
    if problems:
        raise refuse(
            Target.COMPRESSED_TENSORS,
            problems,
            "Quantize those layers in a supported format with act-order 'static' or 'off' and "
            "a group size that divides their input width, or keep them in full precision",
        )
    _check_expert_names(qm)
    notes = check_fused(qm, opts, "vLLM") + _serving_notes(qm)
    check_inputs(qm)
    check_shared_global_scales(qm)
    compressor = _compress(inp.model, qm)
    kept_error = _cast_kept(inp.model, getattr(torch, opts.dtype), set(qm.weights))
    error = _read_back(inp.model, qm)
    with atomic_dir(Path(out), overwrite=opts.overwrite) as tmp:
        copy_model_files(qm.handle.path, tmp)  # tokenizer; config is written below
        inp.model.save_pretrained(tmp, safe_serialization=True)
        compressor.update_config(str(tmp))
        report = ExportReport(
            Target.COMPRESSED_TENSORS.value,
            Path(out),
            {},
            {n: scheme_of(qm.weights.get(n)) for n in [*qm.weights, *qm.kept]},
            error,
            predicted_bytes(qm, opts.dtype),
            notes=notes,
            kept_max_error=kept_error,
        )
        write_card(tmp, inp, report)
        report.files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
    report.seconds = time.perf_counter() - start
    return report


def _serving_notes(qm: Any) -> list[str]:
    notes = []
    ints = [qw.fmt for qw in qm.weights.values() if isinstance(qw.fmt, IntFormat)]
    odd = sorted({fmt.bits for fmt in ints} - set(VLLM_BITS))
    if odd:
        notes.append(
            f"vLLM serves 4- and 8-bit integer weights only; this export also has "
            f"{', '.join(f'{b}-bit' for b in odd)} layers (transformers can still load it)"
        )
    fp8_groups = [
        n
        for n, qw in qm.weights.items()
        if isinstance(qw.fmt, FloatFormat) and isinstance(qw.granularity, PerGroup)
    ]
    if fp8_groups:
        notes.append(
            f"{len(fp8_groups)} FP8 layer(s) have one scale per group of input columns (1×G); "
            "vLLM's FP8 schemes take per-tensor, per-channel or 2-D (128×128) block scales, "
            "so this export is for compressed-tensors / transformers, not vLLM"
        )
    return notes


def quantization_config(qm: Any) -> Any:
    """One config group per distinct scheme, targeting exact layer names."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme

    acts = qm.plan.activations
    by_scheme: dict[tuple[str, str], list[str]] = {}
    for name, qw in qm.weights.items():
        scale_dtype = getattr(qw.fmt, "scale_dtype", "")
        by_scheme.setdefault((scheme_of(qw), scale_dtype), []).append(name)
    groups = {}
    for i, names in enumerate(by_scheme.values()):
        qw = qm.weights[names[0]]
        writer = writer_for(qw)
        assert writer is not None  # refused before
        groups[f"group_{i}"] = QuantizationScheme(
            targets=names,
            weights=writer.args(qw),
            input_activations=None if acts is None else input_args(acts),
            format=writer.compression if acts is None else writer.with_inputs,
        )
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
    """Compress every layer with its format's compressor; returns the ModelCompressor."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config

    apply_quantization_config(model, quantization_config(qm), show_progress=False)
    acts = qm.plan.activations
    with torch.no_grad():
        for name, qw in qm.weights.items():
            module = model.get_submodule(name)
            module.weight.data = qw.dequantize().to(module.weight.dtype)
            params = writer_for(qw).params(qw)  # type: ignore[union-attr]
            if acts is not None and not acts.dynamic:
                params["input_scale"] = input_scale(acts, qm.activation_ranges[name])
            for key, value in params.items():
                target = getattr(module, key)
                # scales keep lowbit's dtypes; integer zero points take the library's
                dtype = value.dtype if value.is_floating_point() else target.dtype
                target.data = value.reshape(target.shape).to(dtype)
    compressor = ModelCompressor.from_pretrained_model(model)
    _quiet(compressor.compress_model, model)
    return compressor


def _read_back(model: Any, qm: Any) -> float:
    """Every quantized layer as it will be saved, decompressed by the library and compared
    with the evaluated weight; the largest difference (0.0: bit-exact)."""
    error = 0.0
    for name, qw in qm.weights.items():
        module = model.get_submodule(name)
        if "weight_packed" in dict(module.named_parameters()) and isinstance(qw.fmt, IntFormat):
            _verify_codes(name, module, qw)
        error = max(error, read_back(name, module, qw))
    return error


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


def _cast_kept(model: Any, dtype: torch.dtype, quantized: set[str]) -> float:
    """Cast the floating-point tensors kept in full precision (the quantized layers' weights
    and scales stay as compressed, their biases are cast); returns the largest change."""
    error = 0.0
    with torch.no_grad():
        for name, param in model.named_parameters():
            layer, leaf = name.rsplit(".", 1)
            if param.is_floating_point() and (layer not in quantized or leaf == "bias"):
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


WRITABLE.register(Target.COMPRESSED_TENSORS.value, problem)
