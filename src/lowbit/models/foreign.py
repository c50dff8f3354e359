"""Checkpoints quantized by other tools: dequantized correctly, or refused by name before any
work, never cast silently.

:func:`detect_foreign` reads ``config.json``'s ``quantization_config.quant_method`` and the
safetensors headers of a model directory. A registry maps each method to its handler:
- ``fp8`` (block, per-tensor or per-row scales): read as dense weights, dequantized on read
  (:mod:`lowbit.models.fp8_source`); the config given to transformers loses its
  ``quantization_config``, so the skeleton has plain linears in the compute dtype;
- ``compressed-tensors``: decompressed and cached elsewhere
  (:mod:`lowbit.models.compressed_source`);
- GPTQ, AWQ, bitsandbytes and every other method: refused, naming the file, the method and the
  way out.
A directory without a quantization_config whose weights are integer-packed or float8 is refused
the same way (its tensors would otherwise be cast to floats as if they were the weights).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from lowbit._registry import Registry
from lowbit.errors import ModelSourceError
from lowbit.models.files import safetensors_header
from lowbit.models.fp8_source import fp8_format
from lowbit.models.weights import WeightSource

FULL_PRECISION = "give the original (unquantized) checkpoint: lowbit quantizes from full precision"
INTEGER_DTYPES = ("I8", "U8", "I16", "U16", "I32", "U32", "I64", "U64", "BOOL")
READABLE = ("fp8", "compressed-tensors")  # the methods below that are not refused
PACKED_SUFFIXES = (".qweight", ".qzeros", ".g_idx", ".SCB", ".absmax", ".quant_map")


class Foreign(Protocol):
    """A foreign checkpoint lowbit reads as dense weights."""

    method: str

    def wrap(self, base: WeightSource, where: str) -> WeightSource: ...
    def owner(self, key: str) -> str | None: ...
    def describe(self) -> dict[str, Any]: ...


Handler = Callable[[Path, Mapping[str, Any], Mapping[str, dict]], "Foreign | None"]
HANDLERS: Registry[Handler] = Registry("quantization method")


def detect_foreign(path: Path, files: Sequence[Path]) -> Foreign | None:
    """The foreign format of the model directory ``path`` (None: dense, or compressed-tensors);
    raises :class:`ModelSourceError` for a format lowbit cannot read. Reads only config.json and
    the safetensors headers of ``files``."""
    config = Path(path) / "config.json"
    qcfg = _quantization_config(config)
    headers = _headers(files)
    if qcfg is None:
        _check_dense(config, headers)
        return None
    method = str(qcfg.get("quant_method", ""))
    handler = HANDLERS.get(method) if method in HANDLERS else _refuse_other
    return handler(config, qcfg, headers)


def strip_quantization(config: Any) -> Any:
    """``config`` (a transformers config) without its quantization_config, in place: the
    skeleton is then built with plain linears in the compute dtype."""
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def dense_model(lazy: Any) -> Any:
    """Every parameter of a :class:`~lowbit.models.lazy.LazyModel` materialized: the dense
    model of a foreign checkpoint, which ``from_pretrained`` would re-quantize or refuse."""
    model = lazy.materialize("")
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.eval()


def _quantization_config(config: Path) -> Mapping[str, Any] | None:
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{config} cannot be read as JSON: {exc}") from exc
    qcfg = data.get("quantization_config") if isinstance(data, dict) else None
    if qcfg is None:
        return None
    if not isinstance(qcfg, dict):
        raise ModelSourceError(f"{config}: quantization_config is not an object ({qcfg!r})")
    return qcfg


def _headers(files: Sequence[Path]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for file in files:
        out.update({k: v for k, v in safetensors_header(Path(file)).items() if k != "__metadata__"})
    return out


def _check_dense(config: Path, headers: Mapping[str, dict]) -> None:
    """No quantization_config: every weight must be stored as floats, and none float8."""
    for key, head in sorted(headers.items()):
        dtype = head.get("dtype", "?")
        if key.endswith(PACKED_SUFFIXES):
            raise ModelSourceError(
                f"{config.parent}: tensor {key!r} ({dtype}) is a packed quantized tensor (GPTQ, "
                f"AWQ or bitsandbytes layout) but {config.name} has no quantization_config; "
                f"{FULL_PRECISION}"
            )
        if key.endswith((".weight", ".bias")) and dtype in INTEGER_DTYPES:
            raise ModelSourceError(
                f"{config.parent}: tensor {key!r} is stored as {dtype} (integer-packed), but the "
                f"model expects floats and {config.name} has no quantization_config; "
                f"{FULL_PRECISION}"
            )
        if key.endswith(".weight") and dtype.startswith("F8"):
            raise ModelSourceError(
                f"{config.parent}: tensor {key!r} is stored as {dtype} but {config.name} has no "
                'quantization_config; for FP8 with scales add {"quant_method": "fp8", '
                '"weight_block_size": [128, 128]} (the block size it was made with), or '
                f"{FULL_PRECISION}"
            )


def _refuse(label: str, why: str) -> Handler:
    def refuse(config: Path, qcfg: Mapping[str, Any], headers: Mapping[str, dict]) -> None:
        raise ModelSourceError(
            f"{config}: the checkpoint is quantized with quant_method "
            f"{qcfg.get('quant_method')!r} ({label}): {why}; {FULL_PRECISION}"
        )

    return refuse


def _refuse_other(config: Path, qcfg: Mapping[str, Any], headers: Mapping[str, dict]) -> None:
    why = f"lowbit reads only {' and '.join(READABLE)} checkpoints"
    _refuse("not a format lowbit reads", why)(config, qcfg, headers)


def _compressed_tensors(config: Path, qcfg: Mapping[str, Any], headers: Mapping[str, dict]):
    return None  # decompressed and cached by lowbit.models.compressed_source


def _register() -> None:
    HANDLERS.register("fp8", fp8_format)
    HANDLERS.register("compressed-tensors", _compressed_tensors)
    not_yet = "dequantizing {} checkpoints is not supported yet"
    refused: dict[str, tuple[str, str]] = {
        "gptq": ("GPTQ integer codes", not_yet.format("GPTQ")),
        "awq": ("AWQ integer codes", not_yet.format("AWQ")),
        "bitsandbytes": ("bitsandbytes 4/8-bit", "its packed tensors are not read"),
    }
    for name, (label, why) in refused.items():
        HANDLERS.register(name, _refuse(label, why))


_register()
