"""lowbit's own saved layout of a quantized model, written as the blocks finish.

A directory with ``config.json`` and the tokenizer (copied from the source model),
``blocks-NNNNN.safetensors`` (the packed layers of decoder block NNNNN, written by the driver as
soon as the block is done: see :mod:`lowbit.models.qstore` for the tensor names),
``rest-NNNNN.safetensors`` (every tensor that was not quantized, one shard per source weight
file, with the norms AWQ/SmoothQuant rescaled, a quantized embedding/head, and a tied head
stored apart as ``lm_head.weight`` when kept in full precision), ``model.safetensors.index.json``
(tensor → file) and ``lowbit.json`` (the plan, each layer's format, shape and stored bits,
static activation thresholds, whether a tied head was stored apart, how it ran, and
provenance). The directory is built under a temporary name and renamed when complete.

Loading reads the same tensors back, one block at a time for evaluation
(:func:`~lowbit.models.views.saved_view`) or all at once into a dense model
(:func:`load_quantized`), dequantized exactly as evaluation does, so logits are identical.
Directories of the first layout (one ``model.safetensors``) load the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from lowbit._io import atomic_dir
from lowbit.errors import ArtefactError, ModelSourceError
from lowbit.models.embeddings import HEAD_PATH
from lowbit.models.files import copy_model_files, safetensors_header
from lowbit.models.quantize import QuantizedModel
from lowbit.plan import Plan
from lowbit.runtime import HOST, Runtime

LAYOUT = "lowbit-quantized-v2"
READABLE = ("lowbit-quantized-v1", LAYOUT)


@contextmanager
def saving(out: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """The temporary directory a quantization writes its shards into; renamed to ``out`` only
    when the block closes without an error (after :func:`finish_saved`)."""
    with atomic_dir(Path(out), overwrite=overwrite) as tmp:
        yield tmp


def save_quantized(
    qm: QuantizedModel, out: Path, provenance: dict[str, Any], *, overwrite: bool = False
) -> Path:
    """Write ``qm`` to the directory ``out`` atomically (layers still in memory included)."""
    with saving(out, overwrite=overwrite) as tmp:
        finish_saved(qm, tmp, provenance)
    return Path(out)


def finish_saved(qm: QuantizedModel, tmp: Path, provenance: dict[str, Any]) -> None:
    """Complete a directory whose block shards the driver wrote (or none): the unquantized
    tensors, any layers still in memory, the index, the config, tokenizer and manifest."""
    from safetensors.torch import save_file

    weight_map = dict(qm.weights.weight_map())
    foreign = {k: v for k, v in weight_map.items() if not (tmp / v).is_file()}
    extra = {**qm.weights.packed_in_memory(), **_foreign(qm, foreign)}
    for key in foreign:
        del weight_map[key]
    for k, tensors in enumerate(_unquantized_shards(qm, extra)):
        name = f"rest-{k:05d}.safetensors"
        save_file(tensors, str(tmp / name), metadata={"format": "pt", "layout": LAYOUT})
        weight_map.update(dict.fromkeys(tensors, name))
    index = {"metadata": {"layout": LAYOUT}, "weight_map": dict(sorted(weight_map.items()))}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    copy_model_files(qm.handle.path, tmp)
    if qm.handle.foreign is not None:  # its tensors are saved dense: no quantization_config
        qm.handle.config.to_json_file(tmp / "config.json")
    (tmp / "lowbit.json").write_text(
        json.dumps(_manifest_of(qm, provenance), indent=2, default=str)
    )


def _foreign(qm: QuantizedModel, keys: dict[str, str]) -> dict[str, torch.Tensor]:
    """Packed tensors of layers that live in another directory's shards (copied here)."""
    from lowbit.models.qstore import KEYS

    out: dict[str, torch.Tensor] = {}
    for name in {k.rsplit(".", 1)[0] for k in keys}:
        out.update({f"{name}.{KEYS[k]}": v for k, v in qm.weights.packed(name).items()})
    return out


