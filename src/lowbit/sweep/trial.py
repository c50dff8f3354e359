"""One trial of a sweep: quantize a model under a plan and evaluate it, through lowbit's API.

:func:`run_trial` is what a Ray task (or the in-process executor) runs; it returns plain JSON
(metrics, artefact paths, provenance, seconds) and writes the trial's full result beside the
store (``trials/HASH.json``, atomically). The reference's log-probabilities come from the
shared reference cache, so each (model, text) pair is computed once; a trial with a task set
evaluates it on the quantized model through the harness against the original model's run,
taken from the task cache (computed once per model and task set).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lowbit import api
from lowbit.plan import Plan
from lowbit.runtime import using_cpu_threads
from lowbit.sweep.grid import TrialConfig, task_config


def run_trial(digest: str, config: TrialConfig, artefacts: Path) -> dict[str, Any]:
    """Quantize and evaluate one trial with ``config["threads"]`` torch threads (recorded in
    the provenance's runtime); ``{"metrics", "artefacts", "provenance", "seconds"}``."""
    with using_cpu_threads(config["threads"]):
        return _run_trial(digest, config, artefacts)


def _run_trial(digest: str, config: TrialConfig, artefacts: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    rt = api.runtime(api.RuntimeConfig(**config["runtime"]))
    handle = api.load(config["model"])
    plan = Plan.from_dict(config["plan"])
    calib = None
    if config["calibration"] is not None:
        calib = api.text_windows(handle, api.TextConfig(**config["calibration"]), calibration=True)
    windows = api.text_windows(handle, api.TextConfig(**config["eval"]), calibration=False)
    qm = api.quantize(handle, plan, calib, rt=rt)
    fp = api.footprint(handle, qm)
    res = api.evaluate(api.model_view(handle), {"trial": api.quantized_view(qm)}, windows, rt)
    trial, ref = res["trial"], res["reference"]
    metrics = {
        "bits_per_weight_linear": fp.bits_per_weight_linear,
        "bits_per_weight_model": fp.bits_per_weight_model,
        "size_bytes": fp.size_bytes,
        "perplexity": trial.perplexity,
        "reference_perplexity": ref.perplexity,
        "kl_mean": trial.kl["mean"] if trial.kl else None,
        "top1_agreement": trial.top1_agreement,
    }
    timings = {**qm.timings, "eval_s": trial.seconds}
    extra: dict[str, Any] = {}
    if config.get("tasks") is not None:
        t1 = time.perf_counter()
        extra = _tasks(config, handle, qm, rt)
        metrics |= _task_metrics(extra["comparison"])
        timings["tasks_s"] = time.perf_counter() - t1
    timings["trial_s"] = time.perf_counter() - t0
    data = {"calibration": calib.info if calib else None, "eval": windows.info}
    prov = api.provenance("sweep trial", handle, config, data, timings, rt)
    path = artefacts / f"{digest}.json"
    record = {**prov, "hash": digest, "metrics": metrics, "eval": trial.to_dict(), **extra}
    api.write_result(path, record, overwrite=True)
    return {
        "metrics": metrics,
        "artefacts": {"result": str(path)},
        "provenance": {k: prov[k] for k in ("lowbit_version", "model", "runtime", "machine",
                                            "libraries", "timings_s")},
        "seconds": time.perf_counter() - t0,
    }  # fmt: skip


def _tasks(config: TrialConfig, handle: Any, qm: Any, rt: Any) -> dict[str, Any]:
    """The trial's task set on the original model (cached) and on the quantized one, one whole
    model in memory at a time; their runs and per-sample comparison."""
    cfg = task_config(config["tasks"])
    ref, key = api.cached_task_run(config["model"], handle, cfg, rt)
    if ref is None:
        model, _ = api.load_for_tasks(config["model"], rt)
        ref = api.evaluate_tasks(model, handle, cfg)
        del model
        if key is not None:
            api.store_task_run(key, ref)
    model = api.fake_quant_model(handle, qm, rt)
    quant = api.evaluate_tasks(model, handle, cfg)
    del model
    runs = {"reference": ref.to_dict(), "quantized": quant.to_dict()}
    return {"runs": runs, "comparison": api.compare_task_runs(ref, quant)}


def _task_metrics(comparison: dict[str, Any]) -> dict[str, Any]:
    """Per task: the quantized and reference accuracy and the flips both ways (flat keys, so
    that ``lowbit results`` lists and exports them as columns)."""
    out: dict[str, Any] = {}
    for task, row in comparison["tasks"].items():
        out[f"{task}:acc"] = row["acc_quant"]
        out[f"{task}:acc_ref"] = row["acc_ref"]
        out[f"{task}:flips_to_wrong"] = row["flips_to_wrong"]
        out[f"{task}:flips_to_right"] = row["flips_to_right"]
    return out
