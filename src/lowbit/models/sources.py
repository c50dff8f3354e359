"""Model sources: a Hugging Face directory (safetensors), a GGUF file, or a built-in name.

Every source resolves to a :class:`ModelHandle` over a safetensors directory, so the rest of
lowbit reads weights one block at a time from disk. GGUF files and the built-in model are
dequantized once by transformers and cached as safetensors; a ``.bin``-only directory is
refused (unpickling runs code) unless the user opts in, and is then converted the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowbit._io import atomic_dir
from lowbit.errors import ModelSourceError
from lowbit.models.arch import ArchSpec
from lowbit.models.builtin import BUILTIN_MODELS, builtin_gguf
from lowbit.models.compressed_source import is_compressed_tensors_dir
from lowbit.models.discover import architecture_of
from lowbit.models.experts import linearize_experts
from lowbit.models.files import copy_model_files, fingerprint_files, safetensors_header
from lowbit.models.foreign import Foreign, dense_model, detect_foreign, strip_quantization
from lowbit.models.lazy import LazyModel
from lowbit.models.weights import SafetensorsWeights, WeightSource, check_finite
from lowbit.runtime import Runtime


@dataclass(frozen=True, eq=False)
class ModelHandle:
    """A resolved model: its safetensors directory, config and architecture spec."""

    source: str
    path: Path
    config: Any
    arch: ArchSpec
    fingerprint: str
    weight_files: tuple[Path, ...] = field(default=())
    foreign: Foreign | None = None  # another tool's quantization, dequantized on read

    def weights(self) -> WeightSource:
        """Its tensors, read one module at a time."""
        stored = SafetensorsWeights(self.weight_files, self.source)
        return stored if self.foreign is None else self.foreign.wrap(stored, self.source)

    def lazy(
        self, runtime: Runtime | None = None, weights: WeightSource | None = None
    ) -> LazyModel:
        """The model with every parameter on disk (``weights``: another source, e.g. its
        quantized overlay) until a module is materialized on ``runtime``'s device."""
        from lowbit.runtime import resolve_runtime

        runtime = runtime or resolve_runtime()
        return LazyModel(self.config, self.arch, weights or self.weights(), runtime, self.source)

    def load_model(self, runtime: Runtime | None = None) -> Any:
        """The whole model on ``runtime``'s device in its compute dtype (default: this
        machine's runtime), in eval mode, for the stages that need every layer at once
        (harness tasks, profiling, export, tests)."""
        from transformers import AutoModelForCausalLM

        from lowbit.runtime import resolve_runtime

        runtime = runtime or resolve_runtime()
        if self.foreign is not None:  # from_pretrained would re-quantize it: read it dense
            return dense_model(self.lazy(runtime))
        model = AutoModelForCausalLM.from_pretrained(
            self.path, dtype=runtime.dtype, device_map={"": runtime.device}
        )
        for name, tensor in model.state_dict().items():
            check_finite(tensor, name, self.source)
        linearize_experts(model)  # every stage sees each expert's linears (models/experts.py)
        return model.eval()

    def load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.path)
        except (OSError, ValueError) as exc:
            raise ModelSourceError(
                f"{self.path} has no usable tokenizer ({exc}); copy the tokenizer files "
                "(tokenizer.json, tokenizer_config.json) of the original model beside the weights"
            ) from exc

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "path": str(self.path),
            "fingerprint": self.fingerprint,
            "architecture": self.arch.name,
            "model_type": self.config.model_type,
            **({} if self.foreign is None else {"dequantized_from": self.foreign.describe()}),
        }


def cache_root() -> Path:
    return Path(os.environ.get("LOWBIT_CACHE", Path.home() / ".cache" / "lowbit"))


def resolve_model(source: str, *, allow_pickle: bool = False) -> ModelHandle:
    """Resolve a built-in name, a ``.gguf`` file or a Hugging Face directory."""
    if source in BUILTIN_MODELS:
        gguf_path = builtin_gguf(source)
        return _from_dir(source, _cached_gguf_conversion(gguf_path, name=source))
    path = Path(source).expanduser()
    if not path.exists():
        raise ModelSourceError(
            f"model {source!r} not found: give a Hugging Face model directory, a .gguf file, "
            f"or a built-in name ({', '.join(BUILTIN_MODELS.names())})"
        )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelSourceError(
                f"{path} is a file but not a .gguf file; give a model directory or a GGUF file"
            )
        return _from_dir(source, _cached_gguf_conversion(path, name=path.stem))
    return _from_dir(source, _safetensors_dir(path, allow_pickle))


