"""lowbit's own saved layout of a quantized model (standard exports come later).

A directory with ``config.json`` and the tokenizer (copied from the source model),
``model.safetensors`` holding every tensor that was not quantized plus, per quantized layer,
``<name>.qcodes`` (codes packed to their bit width), ``<name>.qscale`` (scales in their storage
dtype), ``<name>.qzero`` (packed zero points, asymmetric formats), ``<name>.qperm`` (int32
column permutation, when saved), ``<name>.qtscale`` (fp32 per-tensor scale, NVFP4),
``<name>.qoidx``/``<name>.qoval`` (SqueezeLLM's sparse outliers: int32 flat indices, fp16
values), and ``lowbit.json`` (the plan, each layer's format, static activation thresholds when
the plan has static activation scales, whether a tied head was stored apart, and provenance). A
tied head stored apart and kept in full precision is saved as ``lm_head.weight``. Loading
rebuilds the dense model with the same dequantization used in evaluation, so its logits are
identical.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lowbit._io import atomic_dir
from lowbit.algorithms import RTNConfig
from lowbit.errors import ArtefactError, ModelSourceError
from lowbit.formats import IntFormat, QuantizedWeight
from lowbit.formats.nvfp4 import NVFP4Format
from lowbit.formats.packing import pack_weight, unpack_weight
from lowbit.models.embeddings import HEAD_PATH, read_tensor
from lowbit.models.files import copy_model_files, safetensors_header
from lowbit.models.quantize import QuantizedModel
from lowbit.plan import LayerSpec, Plan

LAYOUT = "lowbit-quantized-v1"
# pack_weight's tensors → their key suffix in model.safetensors
_KEYS = {
    "codes": "qcodes",
    "scale": "qscale",
    "zero": "qzero",
    "perm": "qperm",
    "tensor_scale": "qtscale",
    "outlier_index": "qoidx",
    "outlier_value": "qoval",
}
_QSUFFIXES = tuple(f".{q}" for q in _KEYS.values())


def save_quantized(
    qm: QuantizedModel, out: Path, provenance: dict[str, Any], *, overwrite: bool = False
) -> Path:
    """Write ``qm`` to the directory ``out`` atomically."""
    from safetensors.torch import save_file

    tensors = _unquantized_tensors(qm)
    layers: dict[str, Any] = {}
    for name, qw in qm.weights.items():
        tensors.update(_packed(name, qw))
        layers[name] = _layer_meta(qw)
    if qm.untied_head and HEAD_PATH not in qm.weights:
        embed = f"{qm.handle.arch.embed_path}.weight"
        tensors[f"{HEAD_PATH}.weight"] = read_tensor(qm.handle, embed).contiguous()
    manifest = {
        "layout": LAYOUT,
        "plan": qm.plan.to_dict(),
        "layers": layers,
        "kept": qm.kept,
        "source": qm.handle.describe(),
        "provenance": provenance,
    }
    if qm.activation_ranges:
        manifest["activation_ranges"] = dict(qm.activation_ranges)
    if qm.untied_head:
        manifest["untied_head"] = True
    with atomic_dir(Path(out), overwrite=overwrite) as tmp:
        copy_model_files(qm.handle.path, tmp)
        save_file(
            tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", "layout": LAYOUT}
        )
        (tmp / "lowbit.json").write_text(json.dumps(manifest, indent=2, default=str))
    return Path(out)


def is_quantized_dir(path: Path) -> bool:
    return (Path(path) / "lowbit.json").is_file()


def load_quantized(path: Path) -> tuple[Any, dict[str, QuantizedWeight], dict[str, Any]]:
    """The dense fake-quantized model, its quantized weights, and the manifest."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    manifest = _manifest(path)
    config = AutoConfig.from_pretrained(path)
    if manifest.get("untied_head"):
        config.tie_word_embeddings = False
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    weights: dict[str, QuantizedWeight] = {}
    with safe_open(str(path / "model.safetensors"), framework="pt") as reader:
        keys = set(reader.keys())
        for name, meta in manifest["layers"].items():
            weights[name] = _unpacked(name, meta, reader, keys)
        state = {k: reader.get_tensor(k) for k in keys if not k.endswith(_QSUFFIXES)}
    for name, qw in weights.items():
        state[f"{name}.weight"] = qw.dequantize()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not _is_tied(model, m)]
    if missing or unexpected:
        raise ArtefactError(f"{path}: tensors missing {missing[:5]} / unexpected {unexpected[:5]}")
    model.tie_weights()
    return model, weights, manifest


