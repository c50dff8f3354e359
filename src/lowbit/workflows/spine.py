"""The jobs behind the CLI commands, one function each: quantize, evaluate, run (the demo).

Each validates its outputs before any work, resolves the runtime (device, dtype, memory),
shows progress, prints a table and writes one JSON result with provenance. One model is in
memory at a time: quantization streams blocks to the output, evaluation runs layer-wise
against the reference's cached log-probabilities.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lowbit import api
from lowbit.errors import ConfigError
from lowbit.models.pipeline import ExpertCalibration
from lowbit.plan import Plan
from lowbit.report.console import console, progress_bar, results_table
from lowbit.runtime import RuntimeConfig

if TYPE_CHECKING:
    from lowbit.evaluation.harness import TaskConfig
    from lowbit.models.checkpoint import Checkpoint
    from lowbit.models.quantize import QuantizedModel
    from lowbit.models.sources import ModelHandle
    from lowbit.runtime import Runtime


@dataclass(frozen=True)
class Execution:
    """How a job runs: the runtime request, chunking and propagation."""

    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    chunk_size: int = 4
    propagation: str = "true-sequential"
    reference_cache: Path | None = None
    experts: ExpertCalibration = field(default_factory=ExpertCalibration)


DEFAULT_EXECUTION = Execution()


def quantize_job(
    model: str,
    plan: Plan,
    calib: api.TextConfig,
    out: Path,
    *,
    result_path: Path | None = None,
    execution: Execution = DEFAULT_EXECUTION,
    overwrite: bool = False,
    resume: bool = False,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Quantize ``model`` under ``plan``, writing each block to ``OUT.partial`` as it is done
    (checkpointed: ``resume`` continues an interrupted run) and renaming it to ``out``."""
    result_path = result_path or Path(f"{out}.result.json")
    rt = api.runtime(execution.runtime)  # under torchrun: joins the ranks
    if resume and rt.world.distributed:
        raise ConfigError(
            "--resume is not supported under torchrun: resume the run in one process (same "
            "command without torchrun) or start again with --overwrite"
        )
    if rt.world.writes:
        api.check_outputs(out, result_path, overwrite=overwrite)
        api.check_resumable(out, overwrite=overwrite, resume=resume)
    handle = api.load(model, allow_pickle=allow_pickle)
    api.check_runtime_plan(handle, plan)  # before the calibration text is read
    calib_w = text_windows(handle, calib, calibration=True) if plan.needs_calibration() else None
    if not rt.world.writes:  # another rank: its share of the work; rank 0 writes
        qm = quantize_windows(handle, plan, calib_w, f"rank {rt.world.rank}", rt, execution)
        return {"rank": rt.world.rank, "timings": dict(qm.timings)}
    key = _quantize_key(handle, plan, calib_w, execution, rt)
    try:
        with api.resumable(out, key, overwrite=overwrite, resume=resume) as ckpt:
            if ckpt.done or ckpt.discarded:
                console.print(
                    f"resuming {ckpt.directory}: {ckpt.done} blocks verified and kept"
                    + (f", blocks {ckpt.discarded} redone" if ckpt.discarded else "")
                )
            qm = quantize_windows(handle, plan, calib_w, "quantize", rt, execution, ckpt=ckpt)
            fp = api.footprint(handle, qm)
            summary = {
                **fp.to_dict(),
                "quantize_s": qm.timings["quantize_s"],
                "execution": dict(qm.execution),
                "layers": [asdict(r) for r in qm.layers],
            }
            prov = api.provenance(
                "quantize",
                handle,
                {"plan": plan.to_dict(), "propagation": execution.propagation},
                {"calibration": calib_w.info if calib_w else None},
                dict(qm.timings),
                rt,
            )
            api.finish_save(qm, ckpt.directory, prov)
    except BaseException:
        _say_partial(out)
        raise
    api.write_result(
        result_path, {**prov, "result": summary}, outputs={"tensors": out}, overwrite=overwrite
    )
    console.print(
        f"saved {out}: {fp.bits_per_weight_linear:.3f} bits per weight in the linear layers, "
        f"{fp.bits_per_weight_model:.3f} over the whole model, {fp.size_bytes / 1e6:.1f} MB"
    )
    return summary


def _quantize_key(
    handle: ModelHandle, plan: Plan, calib: api.Windows | None, execution: Execution, rt: Runtime
) -> dict[str, Any]:
    """What a checkpointed quantization's codes depend on (a resumed run must match it)."""
    import hashlib

    ids = None
    if calib is not None:
        ids = hashlib.sha256(calib.ids.contiguous().numpy().tobytes()).hexdigest()
    return {
        "model": handle.fingerprint,
        "source": str(handle.source),
        "plan": plan.to_dict(),
        "calibration_ids": ids,
        "calibration": {k: v for k, v in (calib.info if calib else {}).items() if k != "source"},
        "propagation": execution.propagation,
        "chunk_size": execution.chunk_size,
        "experts": asdict(execution.experts),
        "device": rt.device.type,
        "dtype": str(rt.dtype),
    }


