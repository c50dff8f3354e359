"""Export to GGUF (llama.cpp, Ollama) through the ``gguf`` library.

INT4 group-32 layers become Q4_0 (symmetric) or Q4_1 (asymmetric) blocks and INT8 group-32
symmetric layers Q8_0 blocks, built from lowbit's own codes and scales (see
:mod:`lowbit.export.gguf_blocks`), so GPTQ-optimised weights reach llama.cpp unchanged. Layers
in a GGML format (Q4_K, Q5_K, Q6_K, or the Q5_0/Q5_1/Q8_0 a k-quant falls back to where a row
is not a multiple of 256) are written as the type they were evaluated in, their parameter
bytes as stored (:mod:`lowbit.export.gguf_kblocks`); each fallback is named in the report. Every
other tensor is stored as F32 (or F16/BF16 for 2-D tensors when asked). Tensor names and the
Llama q/k row order follow llama.cpp's converter; metadata is copied from the source GGUF when
the model came from one (the tokenizer with its pre-tokenizer name), else built from the config
and the tokenizer files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lowbit import __version__
from lowbit._io import atomic_path
from lowbit.errors import ExportError
from lowbit.export import gguf_blocks, gguf_kblocks, gguf_meta
from lowbit.export.common import (
    WRITABLE,
    ExportInput,
    ExportOptions,
    ExportReport,
    Target,
    predicted_bytes,
    refuse,
)
from lowbit.formats import GGMLFormat, IntFormat, PerGroup, QuantizedWeight

# model_type → (GGUF architecture, whether llama.cpp reorders the q/k rows)
ARCHES = {"llama": ("llama", True), "mistral": ("llama", True), "qwen3": ("qwen3", False)}


def gguf_type_name(qw: QuantizedWeight) -> str | None:
    """The GGML block type ``qw`` maps onto exactly (Q4_1: up to the fp16 minimum), or None."""
    if isinstance(qw.fmt, GGMLFormat):  # stored as ggml's own blocks
        return None if qw.perm is not None else qw.fmt.kind.upper()
    if not isinstance(qw.fmt, IntFormat):  # FP4/NF4 are 4-bit too, but not Q4_0's grid
        return None
    if qw.perm is not None or qw.granularity != PerGroup(gguf_blocks.BLOCK):
        return None
    if qw.fmt.scale_dtype != "float16" or qw.shape[1] % gguf_blocks.BLOCK:
        return None
    return {(4, True): "Q4_0", (4, False): "Q4_1", (8, True): "Q8_0"}.get(
        (qw.fmt.bits, qw.fmt.symmetric)
    )


def _why_not(qw: QuantizedWeight) -> str:
    if qw.perm is not None:
        return "GPTQ act-order 'group' saved a column permutation; GGUF blocks have none"
    if not isinstance(qw.fmt, IntFormat):
        return (
            f"{qw.fmt.name}: not an integer format (nor a GGML one); GGUF export writes "
            "Q4_0/Q4_1/Q8_0 from integers and the GGML formats (q4_k, q5_k, q6_k, q5_0, q5_1, "
            "q8_0) as they are"
        )
    if qw.fmt.scale_dtype != "float16":
        return f"scales in {qw.fmt.scale_dtype}; GGUF blocks store fp16 scales"
    if qw.granularity != PerGroup(gguf_blocks.BLOCK) or qw.shape[1] % gguf_blocks.BLOCK:
        return f"{qw.granularity.describe()}; GGUF's Q4_0/Q4_1/Q8_0 use groups of 32"
    return f"{qw.fmt.name}: no GGUF type (INT4 → Q4_0/Q4_1, symmetric INT8 → Q8_0)"


def write_gguf(inp: ExportInput, out: Path, opts: ExportOptions) -> ExportReport:
    """Write ``inp`` to the single file ``out`` (written under a temporary name, then renamed)."""
    import gguf

    start = time.perf_counter()
    qm, config = inp.qm, inp.qm.handle.config
    if config.model_type not in ARCHES:
        raise ExportError(
            f"GGUF export supports model types {', '.join(ARCHES)}, not {config.model_type!r}; "
            "export to compressed-tensors instead"
        )
    problems = {n: _why_not(qw) for n, qw in qm.weights.items() if gguf_type_name(qw) is None}
    if problems:
        raise refuse(
            Target.GGUF,
            problems,
            "Quantize those layers as INT4 group 32 (symmetric → Q4_0, asymmetric → Q4_1) or "
            "symmetric INT8 group 32 (→ Q8_0), or in a GGML format (q4_k, q5_k, q6_k), without "
            "GPTQ act-order 'group', or keep them in full precision",
        )
    arch, reorder = ARCHES[config.model_type]
    tensors, layers, max_error, kept_error = _tensors(inp, arch, reorder, opts.dtype)
    with atomic_path(Path(out), overwrite=opts.overwrite) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        notes = gguf_meta.add_metadata(writer, qm.handle, arch, _file_type(layers, opts.dtype))
        writer.add_string("general.quantized_by", f"lowbit {__version__}")
        writer.add_string("lowbit.plan", json.dumps(qm.plan.to_dict()))
        for name, (data, raw_type) in tensors.items():
            writer.add_tensor(name, data, raw_dtype=raw_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    if any(t == "Q4_1" for t in layers.values()):
        extra = 5.0 - (4 + (16 + 4) / gguf_blocks.BLOCK)  # Q4_1 block vs lowbit's uint4 g32
        notes.append(
            "Q4_1 stores each block's minimum as fp16 where lowbit has a 4-bit zero point: "
            f"{extra:.3g} bits per weight more, weights differ by at most {max_error:.3g}"
        )
    notes.extend(_fallback_notes(qm, layers))
    report = ExportReport(
        Target.GGUF.value,
        Path(out),
        {Path(out).name: Path(out).stat().st_size},
        layers,
        max_error,
        predicted_bytes(qm, opts.dtype),
        time.perf_counter() - start,
        notes,
        kept_error,
    )
    return report


def _tensors(
    inp: ExportInput, arch: str, reorder: bool, dtype: str
) -> tuple[dict[str, tuple[np.ndarray, Any]], dict[str, str], float, float]:
    import gguf

    qm, config = inp.qm, inp.qm.handle.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    heads = {"attn_q": config.num_attention_heads}
    heads["attn_k"] = getattr(config, "num_key_value_heads", None) or heads["attn_q"]
    tensors: dict[str, tuple[np.ndarray, Any]] = {}
    layers: dict[str, str] = {}
    max_error = kept_error = 0.0
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for key, value in inp.model.state_dict().items():
        if tied and key == "lm_head.weight":
            continue
        target = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ExportError(
                f"tensor {key} has no place in llama.cpp's {arch} layout; export this model "
                "to compressed-tensors instead"
            )
        module = key.rsplit(".", 1)[0]
        n_head = heads.get(target.split(".")[-2]) if reorder else None
        if module in qm.weights and key.endswith(".weight"):
            data, raw, err = _quantized(qm.weights[module], n_head)
            layers[module], max_error = raw.name, max(max_error, err)
        else:
            data, raw, err = _dense(value, dtype, n_head)
            kept_error = max(kept_error, err)
            if module in qm.kept:
                layers[module] = raw.name
        tensors[target] = (data, raw)
    return tensors, layers, max_error, kept_error


def _quantized(qw: QuantizedWeight, n_head: int | None) -> tuple[np.ndarray, Any, float]:
    """The blocks of ``qw`` and the largest difference between what they dequantize to (read
    back with the gguf library) and the weight lowbit evaluated."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    kind = gguf_type_name(qw)
    ggml = isinstance(qw.fmt, GGMLFormat)  # scale: ggml's parameter bytes
    codes, scale = qw.codes.numpy(), (qw.scale if ggml else qw.scale.float()).numpy()
    zero = None if qw.zero is None else qw.zero.numpy()
    want = qw.dequantize().numpy()
    if n_head is not None:
        codes, scale = (
            gguf_blocks.permute_rows(codes, n_head),
            gguf_blocks.permute_rows(scale, n_head),
        )
        zero = None if zero is None else gguf_blocks.permute_rows(zero, n_head)
        want = gguf_blocks.permute_rows(want, n_head)
    if ggml:
        data = gguf_kblocks.ggml_blocks(qw.fmt.kind, codes, scale)
        raw = GGMLQuantizationType[kind]
    elif kind == "Q4_0":
        data, raw = gguf_blocks.q4_0(codes, scale), GGMLQuantizationType.Q4_0
    elif kind == "Q8_0":
        data, raw = gguf_blocks.q8_0(codes, scale), GGMLQuantizationType.Q8_0
    else:
        data, raw = gguf_blocks.q4_1(codes, scale, zero)[0], GGMLQuantizationType.Q4_1
    error = float(np.abs(dequantize(data, raw) - want).max(initial=0.0))
    return data, raw, error


