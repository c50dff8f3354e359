"""A random-weight model of a given config, written as Hugging Face safetensors shards.

The parameter names and shapes come from the transformers model built on the ``meta`` device
(no memory); the tensors are drawn on the target device, seeded per shard, in the target dtype
(normal with the config's ``initializer_range``; norm weights one, biases zero), and written
one shard at a time (one decoder block per shard): at most one shard is ever in memory, on the
device and once more on its way to the file. Timing the quantization of such a model measures
the same work as a trained one: the same shapes, the same number of windows and tokens.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch


def config_dict(path: Path) -> dict[str, Any]:
    """A config JSON without its ``_comment``-style keys (those starting with ``_``)."""
    return {k: v for k, v in json.loads(Path(path).read_text()).items() if not k.startswith("_")}


def _parameters(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Parameter name → shape, each stored tensor once (a tied head is not stored)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def _shard_of(name: str) -> int:
    """Decoder block i's tensors go to shard i + 1; everything else to shard 0."""
    m = re.search(r"\.layers\.(\d+)\.", name)
    return int(m.group(1)) + 1 if m else 0


def build_random_model(
    config: dict[str, Any], out: Path, *, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> dict[str, Any]:
    """Write ``config.json`` and random safetensors shards of ``config`` to ``out`` (an empty
    or new directory); returns the figures (seconds, bytes, parameters, shards)."""
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    shapes = _parameters(config)
    shards: dict[int, list[str]] = defaultdict(list)
    for name in shapes:
        shards[_shard_of(name)].append(name)
    std = float(config.get("initializer_range", 0.02))
    n = len(shards)
    weight_map: dict[str, str] = {}
    total = 0
    for k, index in enumerate(sorted(shards)):
        gen = torch.Generator(device=device).manual_seed(seed * 100_003 + index)
        tensors = {}
        for name in shards[index]:
            t = torch.empty(shapes[name], dtype=dtype, device=device)
            if name.endswith("bias"):
                t.zero_()
            elif t.dim() == 1:  # norm weights
                t.fill_(1.0)
            else:
                t.normal_(0.0, std, generator=gen)
            tensors[name] = t
        file = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        host = {name: t.cpu() for name, t in tensors.items()}
        del tensors
        save_file(host, str(out / file), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in host.values())
        weight_map.update(dict.fromkeys(host, file))
        del host
    index_file = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index_file, indent=1))
    dtype_name = str(dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps({**config, "torch_dtype": dtype_name}, indent=2))
    return {
        "build_s": time.perf_counter() - t0,
        "bytes": total,
        "parameters": sum(_numel(s) for s in shapes.values()),
        "shards": n,
        "dtype": dtype_name,
        "seed": seed,
        "init": f"normal(0, {std}); norms 1; biases 0",
    }


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
