"""A model as evaluation sees it, without building it: its config, architecture, where each
tensor comes from, and the plan's runtime quantization (activations, KV cache).

- :func:`original_view`: a model source as it is;
- :func:`quantized_view`: a model with a :class:`~lowbit.models.quantize.QuantizedModel`'s
  layers dequantized in place of the originals, the smoothed norms, a quantized or untied
  embedding/head: the fake-quantized model, read one block at a time;
- :func:`saved_view`: a directory written by ``lowbit quantize`` (its own shards).

:meth:`ModelView.lazy` builds the meta-device skeleton on a runtime, with the activation and
KV-cache fake quantization attached, ready for the block runner.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from lowbit.models.arch import ArchSpec
from lowbit.models.embeddings import HEAD_PATH
from lowbit.models.lazy import LazyModel
from lowbit.models.qstore import QuantizedLayers
from lowbit.models.sources import ModelHandle
from lowbit.models.weights import OverlayWeights, WeightSource, constant
from lowbit.plan import Plan
from lowbit.runtime import Runtime


@dataclass(frozen=True)
class ModelView:
    """``name`` labels it in errors and results; ``fingerprint`` identifies its weights."""

    name: str
    fingerprint: str
    config: Any
    arch: ArchSpec
    weights: WeightSource
    plan: Plan | None = None
    quantized: QuantizedLayers | None = None
    activation_ranges: Mapping[str, float] = field(default_factory=dict)

    def lazy(self, runtime: Runtime, *, attach: bool = True) -> LazyModel:
        """The skeleton on ``runtime``; with ``attach``, the plan's activation and KV-cache
        quantization are attached to it."""
        lazy = LazyModel(self.config, self.arch, self.weights, runtime, self.name)
        if attach and self.plan is not None and self.quantized is not None:
            from lowbit.models.fakequant import attach_runtime

            attach_runtime(lazy.model, self.plan, self.quantized, dict(self.activation_ranges))
        return lazy


def original_view(handle: ModelHandle) -> ModelView:
    return ModelView(
        handle.source, handle.fingerprint, handle.config, handle.arch, handle.weights()
    )


def quantized_view(qm: Any, name: str = "quantized") -> ModelView:
    """The fake-quantized model of ``qm`` (a QuantizedModel) over its original's weights."""
    handle: ModelHandle = qm.handle
    return _overlay_view(
        name,
        f"{handle.fingerprint}+{name}",
        handle.config,
        handle.arch,
        handle.weights(),
        qm.plan,
        qm.weights,
        dict(qm.smoothed),
        qm.untied_head,
        dict(qm.activation_ranges),
    )


def _overlay_view(
    name: str,
    fingerprint: str,
    config: Any,
    arch: ArchSpec,
    base: WeightSource,
    plan: Plan,
    layers: QuantizedLayers,
    smoothed: dict[str, torch.Tensor],
    untied_head: bool,
    ranges: dict[str, float],
) -> ModelView:
    replaced: dict[str, Callable[[torch.device], torch.Tensor]] = {
        f"{layer}.weight": _dequantized(layers, layer) for layer in layers
    }
    replaced.update({key: constant(value) for key, value in smoothed.items()})
    if untied_head:
        config = copy.deepcopy(config)
        config.tie_word_embeddings = False
        head_key = f"{HEAD_PATH}.weight"
        if HEAD_PATH not in layers and head_key not in base.keys():  # kept: the embedding's copy
            embed = f"{arch.embed_path}.weight"
            replaced[head_key] = lambda device: base.read([embed], device)[embed]
    weights = OverlayWeights(base, replaced)
    return ModelView(name, fingerprint, config, arch, weights, plan, layers, ranges)


def _dequantized(layers: QuantizedLayers, layer: str) -> Callable[[torch.device], torch.Tensor]:
    return lambda device: layers.dequantized(layer, device, torch.float32)


def saved_view(path: Any, manifest: dict[str, Any], config: Any, arch: ArchSpec) -> ModelView:
    """A directory saved by ``lowbit quantize`` (see :mod:`lowbit.models.saving`)."""
    from pathlib import Path

    from lowbit.models.qstore import SUFFIXES, LayerLayout
    from lowbit.models.weights import SafetensorsWeights

    files = sorted(Path(path).glob("*.safetensors"))
    layouts = {n: LayerLayout.from_dict(m) for n, m in manifest["layers"].items()}
    layers = QuantizedLayers.from_files(layouts, files)
    stored = _Unpacked(SafetensorsWeights(files, str(path)), SUFFIXES)
    plan = Plan.from_dict(manifest["plan"])
    fingerprint = f"{manifest['source']['fingerprint']}+{Path(path).name}"
    return _overlay_view(
        str(path),
        fingerprint,
        config,
        arch,
        stored,
        plan,
        layers,
        {},
        bool(manifest.get("untied_head")),
        dict(manifest.get("activation_ranges") or {}),
    )


class _Unpacked:
    """A saved directory's tensors other than the packed ones."""

    def __init__(self, base: Any, suffixes: tuple[str, ...]) -> None:
        self.base, self.suffixes = base, suffixes

    def keys(self) -> set[str]:
        return {k for k in self.base.keys() if not k.endswith(self.suffixes)}

    def read(self, keys: Any, device: torch.device) -> dict[str, torch.Tensor]:
        return self.base.read(keys, device)
