"""The API's quantization functions: quantize, save, reload, footprint, export."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from lowbit.api.core import JsonDict, Windows, load, runtime
from lowbit.errors import ArtefactError, ConfigError
from lowbit.models.pipeline import ExpertCalibration
from lowbit.plan import Plan

if TYPE_CHECKING:
    from torch import nn

    from lowbit.export import ExportReport
    from lowbit.models.checkpoint import Checkpoint
    from lowbit.models.footprint import Footprint
    from lowbit.models.quantize import QuantizedModel
    from lowbit.models.sources import ModelHandle
    from lowbit.runtime import Runtime

Progress = Callable[[int, int], None]


def quantize(
    handle: ModelHandle,
    plan: Plan,
    calib: Windows | None,
    *,
    rt: Runtime | None = None,
    propagation: str = "true-sequential",
    chunk_size: int = 4,
    experts: ExpertCalibration | None = None,
    progress: Progress | None = None,
    shard_dir: Path | None = None,
    checkpoint: Checkpoint | None = None,
) -> QuantizedModel:
    """Quantize ``handle`` under ``plan`` block by block on ``rt`` (default: this machine's
    runtime); static activation scales are then calibrated on ``calib`` with the quantized
    weights. With ``shard_dir`` (see :func:`saving`), each block's layers are written there as
    soon as the block is done; with ``checkpoint`` (see :func:`resumable`), into its
    directory, each finished block recorded and those an earlier run finished restored.

    ``propagation``: ``true-sequential`` (later layers see quantized earlier ones) or
    ``two-pass`` (statistics from the original block; least memory). ``experts``: how
    calibration tokens reach a mixture's experts (default: every token through every
    expert)."""
    from lowbit.models.quantize import PipelineConfig, quantize_model

    rt = rt or runtime()
    check_runtime_plan(handle, plan)
    ids = None if calib is None else calib.ids
    smoothquant = None
    if plan.smoothquant is not None:  # the plan's alpha, applied block by block by the driver
        from lowbit.algorithms import SmoothQuantConfig

        smoothquant = SmoothQuantConfig(plan.smoothquant)
    qm = quantize_model(
        handle,
        plan,
        ids,
        runtime=rt,
        pipeline=PipelineConfig(propagation, chunk_size, experts or ExpertCalibration()),
        progress=progress,
        smoothquant=smoothquant,
        shard_dir=shard_dir,
        checkpoint=checkpoint,
    )
    if plan.activations is not None and plan.activations.needs_calibration:
        from lowbit.models.fakequant import calibrate_static_activations

        if ids is None:
            raise ConfigError("static activation scales need calibration windows; give --calib")
        t0 = time.perf_counter()
        ranges = calibrate_static_activations(qm, ids, rt)
        timings = {**qm.timings, "activation_calibration_s": time.perf_counter() - t0}
        qm = replace(qm, activation_ranges=ranges, timings=timings)
    return qm


def check_runtime_plan(handle: ModelHandle, plan: Plan) -> None:
    """Refuse, before any work, a plan that does not fit this model (rules naming or matching
    no layer, no layer quantized) and plan-level options this model or build cannot honour."""
    names = list(handle.arch.layer_names())
    plan.resolve(names)
    plan.check_does_something(names)
    if plan.kv_cache is not None:
        from lowbit.models.kvcache import KV_MODEL_TYPES

        model_type = str(getattr(handle.config, "model_type", "?"))
        if model_type not in KV_MODEL_TYPES:
            raise ConfigError(
                f"{handle.source}: KV-cache quantization is not supported for architecture "
                f"{model_type!r} (supported: {', '.join(KV_MODEL_TYPES)}); remove kv_cache "
                "from the plan"
            )


@contextmanager
def saving(out: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """A temporary directory to quantize into (``quantize(..., shard_dir=tmp)``), published as
    ``out`` after :func:`finish_save` only if no error occurred."""
    from lowbit.models.saving import saving as _saving

    with _saving(out, overwrite=overwrite) as tmp:
        yield tmp


def check_resumable(out: Path, *, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse, before any work, an interrupted run's ``OUT.partial`` without ``resume`` or
    ``overwrite``."""
    from lowbit.models.checkpoint import check_partial

    check_partial(out, overwrite=overwrite, resume=resume)


