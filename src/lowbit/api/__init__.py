"""The public Python API: load a model, quantize it under a plan, evaluate, save, compare.

Every function returns plain data and writes JSON results with provenance (lowbit version,
model and data fingerprints, the full configuration, seed, timings, machine).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowbit import __version__
from lowbit._io import check_new_output, library_versions, machine_info, peak_rss_bytes, write_json
from lowbit.errors import ArtefactError, ConfigError, DataError
from lowbit.plan import LayerSpec, Plan, uniform_plan


@dataclass(frozen=True)
class TextConfig:
    """A text source spec (path, ``builtin:NAME`` or ``NAME:CONFIG:SPLIT``) cut into windows."""

    source: str = "builtin:python-docs"
    ctx: int = 512
    windows: int | None = 40
    seed: int = 0

    def __post_init__(self) -> None:
        if self.ctx < 2:
            raise ConfigError(f"ctx must be at least 2 tokens, got {self.ctx}")
        if self.windows is not None and self.windows <= 0:
            raise ConfigError(f"the number of windows must be positive, got {self.windows}")


@dataclass
class Windows:
    ids: Any
    info: dict[str, Any] = field(default_factory=dict)


def load(model: str, *, allow_pickle: bool = False) -> Any:
    """Resolve a model source (HF directory, GGUF file, built-in name) to a handle."""
    from lowbit.models.sources import resolve_model

    return resolve_model(model, allow_pickle=allow_pickle)


def text_windows(handle: Any, cfg: TextConfig, *, calibration: bool) -> Windows:
    """Tokenize ``cfg.source`` once and cut evaluation (consecutive) or calibration (seeded
    random) windows; records the source's fingerprint and the selection."""
    from lowbit.evaluation import text as T

    limit = getattr(handle.config, "max_position_embeddings", None)
    if limit is not None and cfg.ctx > limit:
        raise DataError(
            f"ctx {cfg.ctx} is longer than {handle.source} supports ({limit} positions); "
            f"use --ctx {limit} or less"
        )
    source = T.parse_text_source(cfg.source, part="calib" if calibration else "eval")
    raw = T.load_text(source)
    ids = T.tokenize(handle.load_tokenizer(), raw)
    what = f"text {source.describe()}"
    if calibration:
        windows = T.calibration_windows(ids, cfg.ctx, cfg.windows or 128, cfg.seed, what)
    else:
        windows = T.eval_windows(ids, cfg.ctx, cfg.windows, what)
    info = {
        "source": source.describe(),
        "fingerprint": T.text_fingerprint(raw),
        "tokens": int(ids.numel()),
        "windows": int(windows.shape[0]),
        "ctx": cfg.ctx,
        "selection": f"seeded random offsets, seed {cfg.seed}"
        if calibration
        else "consecutive non-overlapping windows from the start",
    }
    return Windows(windows, info)


def check_distinct_texts(evaluation: Windows, calibration: Windows) -> None:
    """Calibration must not see the evaluation text."""
    if evaluation.info["fingerprint"] == calibration.info["fingerprint"]:
        raise ConfigError(
            f"the calibration text {calibration.info['source']} is the evaluation text "
            f"{evaluation.info['source']}; calibrate on another text (e.g. a validation split)"
        )


def quantize(
    handle: Any,
    plan: Plan,
    calib: Windows | None,
    *,
    propagation: str = "true-sequential",
    progress: Any = None,
) -> Any:
    """Quantize ``handle`` under ``plan`` (block by block); returns a QuantizedModel. Static
    activation scales are then calibrated on ``calib`` with the quantized weights.

    ``propagation``: ``true-sequential`` (one pass, fastest) or ``two-pass`` (least memory)."""
    from lowbit.models.quantize import PipelineConfig, quantize_model

    check_runtime_plan(handle, plan)
    ids = None if calib is None else calib.ids
    pipeline = PipelineConfig(propagation)
    smoothquant = None
    if plan.smoothquant is not None:  # the plan's alpha, applied block by block by the driver
        from lowbit.algorithms import SmoothQuantConfig

        smoothquant = SmoothQuantConfig(plan.smoothquant)
    extra = {} if smoothquant is None else {"smoothquant": smoothquant}
    qm = quantize_model(handle, plan, ids, pipeline=pipeline, progress=progress, **extra)
    if plan.activations is not None and plan.activations.needs_calibration:
        from lowbit.models.fakequant import calibrate_static_activations

        t0 = time.perf_counter()
        qm.activation_ranges = calibrate_static_activations(handle, qm, ids)
        qm.timings["activation_calibration_s"] = time.perf_counter() - t0
    return qm


