"""What a model costs to store: bytes, and honest bits per weight over the blocks' linear layers
and over the whole model, with every tensor that stays in full precision listed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from lowbit.models.arch import ArchSpec
from lowbit.models.expert_weights import canonical_entries
from lowbit.models.quantize import QuantizedModel
from lowbit.models.sources import ModelHandle

_DTYPE_BITS = {
    "F64": 64,
    "F32": 32,
    "F16": 16,
    "BF16": 16,
    "I64": 64,
    "I32": 32,
    "I16": 16,
    "I8": 8,
    "U8": 8,
    "U16": 16,
    "U32": 32,
    "U64": 64,
    "BOOL": 8,
    "F8_E4M3": 8,
    "F8_E5M2": 8,
    "F8_E8M0": 8,
    "F4": 4,
}


def _dtype_bits(dtype: str, key: str, file: object) -> int:
    if dtype not in _DTYPE_BITS:
        from lowbit.errors import ModelSourceError

        raise ModelSourceError(
            f"{file}: tensor {key} has dtype {dtype}, whose size lowbit does not know; "
            "convert the checkpoint to a standard dtype (F32, F16, BF16, F8, integers)"
        )
    return _DTYPE_BITS[dtype]


@dataclass(frozen=True)
class Footprint:
    size_bytes: int
    parameters: int
    bits_per_weight_linear: float
    bits_per_weight_model: float
    full_precision: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def stored_bits(handle: ModelHandle) -> Iterator[tuple[str, int, int]]:
    """(key, elements, stored bits) for every tensor in ``handle``'s weight files."""
    from safetensors import safe_open

    for file in handle.weight_files:
        with safe_open(str(file), framework="pt") as reader:
            for key in reader.keys():
                view = reader.get_slice(key)
                n = _numel(view.get_shape())
                yield key, n, n * _dtype_bits(view.get_dtype(), key, file)


def footprint(handle: ModelHandle, qm: QuantizedModel | None) -> Footprint:
    """Stored size of ``handle``'s tensors with ``qm``'s layers at their quantized size. A tied
    head that ``qm`` stores apart is one more tensor: quantized, or the embedding's full-precision
    copy."""
    quantized = {} if qm is None else {f"{n}.weight": qm.weights.n_bits(n) for n in qm.weights}
    total_bits = params = lin_bits = lin_count = 0
    kept: list[str] = []
    embed_key = f"{handle.arch.embed_path}.weight"
    owner_of = handle.foreign.owner if handle.foreign is not None else _no_owner
    entries = canonical_entries(stored_bits(handle), handle.arch, handle.config.model_type)
    for key, n, stored in entries:
        owner = owner_of(key)
        if owner is not None:  # a foreign weight's scales: stored bits of that weight
            if owner not in quantized:
                total_bits += stored
                lin_bits += stored if _is_block_linear(handle, owner) else 0
            continue
        bits = quantized.get(key, stored)
        total_bits, params = total_bits + bits, params + n
        if key not in quantized:
            kept.append(key)
        if _is_block_linear(handle, key):
            lin_bits, lin_count = lin_bits + bits, lin_count + n
        if key == embed_key and qm is not None and qm.untied_head:
            head = quantized.get("lm_head.weight")
            total_bits += head if head is not None else stored
            params += n
            if head is None:
                kept.append("lm_head.weight")
    return Footprint(
        (total_bits + 7) // 8,
        params,
        lin_bits / max(lin_count, 1),
        total_bits / max(params, 1),
        kept,
    )


def _no_owner(key: str) -> str | None:
    return None


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _is_block_linear(handle: ModelHandle, key: str) -> bool:
    return key.removesuffix(".weight") in _layer_set(handle.arch)


@cache
def _layer_set(arch: ArchSpec) -> frozenset[str]:
    return frozenset(arch.layer_names())