@contextmanager
def resumable(
    out: Path, key: JsonDict, *, overwrite: bool = False, resume: bool = False
) -> Iterator[Checkpoint]:
    """The checkpoint of a quantization streamed into ``OUT.partial`` (continued with
    ``resume`` when that directory holds one made with the same ``key``), published as ``out``
    after :func:`finish_save` only if no error occurred; kept after an interruption."""
    from lowbit.models.checkpoint import Checkpoint, resumable_dir

    with resumable_dir(out, overwrite=overwrite, resume=resume) as part:
        yield Checkpoint.start(part, key, resume=resume)


def finish_save(qm: QuantizedModel, tmp: Path, provenance: JsonDict) -> None:
    from lowbit.models.saving import finish_saved

    finish_saved(qm, tmp, provenance)


def save(qm: QuantizedModel, out: Path, provenance: JsonDict, *, overwrite: bool = False) -> Path:
    """Write ``qm`` (layers in memory or in another directory) to ``out`` atomically."""
    from lowbit.models.saving import save_quantized

    return save_quantized(qm, out, provenance, overwrite=overwrite)


def fake_quant_model(
    handle: ModelHandle, qm: QuantizedModel, rt: Runtime | None = None
) -> nn.Module:
    """The whole dense model with ``qm``'s dequantized weights and its plan's activation and
    KV-cache quantization attached (for the stages that need every layer at once)."""
    from lowbit.models.fakequant import fake_quant

    return fake_quant(handle.load_model(rt or runtime()), qm)


def load_saved(path: Path, rt: Runtime | None = None) -> tuple[QuantizedModel, nn.Module]:
    """(QuantizedModel, dense fake-quantized model) of a directory saved by ``lowbit quantize``;
    the QuantizedModel's handle is the model it was made from."""
    from lowbit.models.quantize import QuantizedModel
    from lowbit.models.saving import load_quantized

    model, layers, manifest = load_quantized(Path(path), rt or runtime())
    handle = origin(manifest)
    check_origin(str(path), handle, manifest)
    plan = Plan.from_dict(manifest["plan"])
    qm = QuantizedModel(
        handle,
        plan,
        layers,
        tuple(manifest.get("kept", [])),
        activation_ranges=dict(manifest.get("activation_ranges") or {}),
        untied_head=bool(manifest.get("untied_head")),
        execution=dict(manifest.get("execution") or {}),
    )
    return qm, model


def origin(manifest: JsonDict) -> ModelHandle:
    """The model a saved quantized model was made from, by the name it was given (a built-in
    name or a GGUF file keeps its identity, which the GGUF export needs), else by its path."""
    from lowbit.models.builtin import BUILTIN_MODELS

    source = manifest["source"]
    name = str(source["source"])
    if name in BUILTIN_MODELS or (name.lower().endswith(".gguf") and Path(name).is_file()):
        return load(name)
    return load(source["path"] if Path(source["path"]).is_dir() else name)


def check_origin(source: str, handle: ModelHandle, manifest: JsonDict) -> None:
    """A saved quantized model must be compared with the very model it was made from."""
    made_from = manifest["source"]
    if handle.fingerprint != made_from["fingerprint"]:
        raise ArtefactError(
            f"{source} was quantized from a model with fingerprint {made_from['fingerprint']}, "
            f"but {made_from['source']} now has {handle.fingerprint}; pass --reference "
            "explicitly if you mean to compare against it"
        )


def footprint(handle: ModelHandle, qm: QuantizedModel | None) -> Footprint:
    """Stored size and honest bits per weight (linear layers, whole model)."""
    from lowbit.models.footprint import footprint as _footprint

    return _footprint(handle, qm)


def export(
    qm: QuantizedModel,
    model: nn.Module,
    target: str,
    out: Path,
    *,
    dtype: str = "float32",
    allow_unfused: bool = False,
    figures: JsonDict | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Write ``qm`` (with ``model``, its dense fake-quantized twin, which is consumed) to
    ``target`` ('compressed-tensors' or 'gguf'); returns an ExportReport."""
    from lowbit.export import ExportInput, ExportOptions, Target
    from lowbit.export.common import check_weight_only
    from lowbit.export.compressed import write_compressed_tensors
    from lowbit.export.gguf_file import write_gguf

    opts = ExportOptions(target, dtype, allow_unfused, overwrite)  # type: ignore[arg-type]
    check_weight_only(qm, opts.target)
    writer = write_gguf if opts.target is Target.GGUF else write_compressed_tensors
    return writer(ExportInput(qm, model, figures), Path(out), opts)