def check_runtime_plan(handle: Any, plan: Plan) -> None:
    """Refuse, before any work, plan-level options this model or build cannot honour."""
    if plan.kv_cache is not None:
        from lowbit.models.kvcache import KV_MODEL_TYPES

        model_type = str(getattr(handle.config, "model_type", "?"))
        if model_type not in KV_MODEL_TYPES:
            raise ConfigError(
                f"{handle.source}: KV-cache quantization is not supported for architecture "
                f"{model_type!r} (supported: {', '.join(KV_MODEL_TYPES)}); remove kv_cache "
                "from the plan"
            )


def save(qm: Any, out: Path, provenance: dict[str, Any], *, overwrite: bool = False) -> Path:
    from lowbit.models.saving import save_quantized

    return save_quantized(qm, out, provenance, overwrite=overwrite)


def fake_quant_model(handle: Any, qm: Any) -> Any:
    """A dense model with ``qm``'s dequantized weights, and its plan's activation and KV-cache
    quantization attached."""
    from lowbit.models.fakequant import fake_quant

    return fake_quant(handle.load_model(), qm)


def load_for_eval(source: str, *, allow_pickle: bool = False) -> tuple[Any, Any, dict | None]:
    """(model, handle of the original, manifest) for a model source or a saved quantized dir."""
    from lowbit.models.saving import is_quantized_dir, load_quantized

    if is_quantized_dir(Path(source)):
        from lowbit.models.fakequant import attach_runtime

        model, weights, manifest = load_quantized(Path(source))
        plan = Plan.from_dict(manifest["plan"])
        attach_runtime(model, plan, weights, manifest.get("activation_ranges"))
        return model, _origin(manifest), manifest
    handle = load(source, allow_pickle=allow_pickle)
    return handle.load_model(), handle, None


def _origin(manifest: dict[str, Any]) -> Any:
    """The model a saved quantized model was made from, by the name it was given (a built-in
    name or a GGUF file keeps its identity, which the GGUF export needs), else by its path."""
    from lowbit.models.builtin import BUILTIN_MODELS

    origin = manifest["source"]
    name = str(origin["source"])
    if name in BUILTIN_MODELS or (name.lower().endswith(".gguf") and Path(name).is_file()):
        return load(name)
    return load(origin["path"] if Path(origin["path"]).is_dir() else name)


def load_saved(path: Path) -> tuple[Any, Any]:
    """(QuantizedModel, dense fake-quantized model) of a directory saved by ``lowbit quantize``;
    the QuantizedModel's handle is the model it was made from."""
    from lowbit.models.quantize import QuantizedModel
    from lowbit.models.saving import load_quantized

    model, weights, manifest = load_quantized(Path(path))
    handle = _origin(manifest)
    check_origin(str(path), handle, manifest)
    plan = Plan.from_dict(manifest["plan"])
    return QuantizedModel(handle, plan, weights, list(manifest.get("kept", []))), model