def _say_partial(out: Path) -> None:
    part = Path(f"{out}.partial")
    if part.is_dir():
        console.print(
            f"[yellow]kept {part} (the blocks finished so far): run the same command with "
            "--resume to continue it, or with --overwrite to start again[/yellow]"
        )


def eval_job(
    model: str,
    evalcfg: api.TextConfig | None,
    result_path: Path,
    *,
    reference: str | None = None,
    tasks: TaskConfig | None = None,
    execution: Execution = DEFAULT_EXECUTION,
    overwrite: bool = False,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Perplexity of ``model``; with a reference (``reference``, or the model a saved quantized
    model came from), KL divergence to it too. With ``tasks``, accuracy on tasks too."""
    api.check_outputs(result_path, overwrite=overwrite)
    rt = api.runtime(execution.runtime)  # under torchrun: joins the ranks
    if tasks is not None and rt.world.distributed:
        raise ConfigError(
            "--tasks is not split across torchrun ranks; run the task evaluation in one "
            "process (without torchrun)"
        )
    if tasks is not None:
        api.check_tasks(tasks)  # bad tasks are refused before any model is loaded
    view, handle = api.view_of(model, allow_pickle=allow_pickle)
    out: dict[str, Any] = {}
    data: dict[str, Any] = {}
    if evalcfg is not None:
        results, data["eval"] = _eval_text(model, view, handle, evalcfg, reference, rt, execution,
                                           allow_pickle)  # fmt: skip
        out["results"] = {k: v.to_dict() for k, v in results.items()}
    if tasks is not None:
        from lowbit.evaluation.compare import category_rows
        from lowbit.workflows.tasks import tasks_of

        run = tasks_of(model, model, handle, tasks, rt, allow_pickle)
        out["tasks"] = run.to_dict()
        out["categories"] = category_rows(run.samples)
    config = {
        "eval": asdict(evalcfg) if evalcfg else None,
        "reference": reference,
        "reference_used": _reference_used(model, reference, evalcfg),
        "tasks": None if tasks is None else {**asdict(tasks), "source": tasks.source.value},
    }
    prov = api.provenance("eval", handle, config, data, {}, rt)
    result = {**prov, **out}
    if rt.world.writes:  # under torchrun: rank 0 (every rank holds the same figures)
        api.write_result(result_path, result, overwrite=overwrite)
    return result


def _eval_text(
    model: str,
    view: Any,
    handle: ModelHandle,
    evalcfg: api.TextConfig,
    reference: str | None,
    rt: Runtime,
    execution: Execution,
    allow_pickle: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    windows = text_windows(handle, evalcfg, calibration=False)
    if reference is not None:
        ref_view, _ = api.view_of(reference, allow_pickle=allow_pickle)
    elif api.saved_origin(model) is not None:
        ref_view = api.model_view(handle)
        console.print(
            f"note: no --reference given: KL divergence against {handle.source}, the model "
            f"{model} was quantized from"
        )
    else:  # a plain model: perplexity alone, no reference to cache
        with progress_bar("evaluating", None) as update:
            results = {"model": api.perplexity(view, windows, rt, progress=update)}
        ref_view = None
    if ref_view is not None:
        with progress_bar("evaluating", None) as update:
            results = api.evaluate(
                ref_view, {"model": view}, windows, rt, cache=execution.reference_cache,
                progress=update,
            )  # fmt: skip
    rows = [_row(model if name == "model" else name, r) for name, r in results.items()]
    console.print(results_table(rows, f"{model} on {windows.info['source']}"))
    return results, windows.info


def run_job(
    model: str,
    evalcfg: api.TextConfig,
    calib: api.TextConfig,
    result_path: Path,
    *,
    execution: Execution = DEFAULT_EXECUTION,
    overwrite: bool = False,
) -> dict[str, Any]:
    """The demo: the original model against RTN W4, GPTQ W4 and GPTQ W3 (group 64, symmetric),
    each quantized and then evaluated on its own, one model in memory at a time."""
    api.check_outputs(result_path, overwrite=overwrite)
    rt = api.runtime(execution.runtime)
    handle = api.load(model)
    plans = {
        "RTN W4 g64": api.spec_from_options(4, 64, True, "rtn"),
        "GPTQ W4 g64": api.spec_from_options(4, 64, True, "gptq"),
        "GPTQ W3 g64": api.spec_from_options(3, 64, True, "gptq"),
    }
    windows = text_windows(handle, evalcfg, calibration=False)  # bad input fails here
    calib_w = text_windows(handle, calib, calibration=True)
    api.check_distinct_texts(windows, calib_w)
    reference = api.model_view(handle)
    with progress_bar("original: reference log-probabilities", None) as update:
        path, ref_s = api.reference_cache(
            reference, windows, rt, path=execution.reference_cache, progress=update
        )
    results, rows = {}, []
    for name, spec in plans.items():
        qm = quantize_windows(handle, api.plan_from_options(spec), calib_w, name, rt, execution)
        with progress_bar(f"{name}: evaluating", None) as update:
            res = api.evaluate(
                reference, {name: api.quantized_view(qm, name)}, windows, rt, cache=path,
                progress=update,
            )  # fmt: skip
        results.setdefault("reference", res["reference"])
        results[name] = res[name]
        rows.append(_row(name, res[name], api.footprint(handle, qm), qm.timings["quantize_s"]))
        del qm, res
    original = replace(results["reference"], seconds=ref_s)
    rows.insert(0, _row(f"original ({_short(rt)})", original, api.footprint(handle, None)))
    title = (
        f"{model}: eval on {windows.info['source']} "
        f"({windows.info['windows']} × {evalcfg.ctx} tokens; {rt.describe()['device_name']}, "
        f"{rt.describe()['dtype']})"
    )
    console.print(results_table(rows, title))
    prov = api.provenance(
        "run",
        handle,
        {
            "eval": asdict(evalcfg),
            "calibration": asdict(calib),
            "plans": {k: v.to_dict() for k, v in plans.items()},
        },
        {"eval": windows.info, "calibration": calib_w.info},
        {r["name"]: r["quantize_s"] or 0.0 for r in rows},
        rt,
    )
    out = {**prov, "rows": rows, "results": {k: v.to_dict() for k, v in results.items()}}
    api.write_result(result_path, out, overwrite=overwrite)
    console.print(f"result written to {result_path}")
    return out


def text_windows(
    handle: ModelHandle, cfg: api.TextConfig, *, calibration: bool, held_out: int = 0
) -> api.Windows:
    """:func:`api.text_windows`, stating a default text that replaced a missing option (the
    result records it too: ``source_given`` and ``default_note`` in the text's info)."""
    windows = api.text_windows(handle, cfg, calibration=calibration, held_out=held_out)
    if "default_note" in windows.info:
        console.print(f"note: {windows.info['default_note']}")
    return windows


def quantize_windows(
    handle: ModelHandle,
    plan: Plan,
    windows: api.Windows | None,
    label: str,
    rt: Runtime,
    execution: Execution = DEFAULT_EXECUTION,
    *,
    ckpt: Checkpoint | None = None,
) -> QuantizedModel:
    """Quantize with a progress bar; ``windows`` when the plan needs calibration; ``ckpt``:
    the checkpoint to write blocks into (see :func:`api.resumable`)."""
    t0 = time.perf_counter()
    with progress_bar(f"{label}: blocks", None) as update:
        qm = api.quantize(
            handle,
            plan,
            windows if plan.needs_calibration() else None,
            rt=rt,
            propagation=execution.propagation,
            chunk_size=execution.chunk_size,
            experts=execution.experts,
            progress=update,
            checkpoint=ckpt,
        )
    return replace(qm, timings={**qm.timings, "wall_s": time.perf_counter() - t0})


def _reference_used(model: str, reference: str | None, evalcfg: Any) -> str | None:
    """The reference the text evaluation compared with, and whether it was a default."""
    if evalcfg is None:
        return None
    if reference is not None:
        return reference
    origin = api.saved_origin(model)
    if origin is None:
        return None
    return f"{origin.source} (default: the model {model} was quantized from)"


def _short(rt: Runtime) -> str:
    name = str(rt.dtype).removeprefix("torch.")
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(name, name)


def _row(
    name: str,
    res: Any,
    fp: Any = None,
    quantize_s: float | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "bits_per_weight_linear": fp.bits_per_weight_linear if fp else None,
        "bits_per_weight_model": fp.bits_per_weight_model if fp else None,
        "size_bytes": fp.size_bytes if fp else None,
        "full_precision": fp.full_precision if fp else None,
        "perplexity": res.perplexity,
        "kl_mean": res.kl["mean"] if res.kl else None,
        "top1_agreement": res.top1_agreement,
        "quantize_s": quantize_s,
        "eval_s": res.seconds,
    }
