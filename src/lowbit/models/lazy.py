"""A model whose parameters stay on disk until a module is needed.

The module tree is built with parameters on the ``meta`` device (buffers such as rotary
frequencies are real); :meth:`LazyModel.materialize` reads one module's tensors from the
safetensors files and :meth:`LazyModel.release` returns them to ``meta``. Peak memory is what is
materialized at once, not the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.errors import ModelSourceError
from lowbit.models.files import safetensors_header
from lowbit.models.sources import ModelHandle


class LazyModel:
    def __init__(self, handle: ModelHandle) -> None:
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM

        with init_empty_weights(include_buffers=False):
            self.model = AutoModelForCausalLM.from_config(handle.config, dtype=torch.float32)
        self.model.eval()
        self.handle = handle
        self._where: dict[str, Path] = {}
        for file in handle.weight_files:
            for key in safetensors_header(file):
                if key != "__metadata__":
                    self._where[key] = file

    def module(self, path: str) -> nn.Module:
        return self.model.get_submodule(path)

    def materialize(self, path: str) -> nn.Module:
        """Load every parameter of the module at ``path`` (e.g. ``model.layers.3``) from disk."""
        from accelerate.utils import set_module_tensor_to_device
        from safetensors import safe_open

        module = self.module(path)
        names = [n for n, _ in module.named_parameters(recurse=True)]
        by_file: dict[Path, list[str]] = {}
        for name in names:
            key = f"{path}.{name}" if path else name
            file = self._where.get(key) or self._where.get(self._tied_source(key))
            if file is None:
                raise ModelSourceError(f"{self.handle.path}: tensor {key!r} is in no weight file")
            by_file.setdefault(file, []).append(name)
        with ExitStack() as stack:
            for file, members in by_file.items():
                reader = stack.enter_context(safe_open(str(file), framework="pt"))
                for name in members:
                    key = f"{path}.{name}" if path else name
                    key = key if key in self._where else self._tied_source(key)
                    tensor = reader.get_tensor(key).to(torch.float32).clone()
                    set_module_tensor_to_device(module, name, "cpu", value=tensor)
        return module

    def release(self, path: str) -> None:
        self.module(path).to("meta")

    def _tied_source(self, key: str) -> str:
        """The stored name of a tied output head (its weight is the input embedding's)."""
        out = self.model.get_output_embeddings()
        emb = self.model.get_input_embeddings()
        names = {id(m): n for n, m in self.model.named_modules()}
        if out is not None and key == f"{names.get(id(out))}.weight":
            return f"{names[id(emb)]}.weight"
        return key

    def outside_blocks(self, blocks_path: str) -> Iterator[str]:
        """Top-level module paths that hold parameters but are neither blocks nor the head."""
        head = self.model.get_output_embeddings()
        for name, mod in self.model.named_modules():
            if not name or mod is head or name == blocks_path or name.startswith(blocks_path + "."):
                continue
            if any(True for _ in mod.parameters(recurse=False)):
                yield name


def block_list(model: Any, blocks_path: str) -> nn.ModuleList:
    blocks = model.get_submodule(blocks_path)
    if not isinstance(blocks, nn.ModuleList):
        raise ModelSourceError(f"{blocks_path} is not a list of decoder blocks in this model")
    return blocks