def _dense(value: torch.Tensor, dtype: str, n_head: int | None) -> tuple[np.ndarray, Any, float]:
    """A kept tensor (F32; 2-D ones in F16/BF16 when asked) and its largest cast error."""
    from gguf import GGMLQuantizationType

    x = value.detach().float()
    if n_head is not None:
        x = torch.from_numpy(gguf_blocks.permute_rows(x.numpy(), n_head))
    if x.dim() < 2 or dtype == "float32":
        return x.numpy(), GGMLQuantizationType.F32, 0.0
    if dtype == "float16":
        error = float((x.half().float() - x).abs().max())
        return x.half().numpy(), GGMLQuantizationType.F16, error
    error = float((x.bfloat16().float() - x).abs().max())
    raw = x.bfloat16().view(torch.int16).numpy().view(np.uint8).reshape(x.shape[0], -1)
    return raw, GGMLQuantizationType.BF16, error


_KQUANT_FILE_TYPES = {"Q4_K": "MOSTLY_Q4_K_S", "Q5_K": "MOSTLY_Q5_K_S", "Q6_K": "MOSTLY_Q6_K"}


def _fallback_notes(qm: Any, layers: dict[str, str]) -> list[str]:
    """One note per (asked type, written type) pair where a k-quant fell back by name."""
    fell: dict[tuple[str, str], list[str]] = {}
    for name, written in layers.items():
        spec = qm.plan.spec_for(name)
        if spec is None or not isinstance(spec.fmt, GGMLFormat):
            continue
        asked = spec.fmt.kind.upper()
        if asked != written:
            fell.setdefault((asked, written), []).append(name)
    return [
        f"{len(names)} layer(s) asked as {asked} were written as {written} (llama.cpp's fallback "
        f"by name: rows not a multiple of 256), e.g. {names[0]}"
        for (asked, written), names in sorted(fell.items())
    ]


def _file_type(layers: dict[str, str], dtype: str) -> int:
    from gguf import LlamaFileType

    quantized = [t for t in layers.values() if t.startswith("Q")]
    kquants = [t for t in quantized if t.endswith("_K")]
    if kquants:  # llama.cpp names a k-quant mix by its k-quant, whatever fell back
        most = max(set(kquants), key=kquants.count)
        return int(LlamaFileType[_KQUANT_FILE_TYPES[most]])
    if quantized:
        most = max(set(quantized), key=quantized.count)
        return int(LlamaFileType[f"MOSTLY_{most}"])
    dense = {"float32": "ALL_F32", "float16": "MOSTLY_F16", "bfloat16": "MOSTLY_BF16"}
    return int(LlamaFileType[dense[dtype]])


def _writable(qw: QuantizedWeight) -> str | None:
    return None if gguf_type_name(qw) is not None else _why_not(qw)


WRITABLE.register(Target.GGUF.value, _writable)
