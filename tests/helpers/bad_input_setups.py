"""The inputs the bad-input catalogue (:mod:`tests.helpers.bad_inputs`) makes: files written
into the case's inputs folder, damaged copies of the tiny model, plan documents."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

Setup = Callable[[Path, Path], None]  # (inputs folder, tiny model)
RTN_W8 = {"format": {"type": "int", "bits": 8}, "granularity": {"type": "group", "size": 32}}


def write(name: str, content: str | bytes) -> Setup:
    def setup(inputs: Path, model: Path) -> None:
        path = inputs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return setup


def plan(name: str, data: dict | str) -> Setup:
    text = data if isinstance(data, str) else json.dumps(data, indent=2)
    return write(name, text)


def model_copy(name: str, change: Callable[[Path], None]) -> Setup:
    def setup(inputs: Path, model: Path) -> None:
        out = inputs / name
        shutil.copytree(model, out)
        change(out)

    return setup


def truncate(model: Path) -> None:
    shard = model / "model.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 3])


def garble(model: Path) -> None:
    shard = model / "model.safetensors"
    shard.write_bytes(b"\xff" * 64 + shard.read_bytes()[64:])


def config(change: Callable[[dict], dict | str]) -> Callable[[Path], None]:
    def apply(model: Path) -> None:
        cfg = json.loads((model / "config.json").read_text())
        new = change(cfg)
        (model / "config.json").write_text(new if isinstance(new, str) else json.dumps(new))

    return apply


def poison(value: float, key: str = "model.layers.1.mlp.down_proj.weight") -> Callable:
    def apply(model: Path) -> None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(model / "model.safetensors")
        tensors[key][3, 5] = value
        save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})

    return apply


def no_weights(model: Path) -> None:
    (model / "model.safetensors").unlink()


def plan_doc(default: dict | None = None, rules: list | None = None, **extra) -> dict:
    spec = {**RTN_W8, "algorithm": {"name": "rtn"}} if default is None else default
    return {"lowbit_plan_version": 1, "default": spec, "rules": rules or [], **extra}


def with_format(**fmt) -> dict:
    return plan_doc({**RTN_W8, "format": {"type": "int", **fmt}, "algorithm": {"name": "rtn"}})
