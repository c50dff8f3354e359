"""Reading a compressed-tensors checkpoint (from lowbit's export, llm-compressor or others) into
a dense model, with the ``compressed-tensors`` library's own decompressors.

transformers can load such checkpoints too, but (with compressed-tensors 0.20) not those with
packed asymmetric zero points, so lowbit decompresses each quantized module itself: the
library matches the config groups to modules (exact names, regexes or class names, minus the
ignore list) and its registered compressor for the checkpoint's format dequantizes the weight.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lowbit.errors import ModelSourceError
from lowbit.models.experts import linearize_experts


def is_compressed_tensors_dir(path: Path) -> bool:
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        qcfg = json.loads(config.read_text()).get("quantization_config") or {}
    except ValueError:
        return False
    return qcfg.get("quant_method") == "compressed-tensors"


def load_compressed_tensors(path: Path) -> Any:
    """The dense fp32 model of a compressed-tensors directory."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
    from compressed_tensors.quantization.quant_metadata import QuantizationMetadata
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    qcfg = QuantizationConfig.model_validate(config.quantization_config)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    linearize_experts(model)  # experts are stored per expert, as vLLM reads them
    state = _read_tensors(path)
    apply_quantization_config(model, qcfg, show_progress=False)
    with torch.no_grad():
        for name, module in model.named_modules():
            scheme = getattr(module, "quantization_scheme", None)
            if scheme is None:
                continue
            fmt = str(getattr(scheme.format or qcfg.format, "value", scheme.format or qcfg.format))
            # fp32 scales: dequantize in fp32, as transformers does for an fp32 model
            local = {
                k[len(name) + 1 :]: v.float() if v.is_floating_point() else v
                for k, v in state.items()
                if k.startswith(name + ".")
            }
            if fmt != "dense":  # naive/int/float-quantized keep codes under "weight"
                try:
                    compressor = BaseCompressor.get_value_from_registry(fmt)
                    local = compressor.decompress(local, scheme)
                except (KeyError, AssertionError, RuntimeError, ValueError) as exc:
                    raise ModelSourceError(
                        f"{path}: layer {name} cannot be decompressed as {fmt} ({exc}); the "
                        "checkpoint is incomplete or of another compressed-tensors version"
                    ) from exc
            for key in list(state):
                if key.startswith(name + "."):
                    del state[key]
            state[f"{name}.weight"] = local["weight"].float()
            if "bias" in local:
                state[f"{name}.bias"] = local["bias"].float()
            QuantizationMetadata.clear_quantization(module)
            if hasattr(module, "quantization_scheme"):
                delattr(module, "quantization_scheme")
    _load_dense(model, state, path)
    return model


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelSourceError(f"{path} has a compressed-tensors config but no *.safetensors")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as reader:
            state.update({k: reader.get_tensor(k) for k in reader.keys()})
    return state


def _load_dense(model: Any, state: dict[str, torch.Tensor], path: Path) -> None:
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    missing = [m for m in missing if not (tied and m.endswith("lm_head.weight"))]
    if missing or unexpected:
        raise ModelSourceError(
            f"{path}: tensors missing {missing[:5]} / unexpected {unexpected[:5]} after "
            "decompression; the checkpoint does not match its config"
        )
    model.tie_weights()
