"""The quantized layers of a model, packed as they are saved, in memory or in shard files.

The driver hands each layer's :class:`QuantizedWeight` to :meth:`QuantizedLayers.add` as soon
as it is done: the codes are packed at once (4-bit codes take half a byte, not an int8 each).
With a shard directory, :meth:`QuantizedLayers.flush` writes the layers added since the last
flush to one safetensors file (one per decoder block) and drops them from memory, so a model's
quantized weights never sit in memory together. Reading a layer unpacks it again, bit for bit.

Packed tensor names: ``<layer>.qcodes`` (packed codes), ``.qscale`` (scales in their storage
dtype), ``.qzero`` (packed zero points), ``.qperm`` (int32 permutation), ``.qtscale`` (fp32
tensor scale), ``.qoidx``/``.qoval`` (sparse outliers: int32 flat indices, fp16 values).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lowbit.algorithms import RTNConfig
from lowbit.errors import ArtefactError
from lowbit.formats import IntFormat, QuantizedWeight
from lowbit.formats.nvfp4 import NVFP4Format
from lowbit.formats.packing import pack_weight, unpack_weight
from lowbit.plan import LayerSpec

# pack_weight's tensors → their key suffix
KEYS = {
    "codes": "qcodes",
    "scale": "qscale",
    "zero": "qzero",
    "perm": "qperm",
    "tensor_scale": "qtscale",
    "outlier_index": "qoidx",
    "outlier_value": "qoval",
}
SUFFIXES = tuple(f".{q}" for q in KEYS.values())


def block_shard(i: int) -> str:
    """The file holding decoder block ``i``'s packed layers in a saved directory."""
    return f"blocks-{i:05d}.safetensors"


@dataclass(frozen=True)
class LayerLayout:
    """What unpacking a layer needs: its spec (format and granularity) and shape (out, in),
    and its stored size in bits."""

    spec: LayerSpec
    shape: tuple[int, int]
    n_bits: int

    def to_dict(self) -> dict[str, Any]:
        spec = {k: v for k, v in self.spec.to_dict().items() if k != "algorithm"}
        return {"shape": list(self.shape), "bits": self.n_bits, **spec}

    @classmethod
    def from_dict(cls, meta: dict[str, Any]) -> LayerLayout:
        fields = {k: v for k, v in meta.items() if k not in ("shape", "bits")}
        spec = LayerSpec.from_dict({**fields, "algorithm": {"name": "rtn"}})
        return cls(spec, (int(meta["shape"][0]), int(meta["shape"][1])), int(meta.get("bits", -1)))