def _from_dir(source: str, path: Path) -> ModelHandle:
    from transformers import AutoConfig

    files = _weight_files(path)
    for file in files:
        safetensors_header(file)
    foreign = detect_foreign(path, files)  # refuses what it cannot read, before any work
    _config_model_type_is_supported(path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{path}/config.json cannot be read: {exc}") from exc
    if foreign is not None:
        strip_quantization(config)
    arch = architecture_of(config, str(path))
    fingerprint = fingerprint_files(files)
    return ModelHandle(source, path, config, arch, fingerprint, tuple(files), foreign)


def _weight_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.safetensors"))


def _safetensors_dir(path: Path, allow_pickle: bool) -> Path:
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            f"{path} has no config.json: it is not a Hugging Face model directory"
        )
    detect_foreign(path, _weight_files(path))  # GPTQ, AWQ, … refused before any conversion
    if is_compressed_tensors_dir(path):
        return _cached_compressed(path)
    if _weight_files(path):
        return path
    bins = sorted(path.glob("*.bin"))
    if not bins:
        raise ModelSourceError(
            f"{path} holds no weights (*.safetensors or *.bin); check the download is complete"
        )
    _config_model_type_is_supported(path)
    if not allow_pickle:
        raise ModelSourceError(
            f"{path} holds only PyTorch .bin weights. Loading them unpickles the file, which can "
            "run arbitrary code. Convert them to safetensors (e.g. load with transformers and "
            "save_pretrained(..., safe_serialization=True)), or pass --allow-pickle if you trust "
            "this file"
        )
    return _cached_conversion(path, key=fingerprint_files(bins), load_kwargs={})


def _config_model_type_is_supported(path: Path) -> None:
    import json

    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
    except ValueError as exc:
        raise ModelSourceError(f"{path}/config.json is not valid JSON: {exc}") from exc
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise ModelSourceError(
            f"{path}/config.json: model type {model_type!r} is unknown to this transformers; "
            "check model_type, or upgrade transformers (lowbit runs every causal LM "
            "transformers builds; `lowbit ls architectures` lists the families proven)"
        )


def _cached_gguf_conversion(gguf_path: Path, name: str) -> Path:
    """The GGUF file's cached safetensors conversion, checked and converted on first use (its
    metadata, a 49k-token vocabulary for the built-in model, is parsed only then: tens of
    seconds on a loaded CPU, which every later load of a cached conversion is spared)."""
    key = fingerprint_files([gguf_path])
    if not _converted(cache_root() / "models" / f"{name}-{key}"):
        _check_gguf(gguf_path)
    return _cached_conversion(
        gguf_path.parent, key=f"{name}-{key}", load_kwargs={"gguf_file": gguf_path.name}
    )


def _check_gguf(path: Path) -> None:
    """Readable, and of a supported architecture, before anything is converted or written."""
    try:
        from gguf import GGUFReader

        field = GGUFReader(path).fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
    except Exception as exc:  # the reader raises many kinds on bad files
        raise ModelSourceError(
            f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc}); it may be "
            "truncated: download it again"
        ) from exc
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        known = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]
        raise ModelSourceError(
            f"{path}: transformers cannot read GGUF files of architecture {arch!r} (it reads "
            f"{', '.join(known)}); give the model's Hugging Face directory instead"
        )


def _cached_compressed(path: Path) -> Path:
    """A compressed-tensors checkpoint, decompressed once and cached as dense safetensors."""
    from lowbit.models.compressed_source import load_compressed_tensors

    target = cache_root() / "models" / f"ct-{fingerprint_files(_weight_files(path))}"
    if (target / "config.json").is_file() and _weight_files(target):
        return target
    with atomic_dir(target, overwrite=True) as tmp:
        load_compressed_tensors(path).save_pretrained(tmp, safe_serialization=True)
        copy_model_files(path, tmp, config=False)
    return target


def _converted(target: Path) -> bool:
    """Whether ``target`` holds a finished conversion (published atomically, so complete)."""
    return (target / "config.json").is_file() and bool(_weight_files(target))


def _cached_conversion(src_dir: Path, key: str, load_kwargs: dict[str, Any]) -> Path:
    """Load with transformers (dequantizing GGUF), save once as safetensors under the cache."""
    target = cache_root() / "models" / key
    if _converted(target):
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with atomic_dir(target, overwrite=True) as tmp:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                src_dir, dtype=torch.float32, **load_kwargs
            )
        except Exception as exc:  # transformers raises many kinds on unreadable weights
            raise ModelSourceError(
                f"transformers cannot load {src_dir} {load_kwargs or ''}: {exc}; check the "
                "file is complete and of a supported architecture"
            ) from exc
        if getattr(model, "hf_quantizer", None) is not None:  # GGUF: dequantized on load
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config  # the saved weights are dense fp32
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(src_dir, **load_kwargs).save_pretrained(tmp)
    return target
