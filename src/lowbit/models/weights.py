"""Where a model's tensors come from, read one module at a time, straight to the device.

A :class:`WeightSource` maps parameter names to tensors in their stored dtype:
- :class:`SafetensorsWeights`: the safetensors files of a model directory (or of a saved
  lowbit directory's unquantized tensors); read with ``safe_open(..., device=...)``, so a GPU
  run reads straight into GPU memory;
- :class:`OverlayWeights`: another source with some tensors replaced, e.g. a quantized
  model's dequantized layers and the norms AWQ/SmoothQuant rescaled: the fake-quantized model
  without ever building it in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Protocol

import torch

from lowbit.errors import ModelSourceError
from lowbit.models.files import safetensors_header


class WeightSource(Protocol):
    """Tensors by parameter name, in their stored dtype."""

    def keys(self) -> set[str]: ...
    def read(self, keys: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]: ...


class SafetensorsWeights:
    """The tensors of some safetensors files (``where`` names them in errors)."""

    def __init__(self, files: Iterable[Path], where: str) -> None:
        self.where = where
        self._file: dict[str, Path] = {}
        for file in files:
            for key in safetensors_header(Path(file)):
                if key != "__metadata__":
                    self._file[key] = Path(file)

    def keys(self) -> set[str]:
        return set(self._file)

    def read(self, keys: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for key in keys:
            if key not in self._file:
                raise ModelSourceError(f"{self.where}: tensor {key!r} is in no weight file")
            by_file.setdefault(self._file[key], []).append(key)
        out: dict[str, torch.Tensor] = {}
        with ExitStack() as stack:
            for file, members in by_file.items():
                reader = stack.enter_context(
                    safe_open(str(file), framework="pt", device=str(device))
                )
                for key in members:
                    out[key] = check_finite(reader.get_tensor(key), key, file)
        return out


def check_finite(tensor: torch.Tensor, key: str, where: object) -> torch.Tensor:
    """``tensor``, refused (naming it) if it holds a NaN or an infinity: a model with one gives
    NaN perplexities and NaN codes, never an error of its own."""
    if not tensor.is_floating_point():
        return tensor
    values = tensor.float() if tensor.element_size() == 1 else tensor  # FP8: no isfinite kernel
    if bool(torch.isfinite(values).all()):
        return tensor
    nan, inf = int(torch.isnan(values).sum()), int(torch.isinf(values).sum())
    raise ModelSourceError(
        f"{where}: tensor {key} holds {nan} NaN and {inf} Inf value(s); the checkpoint is "
        "damaged or was saved from a diverged run: re-download or re-export it"
    )


class OverlayWeights:
    """``base`` with the tensors in ``replaced`` (name → a function making the tensor on a
    device) taking the place of the stored ones."""

    def __init__(
        self,
        base: WeightSource,
        replaced: Mapping[str, Callable[[torch.device], torch.Tensor]],
    ) -> None:
        self.base = base
        self.replaced = dict(replaced)

    def keys(self) -> set[str]:
        return self.base.keys() | set(self.replaced)

    def read(self, keys: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
        out = self.base.read([k for k in keys if k not in self.replaced], device)
        for key in keys:
            if key in self.replaced:
                out[key] = self.replaced[key](device)
        return out


def constant(tensor: torch.Tensor) -> Callable[[torch.device], torch.Tensor]:
    """A replacement that is a fixed tensor (moved to the device asked for)."""
    return lambda device: tensor.to(device)
