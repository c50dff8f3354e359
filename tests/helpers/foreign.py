"""Checkpoints as other tools write them, built offline from a tiny dense model: FP8 with block
(or per-tensor / per-row) scales as DeepSeek-V3 and Qwen3-FP8 store them, and configs of
methods lowbit refuses. The block quantizer and dequantizer here are plain per-block loops, an
independent reference for lowbit's vectorized dequantization."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

FP8_MAX = 448.0  # float8_e4m3fn
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def blocks(shape: tuple[int, int], block: tuple[int, int]):
    """(grid index, row slice, column slice) of every block, edge blocks partial."""
    rows, cols = shape
    for i, r in enumerate(range(0, rows, block[0])):
        for j, c in enumerate(range(0, cols, block[1])):
            yield (i, j), slice(r, r + block[0]), slice(c, c + block[1])


def fp8_quantize(
    W: torch.Tensor, block: tuple[int, int] | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``W: (out, in)`` → float8_e4m3fn codes and float32 ``scale_inv`` (amax / 448): per block
    ``(ceil(out / bm), ceil(in / bn))``, or ``"tensor"`` (shape ``(1,)``) / ``"row"``
    (``(out, 1)``)."""
    W = W.float()
    if block == "tensor":
        groups = [((0,), slice(None), slice(None))]
        scale = torch.empty(1)
    elif block == "row":
        groups = [((r, 0), slice(r, r + 1), slice(None)) for r in range(W.shape[0])]
        scale = torch.empty(W.shape[0], 1)
    else:
        groups = list(blocks(tuple(W.shape), block))
        scale = torch.empty(-(-W.shape[0] // block[0]), -(-W.shape[1] // block[1]))
    q = torch.empty(W.shape, dtype=torch.float8_e4m3fn)
    for idx, rs, cs in groups:
        amax = W[rs, cs].abs().amax()
        s = amax / FP8_MAX if amax > 0 else torch.tensor(1.0)
        scale[idx] = s
        q[rs, cs] = (W[rs, cs] / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def fp8_dequantize_loop(q: torch.Tensor, scale: torch.Tensor, block) -> torch.Tensor:
    """The reference: each block's codes times its scale, one block at a time."""
    out = torch.empty(q.shape, dtype=torch.float32)
    if block == "tensor":
        return q.float() * scale.reshape(())
    if block == "row":
        for r in range(q.shape[0]):
            out[r] = q[r].float() * scale[r, 0]
        return out
    for idx, rs, cs in blocks(tuple(q.shape), block):
        out[rs, cs] = q[rs, cs].float() * scale[idx]
    return out


def is_linear(key: str) -> bool:
    return key.startswith("model.layers.") and key.endswith(tuple(f"{m}.weight" for m in LINEARS))


def make_fp8_copy(dense: Path, out: Path, block) -> Path:
    """``dense``'s block linears quantized to FP8 (``block``: ``(bm, bn)``, ``"tensor"`` or
    ``"row"``) with transformers' ``quant_method: "fp8"`` config, beside its tokenizer."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in load_file(str(dense / "model.safetensors")).items():
        if is_linear(key):
            tensors[key], tensors[key + "_scale_inv"] = fp8_quantize(value, block)
        else:
            tensors[key] = value.to(torch.bfloat16)  # as FP8 releases keep the rest
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((dense / "config.json").read_text())
    size = list(block) if isinstance(block, tuple) else None
    cfg["quantization_config"] = {
        "quant_method": "fp8",
        "activation_scheme": "dynamic",
        "weight_block_size": size,
    }
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in dense.glob("tokenizer*"):
        shutil.copy(f, out / f.name)
    return out


def make_dense_twin(fp8: Path, out: Path, block) -> Path:
    """The dense float32 model holding ``fp8``'s weights dequantized by the reference loop."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True)
    stored = load_file(str(fp8 / "model.safetensors"))
    tensors = {
        k: fp8_dequantize_loop(v, stored[k + "_scale_inv"], block) if is_linear(k) else v.float()
        for k, v in stored.items()
        if not k.endswith("_scale_inv")
    }
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((fp8 / "config.json").read_text())
    del cfg["quantization_config"]
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in fp8.glob("tokenizer*"):
        shutil.copy(f, out / f.name)
    return out


def with_quantization_config(dense: Path, out: Path, qcfg: dict) -> Path:
    """A copy of ``dense`` whose config.json claims ``qcfg`` (tensors unchanged)."""
    shutil.copytree(dense, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"] = qcfg
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out
