"""The points of ``lowbit pareto``: each a plan quantized and evaluated, in this process
against one cached reference, or handed to a runner as a sweep trial (Ray tasks, a results
store); either way one JSON row per point in ``OUT/points/``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lowbit import api
from lowbit._io import write_json
from lowbit.errors import ConfigError
from lowbit.plan import Plan
from lowbit.report.console import progress_bar
from lowbit.runtime import cpu_threads
from lowbit.workflows.spine import DEFAULT_EXECUTION, Execution, quantize_windows


@dataclass(frozen=True)
class Point:
    """One plan of the sweep, with what the allocation predicted for it."""

    name: str
    method: str
    budget: float | None
    plan: Plan
    predicted_loss: float | None
    predicted_bits_per_weight: float | None
    record: dict[str, Any] | None = None


Runner = Callable[[list[tuple[str, dict[str, Any]]]], dict[str, dict[str, Any]]]


def trial_config(
    plan: Plan, model: str, calib: api.TextConfig, evalcfg: api.TextConfig, execution: Execution
) -> dict[str, Any]:
    """A point as a sweep trial's configuration (plain JSON, the sweep grid's shape), run with
    this process's torch thread count (GPTQ's figures depend on it)."""
    return {
        "model": model,
        "plan": plan.to_dict(),
        "calibration": text_json(calib) if plan.needs_calibration() else None,
        "eval": text_json(evalcfg),
        "runtime": runtime_json(execution),
        "threads": cpu_threads(),
    }


def text_json(text: api.TextConfig) -> dict[str, Any]:
    """A text's configuration as a trial carries it (the sweep grid's ``TextChoice`` fields)."""
    return {k: getattr(text, k) for k in ("source", "ctx", "windows", "seed", "bos")}


def runtime_json(execution: Execution) -> dict[str, Any]:
    """The runtime a trial runs on. A trial runs with the default propagation, chunking and
    expert calibration, so an execution that asks for others is refused rather than measured
    differently."""
    if replace(execution, runtime=DEFAULT_EXECUTION.runtime) != DEFAULT_EXECUTION:
        raise ConfigError(
            "work run as sweep trials (--ray) uses the default propagation, chunk size and "
            "expert calibration; run without --ray to use other settings"
        )
    rt = execution.runtime
    return {"device": rt.device, "dtype": rt.dtype, "offload": rt.offload.value,
            "max_memory": rt.max_memory}  # fmt: skip


def trial_row(p: Point, trial: dict[str, Any]) -> dict[str, Any]:
    """A point's row from the full result of the trial that measured it."""
    m = trial["metrics"]
    return {
        "name": p.name, "method": p.method, "budget": p.budget,
        "predicted_loss": p.predicted_loss,
        "predicted_bits_per_weight": p.predicted_bits_per_weight,
        **{k: m[k] for k in ("bits_per_weight_linear", "size_bytes", "kl_mean", "perplexity",
                             "reference_perplexity", "top1_agreement")},
        "quantize_s": trial["timings_s"]["quantize_s"], "plan": p.plan.to_dict(),
        "eval": trial["eval"], "allocation": p.record, "trial": trial["hash"],
    }  # fmt: skip


def measure_here(
    handle: Any,
    todo: list[Point],
    calib_w: api.Windows,
    windows: api.Windows,
    store: Path,
    execution: Execution,
) -> None:
    """Measure the points one by one in this process, against one cached reference."""
    rt = api.runtime(execution.runtime)
    reference = api.model_view(handle)
    with progress_bar("reference log-probabilities", None) as update:
        cache, _ = api.reference_cache(reference, windows, rt, progress=update)
    for point in todo:
        _measure(handle, point, calib_w, windows, store, rt, execution, cache)


def _measure(
    handle: Any,
    p: Point,
    calib_w: api.Windows,
    windows: api.Windows,
    store: Path,
    rt: Any,
    execution: Execution,
    cache: Path,
) -> None:
    """Quantize one point, evaluate it against the cached reference, store its row."""
    qm = quantize_windows(handle, p.plan, calib_w, p.name, rt, execution)
    fp = api.footprint(handle, qm)
    with progress_bar(f"{p.name}: evaluating", None) as update:
        results = api.evaluate(
            api.model_view(handle), {p.name: api.quantized_view(qm, p.name)}, windows, rt,
            cache=cache, progress=update,
        )  # fmt: skip
    res = results[p.name]
    row = {
        "name": p.name,
        "method": p.method,
        "budget": p.budget,
        "predicted_loss": p.predicted_loss,
        "predicted_bits_per_weight": p.predicted_bits_per_weight,
        "bits_per_weight_linear": fp.bits_per_weight_linear,
        "size_bytes": fp.size_bytes,
        "kl_mean": res.kl["mean"] if res.kl else None,
        "perplexity": res.perplexity,
        "reference_perplexity": results["reference"].perplexity,
        "top1_agreement": res.top1_agreement,
        "quantize_s": qm.timings["wall_s"],
        "plan": p.plan.to_dict(),
        "eval": res.to_dict(),
        "allocation": p.record,
    }
    write_json(store / f"{slug(p.name)}.json", row, overwrite=True)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in name)
