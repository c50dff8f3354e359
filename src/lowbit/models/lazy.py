"""A model whose parameters stay on disk until a module is needed.

The module tree is built on the ``meta`` device in the runtime's compute dtype (buffers such as
rotary frequencies are created on the runtime's device); :meth:`LazyModel.materialize` reads
one module's tensors from its :class:`~lowbit.models.weights.WeightSource` straight to the
device, casts floating-point ones to the compute dtype, and :meth:`LazyModel.release` returns
them to ``meta``. Peak memory is what is materialized at once, not the model. A LazyModel is
the :class:`~lowbit.runtime.runner.BlockStore` of the block runner.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from lowbit.errors import ModelSourceError
from lowbit.models.arch import ArchSpec
from lowbit.models.expert_weights import ExpertWeights
from lowbit.models.experts import expert_modules
from lowbit.models.skeleton import build_skeleton
from lowbit.models.weights import WeightSource
from lowbit.runtime import Runtime


class LazyModel:
    def __init__(
        self, config: Any, arch: ArchSpec, source: WeightSource, runtime: Runtime, where: str
    ) -> None:
        self.model = build_skeleton(config, runtime.device, runtime.dtype, where)
        experts = expert_modules(self.model)
        if experts:
            modules = dict(experts)
            source = ExpertWeights(source, modules, config.model_type, where)  # type: ignore[arg-type]
        self.arch, self.source, self.runtime, self.where = arch, source, runtime, where
        self._keys = source.keys()
        self._names = {id(m): n for n, m in self.model.named_modules()}

    # -- the BlockStore protocol ---------------------------------------------------------
    def __len__(self) -> int:
        return len(block_list(self.model, self.arch.blocks_path))

    def load(self, i: int) -> nn.Module:
        return self.materialize(f"{self.arch.blocks_path}.{i}")

    def release(self, i: int) -> None:
        self.release_module(f"{self.arch.blocks_path}.{i}")

    # -- modules -------------------------------------------------------------------------
    def module(self, path: str) -> nn.Module:
        return self.model.get_submodule(path)

    def materialize(self, path: str) -> nn.Module:
        """Load every parameter of the module at ``path`` (e.g. ``model.layers.3``)."""
        from accelerate.utils import set_module_tensor_to_device

        module = self.module(path)
        names = [n for n, _ in module.named_parameters(recurse=True)]
        keys = {n: self._key(f"{path}.{n}" if path else n) for n in names}
        for name, _ in module.named_buffers(recurse=True):  # stored ones, e.g. DeepSeek's
            key = f"{path}.{name}" if path else name  # e_score_correction_bias
            if key in self._keys:
                keys[name] = key
        tensors = self.source.read(list(dict.fromkeys(keys.values())), self.runtime.device)
        for name, key in keys.items():
            tensor = tensors[key]
            if tensor.is_floating_point():
                tensor = tensor.to(self.runtime.dtype)
            set_module_tensor_to_device(module, name, self.runtime.device, value=tensor)
        return module

    def release_module(self, path: str) -> None:
        """Return the module's parameters to ``meta`` (buffers stay: they are small)."""
        from accelerate.utils import set_module_tensor_to_device

        module = self.module(path)
        for name, _ in list(module.named_parameters(recurse=True)):
            set_module_tensor_to_device(module, name, "meta")

    def _key(self, key: str) -> str:
        if key in self._keys:
            return key
        tied = self._tied_source(key)
        if tied not in self._keys:
            raise ModelSourceError(f"{self.where}: tensor {key!r} is in no weight file")
        return tied

    def _tied_source(self, key: str) -> str:
        """The stored name of a tied output head (its weight is the input embedding's)."""
        out = self.model.get_output_embeddings()
        emb = self.model.get_input_embeddings()
        if out is not None and key == f"{self._names.get(id(out))}.weight":
            return f"{self._names[id(emb)]}.weight"
        return key

    def outside_blocks(self) -> Iterator[str]:
        """Module paths that hold parameters outside the blocks (embeddings, final norm,
        the head), the head last."""
        head = self.model.get_output_embeddings()
        blocks = self.arch.blocks_path
        for name, mod in self.model.named_modules():
            if not name or mod is head or name == blocks or name.startswith(blocks + "."):
                continue
            if any(True for _ in mod.parameters(recurse=False)):
                yield name
        if head is not None:
            yield self._names[id(head)]

    def materialize_outside(self, *, head: bool) -> list[str]:
        """Materialize the modules outside the blocks (with or without the head; a tied head
        is tied to the embedding, not read twice); returns their paths, for
        :meth:`release_outside`."""
        head_module = self.model.get_output_embeddings()
        head_path = None if head_module is None else self._names[id(head_module)]
        paths = [p for p in self.outside_blocks() if p != head_path]
        for path in paths:
            self.materialize(path)
        if head and head_path is not None:
            if _is_tied(self.model):
                self.model.tie_weights()
            else:
                self.materialize(head_path)
                paths.append(head_path)
        return paths

    def release_outside(self, paths: list[str]) -> None:
        for path in paths:
            self.release_module(path)
        head = self.model.get_output_embeddings()
        if head is not None and _is_tied(self.model) and head.weight.device.type != "meta":
            head.weight = nn.Parameter(torch.empty_like(head.weight, device="meta"), False)


def _is_tied(model: Any) -> bool:
    return bool(getattr(model.config, "tie_word_embeddings", False))


def block_list(model: Any, blocks_path: str) -> nn.ModuleList:
    blocks = model.get_submodule(blocks_path)
    if not isinstance(blocks, nn.ModuleList):
        raise ModelSourceError(f"{blocks_path} is not a list of decoder blocks in this model")
    return blocks