def export(
    qm: Any,
    model: Any,
    target: str,
    out: Path,
    *,
    dtype: str = "float32",
    allow_unfused: bool = False,
    figures: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Any:
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


def check_origin(source: str, handle: Any, manifest: dict[str, Any]) -> None:
    """A saved quantized model must be compared with the very model it was made from."""
    origin = manifest["source"]
    if handle.fingerprint != origin["fingerprint"]:
        raise ArtefactError(
            f"{source} was quantized from a model with fingerprint {origin['fingerprint']}, "
            f"but {origin['source']} now has {handle.fingerprint}; pass --reference "
            "explicitly if you mean to compare against it"
        )


def evaluate(
    reference: Any, candidates: dict[str, Any], windows: Windows, *, progress: Any = None
) -> dict[str, Any]:
    from lowbit.evaluation.metrics import evaluate_models

    return evaluate_models(reference, candidates, windows.ids, progress=progress)


def footprint(handle: Any, qm: Any | None) -> Any:
    """Stored size and honest bits per weight (linear layers, whole model)."""
    from lowbit.models.footprint import footprint as _footprint

    return _footprint(handle, qm)


def provenance(
    command: str,
    handle: Any,
    config: dict[str, Any],
    data: dict[str, Any],
    timings: dict[str, float],
) -> dict[str, Any]:
    return {
        "lowbit_version": __version__,
        "command": command,
        "model": handle.describe(),
        "data": data,
        "config": config,
        "timings_s": timings,
        "peak_rss_bytes": peak_rss_bytes(),
        "machine": machine_info(),
        "libraries": library_versions(),
        "created_unix": time.time(),
    }


def provenance_light(command: str) -> dict[str, Any]:
    """Provenance for a result that reads no model weights."""
    return {
        "lowbit_version": __version__,
        "command": command,
        "machine": machine_info(),
        "libraries": library_versions(),
        "created_unix": time.time(),
    }


def write_result(path: Path, result: dict[str, Any], *, overwrite: bool = False) -> None:
    write_json(path, result, overwrite=overwrite)


def spec_from_options(
    bits: int,
    group_size: int,
    symmetric: bool,
    algorithm: str,
    act_order: str = "static",
    damp: float = 0.01,
    block_size: int = 128,
    granularity: str = "group",
    fmt: str = "int",
    clipping: str = "minmax",
) -> LayerSpec:
    """A LayerSpec from typed command-line options; unknown names get suggestions. ``fmt`` is a
    registered format name (``int`` and ``lut`` take ``bits``; ``int`` takes ``symmetric``);
    ``clipping`` (minmax, mse, or percentile:P) applies to RTN."""
    from lowbit.algorithms import ALGORITHMS, GPTQConfig, RTNConfig
    from lowbit.formats import FORMATS, IntFormat, PerChannel, PerGroup, PerTensor
    from lowbit.formats.clipping import MinMax, MSEClip, Percentile

    grans = {"group": lambda: PerGroup(group_size), "channel": PerChannel, "tensor": PerTensor}
    if granularity not in grans:
        raise ConfigError(f"unknown granularity {granularity!r}; use group, channel or tensor")
    make = FORMATS.get(fmt)
    weight_fmt = (
        IntFormat(bits, symmetric) if fmt == "int" else make(bits) if fmt == "lut" else make()
    )
    kind, _, arg = clipping.partition(":")
    clips = {"minmax": MinMax, "mse": MSEClip, "percentile": lambda: Percentile(float(arg or 99.9))}
    if kind not in clips:
        raise ConfigError(f"unknown clipping {clipping!r}; use minmax, mse or percentile[:P]")
    config_type = ALGORITHMS.get(algorithm)
    if kind != "minmax" and config_type is not RTNConfig:
        raise ConfigError(
            f"--clipping {clipping} applies to RTN; {algorithm} chooses its own ranges"
        )
    if config_type is GPTQConfig:
        algo: Any = GPTQConfig(damp=damp, block_size=block_size, act_order=act_order)
    elif config_type is RTNConfig:
        algo = RTNConfig(clipping=clips[kind]())
    else:
        algo = config_type()
    return LayerSpec(weight_fmt, grans[granularity](), algo)


def plan_from_options(spec: LayerSpec) -> Plan:
    return uniform_plan(spec)


def check_outputs(*paths: Path | None, overwrite: bool = False) -> None:
    """Refuse existing outputs before any work is done."""
    for path in paths:
        if path is not None:
            check_new_output(Path(path), overwrite=overwrite)


# the analysis, cost and task parts of the API live in their own modules
from lowbit.api.analysis import allocate, load_table, sensitivity  # noqa: E402, F401
from lowbit.api.cost import estimate_performance, model_config, this_machine_for  # noqa: E402, F401
from lowbit.api.tasks import compare_task_runs, evaluate_tasks  # noqa: E402, F401