def _unquantized_shards(qm: QuantizedModel, extra: dict[str, torch.Tensor]) -> Iterator[dict]:
    """One shard per source weight file of the tensors not quantized (rescaled ones replaced),
    the first also holding ``extra`` and a tied head stored apart."""
    from safetensors import safe_open

    skip = {f"{name}.weight" for name in qm.weights}
    first = dict(extra)
    if qm.untied_head and HEAD_PATH not in qm.weights:
        from lowbit.models.embeddings import read_tensor

        embed = f"{qm.handle.arch.embed_path}.weight"
        first[f"{HEAD_PATH}.weight"] = read_tensor(qm.handle, embed, HOST).contiguous()
    weights = qm.handle.weights()  # a foreign checkpoint's tensors dequantized, scales hidden
    visible = weights.keys()
    for k, file in enumerate(qm.handle.weight_files):
        out = first if k == 0 else {}
        with safe_open(str(file), framework="pt") as reader:
            keys = [key for key in reader.keys() if key in visible]
        stored = weights.read([n for n in keys if n not in skip and n not in qm.smoothed], HOST)
        for key in keys:
            if key in qm.smoothed:  # a norm or bias that AWQ / SmoothQuant rescaled
                out[key] = qm.smoothed[key].contiguous()
            elif key not in skip:
                out[key] = stored[key].contiguous()
        if out:
            yield out


def _manifest_of(qm: QuantizedModel, provenance: dict[str, Any]) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "layout": LAYOUT,
        "plan": qm.plan.to_dict(),
        "layers": {name: qm.weights.layouts[name].to_dict() for name in qm.weights},
        "kept": list(qm.kept),
        "source": qm.handle.describe(),
        "execution": dict(qm.execution),
        "provenance": provenance,
    }
    if qm.activation_ranges:
        manifest["activation_ranges"] = dict(qm.activation_ranges)
    if qm.untied_head:
        manifest["untied_head"] = True
    return manifest


def is_quantized_dir(path: Path) -> bool:
    return (Path(path) / "lowbit.json").is_file()


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a saved directory, checked (layout, fields, plan, shard headers)."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not (path / "lowbit.json").is_file() or not files:
        raise ArtefactError(
            f"{path} is not a lowbit quantized model (no lowbit.json / *.safetensors)"
        )
    try:
        manifest = json.loads((path / "lowbit.json").read_text())
    except ValueError as exc:
        raise ArtefactError(f"{path}/lowbit.json is not valid JSON ({exc}); save again") from exc
    if not isinstance(manifest, dict) or manifest.get("layout") not in READABLE:
        raise ArtefactError(f"{path}/lowbit.json is not a {LAYOUT} manifest; save again")
    missing = [k for k in ("plan", "layers", "source") if k not in manifest]
    if missing:
        raise ArtefactError(f"{path}/lowbit.json lacks {', '.join(missing)}; save again")
    Plan.from_dict(manifest["plan"])  # validates the plan
    for file in files:
        try:
            safetensors_header(file)
        except ModelSourceError as exc:
            raise ArtefactError(str(exc)) from exc
    return manifest


def saved_config(path: Path, manifest: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    if manifest.get("untied_head"):
        config.tie_word_embeddings = False
    return config


def load_quantized(path: Path, runtime: Runtime | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """The dense fake-quantized model (no activation or KV-cache quantization attached) on
    ``runtime`` (default: this machine's), its quantized layers, and the manifest."""
    from lowbit.models.discover import architecture_of
    from lowbit.models.views import saved_view
    from lowbit.runtime import resolve_runtime

    runtime = runtime or resolve_runtime()
    path = Path(path)
    manifest = read_manifest(path)
    config = saved_config(path, manifest)
    view = saved_view(path, manifest, config, architecture_of(config, str(path)))
    lazy = view.lazy(runtime, attach=False)
    model = lazy.materialize("")
    _check_complete(model, path)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    return model, view.quantized, manifest


def _check_complete(model: Any, path: Path) -> None:
    meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if meta:
        raise ArtefactError(f"{path}: tensors missing {meta[:5]}; the directory is damaged")