class QuantizedLayers(Mapping[str, QuantizedWeight]):
    """Layer name → QuantizedWeight, stored packed (see the module docstring)."""

    def __init__(self, shard_dir: Path | None = None) -> None:
        self.shard_dir = shard_dir
        self.layouts: dict[str, LayerLayout] = {}
        self._memory: dict[str, dict[str, torch.Tensor]] = {}
        self._file: dict[str, Path] = {}
        self._checked: set[str] = set()  # layers read from files whose layout was checked

    # -- filling -------------------------------------------------------------------------
    def add(self, name: str, qw: QuantizedWeight) -> None:
        spec = LayerSpec(qw.fmt, qw.granularity, RTNConfig())  # the algorithm is not stored
        self.layouts[name] = LayerLayout(spec, qw.shape, qw.n_bits())
        self._memory[name] = {
            f"{name}.{KEYS[k]}": v.detach().cpu().contiguous() for k, v in pack_weight(qw).items()
        }

    def flush(self, filename: str) -> Path | None:
        """Write the layers held in memory to ``shard_dir/filename`` (nothing without a shard
        directory or without layers) and release them."""
        if self.shard_dir is None or not self._memory:
            return None
        from safetensors.torch import save_file

        path = self.shard_dir / filename
        tensors = {k: v for packed in self._memory.values() for k, v in packed.items()}
        save_file(tensors, str(path), metadata={"format": "pt"})
        for name in self._memory:
            self._file[name] = path
        self._memory.clear()
        return path

    def attach(self, layouts: Mapping[str, LayerLayout], path: Path) -> None:
        """Layers already written to the shard ``path`` (by an earlier, interrupted run)."""
        for name, layout in layouts.items():
            self.layouts[name] = layout
            self._file[name] = path

    def packed_in_memory(self) -> dict[str, torch.Tensor]:
        return {k: v for packed in self._memory.values() for k, v in packed.items()}

    def weight_map(self) -> dict[str, str]:
        """Packed tensor name → shard file name, for the layers already written."""
        out = {}
        for name, path in self._file.items():
            for key in self._keys_of(name, path):
                out[key] = path.name
        return out

    # -- reading -------------------------------------------------------------------------
    @classmethod
    def from_files(cls, layouts: Mapping[str, LayerLayout], files: list[Path]) -> QuantizedLayers:
        """The layers of a saved directory: ``layouts`` from its manifest, codes in ``files``."""
        from lowbit.models.files import safetensors_header

        store = cls()
        where = {key: f for f in files for key in safetensors_header(f) if key != "__metadata__"}
        for name, layout in layouts.items():
            if f"{name}.qcodes" not in where:
                raise ArtefactError(f"layer {name}: packed codes are missing from the directory")
            store.layouts[name] = layout
            store._file[name] = where[f"{name}.qcodes"]
        return store

    def __getitem__(self, name: str) -> QuantizedWeight:
        return self.unpacked(name)

    def unpacked(self, name: str, device: torch.device | None = None) -> QuantizedWeight:
        """Layer ``name`` unpacked on ``device`` (None: the CPU, where the packed bytes are)."""
        layout = self.layouts[name]
        check = name in self._file and name not in self._checked
        qw = _unpack(name, layout, self.packed(name), device, check=check)
        self._checked.add(name)
        return qw

    def packed(self, name: str) -> dict[str, torch.Tensor]:
        """The stored tensors of one layer, keyed by pack_weight's names (codes, scale, …)."""
        if name in self._memory:
            raw = self._memory[name]
        else:
            from safetensors import safe_open

            path = self._file[name]
            with safe_open(str(path), framework="pt") as reader:
                raw = {k: reader.get_tensor(k) for k in self._keys_of(name, path, reader.keys())}
        return {k: raw[f"{name}.{q}"] for k, q in KEYS.items() if f"{name}.{q}" in raw}

    def _keys_of(self, name: str, path: Path, keys: Any = None) -> list[str]:
        if keys is None:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as reader:
                keys = list(reader.keys())
        return [f"{name}.{q}" for q in KEYS.values() if f"{name}.{q}" in set(keys)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layouts)

    def __len__(self) -> int:
        return len(self.layouts)

    def __contains__(self, name: object) -> bool:
        return name in self.layouts

    def n_bits(self, name: str) -> int:
        layout = self.layouts[name]
        return layout.n_bits if layout.n_bits >= 0 else self[name].n_bits()

    def dequantized(self, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The dense weight of layer ``name`` as evaluation uses it, unpacked and dequantized
        on ``device``."""
        return self.unpacked(name, device).dequantize().to(dtype=dtype)


def _unpack(
    name: str,
    layout: LayerLayout,
    tensors: dict[str, torch.Tensor],
    device: torch.device | None,
    *,
    check: bool,
) -> QuantizedWeight:
    fmt, gran = layout.spec.fmt, layout.spec.granularity
    out_f, in_f = layout.shape
    if "codes" not in tensors:
        raise ArtefactError(f"layer {name}: packed codes are missing")
    if isinstance(fmt, IntFormat) and not fmt.symmetric and "zero" not in tensors:
        raise ArtefactError(f"layer {name}: packed zero points are missing")
    if "scale" not in tensors:
        raise ArtefactError(f"layer {name}: scales are missing")
    if isinstance(fmt, NVFP4Format) and "tensor_scale" not in tensors:
        raise ArtefactError(f"layer {name}: the NVFP4 tensor scale is missing")
    try:
        qw = unpack_weight(tensors, fmt, gran, (out_f, in_f), device)
        if check:
            qw.dequantize()  # shapes of codes, scales and tables must fit the layer
    except (ValueError, RuntimeError, IndexError) as exc:
        raise ArtefactError(
            f"layer {name}: stored tensors do not fit its {out_f}×{in_f} "
            f"{layout.spec.describe()} layout ({exc}); the directory is damaged: quantize again"
        ) from exc
    return qw