def _manifest(path: Path) -> dict[str, Any]:
    if not (path / "lowbit.json").is_file() or not (path / "model.safetensors").is_file():
        raise ArtefactError(
            f"{path} is not a lowbit quantized model (no lowbit.json / model.safetensors)"
        )
    try:
        manifest = json.loads((path / "lowbit.json").read_text())
    except ValueError as exc:
        raise ArtefactError(f"{path}/lowbit.json is not valid JSON ({exc}); save again") from exc
    if not isinstance(manifest, dict) or manifest.get("layout") != LAYOUT:
        raise ArtefactError(f"{path}/lowbit.json is not a {LAYOUT} manifest; save again")
    missing = [k for k in ("plan", "layers", "source") if k not in manifest]
    if missing:
        raise ArtefactError(f"{path}/lowbit.json lacks {', '.join(missing)}; save again")
    Plan.from_dict(manifest["plan"])  # validates the plan
    try:
        safetensors_header(path / "model.safetensors")
    except ModelSourceError as exc:
        raise ArtefactError(str(exc)) from exc
    return manifest


def _unquantized_tensors(qm: QuantizedModel) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    skip = {f"{name}.weight" for name in qm.weights}
    out: dict[str, torch.Tensor] = {}
    for file in qm.handle.weight_files:
        with safe_open(str(file), framework="pt") as reader:
            for key in reader.keys():
                if key in qm.smoothed:  # a norm or bias that AWQ / SmoothQuant rescaled
                    out[key] = qm.smoothed[key].contiguous()
                elif key not in skip:
                    out[key] = reader.get_tensor(key).contiguous()
    return out


def _packed(name: str, qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    return {f"{name}.{_KEYS[k]}": v for k, v in pack_weight(qw).items()}


def _layer_meta(qw: QuantizedWeight) -> dict[str, Any]:
    spec = LayerSpec(qw.fmt, qw.granularity, RTNConfig())  # the algorithm is not stored
    return {
        "shape": list(qw.shape),
        **{k: v for k, v in spec.to_dict().items() if k != "algorithm"},
    }


def _unpacked(name: str, meta: dict[str, Any], reader: Any, keys: set[str]) -> QuantizedWeight:
    spec = LayerSpec.from_dict({**meta, "algorithm": {"name": "rtn"}})
    out_f, in_f = meta["shape"]
    if f"{name}.qcodes" not in keys:
        raise ArtefactError(f"layer {name}: packed codes are missing from model.safetensors")
    tensors = {
        k: reader.get_tensor(f"{name}.{q}") for k, q in _KEYS.items() if f"{name}.{q}" in keys
    }
    if isinstance(spec.fmt, IntFormat) and not spec.fmt.symmetric and "zero" not in tensors:
        raise ArtefactError(f"layer {name}: packed zero points are missing from model.safetensors")
    if "scale" not in tensors:
        raise ArtefactError(f"layer {name}: scales are missing from model.safetensors")
    if isinstance(spec.fmt, NVFP4Format) and "tensor_scale" not in tensors:
        raise ArtefactError(f"layer {name}: the NVFP4 tensor scale is missing")
    try:
        qw = unpack_weight(tensors, spec.fmt, spec.granularity, (out_f, in_f))
        qw.dequantize()  # shapes of codes, scales and tables must fit the layer
    except (ValueError, RuntimeError, IndexError) as exc:
        raise ArtefactError(
            f"layer {name}: stored tensors do not fit its {out_f}×{in_f} {spec.describe()} "
            f"layout ({exc}); the directory is damaged: quantize again"
        ) from exc
    return qw


def _is_tied(model: Any, key: str) -> bool:
    out = model.get_output_embeddings()
    return (
        bool(getattr(model.config, "tie_word_embeddings", False))
        and out is not None
        and key.endswith("lm_head.weight")
    )
