"""The jobs behind the CLI commands, one function each: quantize, evaluate, run (the demo).

Each validates its outputs before any work, shows progress, prints a table and writes one JSON
result with provenance.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lowbit import api
from lowbit.plan import Plan
from lowbit.report.console import console, progress_bar, results_table


def quantize_job(
    model: str,
    plan: Plan,
    calib: api.TextConfig,
    out: Path,
    *,
    result_path: Path | None = None,
    propagation: str = "true-sequential",
    overwrite: bool = False,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Quantize ``model`` under ``plan`` and save it to ``out``."""
    result_path = result_path or Path(f"{out}.result.json")
    api.check_outputs(out, result_path, overwrite=overwrite)
    handle = api.load(model, allow_pickle=allow_pickle)
    calib_w = (
        api.text_windows(handle, calib, calibration=True) if plan.needs_calibration() else None
    )
    qm, calib_w = _quantize(handle, plan, calib, "quantize", calib_w, propagation=propagation)
    fp = api.footprint(handle, qm)
    summary = {
        **fp.to_dict(),
        "quantize_s": qm.timings["quantize_s"],
        "layers": [asdict(r) for r in qm.layers],
    }
    prov = api.provenance(
        "quantize",
        handle,
        {"plan": plan.to_dict(), "propagation": propagation},
        {"calibration": calib_w.info if calib_w else None},
        qm.timings,
    )
    api.save(qm, out, prov, overwrite=overwrite)
    api.write_result(result_path, {**prov, "result": summary}, overwrite=overwrite)
    console.print(
        f"saved {out}: {fp.bits_per_weight_linear:.3f} bits per weight in the linear layers, "
        f"{fp.bits_per_weight_model:.3f} over the whole model, {fp.size_bytes / 1e6:.1f} MB"
    )
    return summary


def eval_job(
    model: str,
    evalcfg: api.TextConfig | None,
    result_path: Path,
    *,
    reference: str | None = None,
    tasks: Any | None = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Perplexity of ``model``; with ``reference`` (a model source), KL divergence to it too.
    A saved quantized model is compared with the model it came from unless told otherwise.
    With ``tasks`` (a TaskConfig), accuracy on tasks too, every sample kept."""
    api.check_outputs(result_path, overwrite=overwrite)
    candidate, handle, manifest = api.load_for_eval(model, allow_pickle=allow_pickle)
    out: dict[str, Any] = {}
    data: dict[str, Any] = {}
    if evalcfg is not None:
        text_results, data["eval"] = _eval_text(model, candidate, handle, manifest, evalcfg,
                                                reference, allow_pickle)  # fmt: skip
        out["results"] = {k: v.to_dict() for k, v in text_results.items()}
    if tasks is not None:
        from lowbit.evaluation.compare import category_rows
        from lowbit.workflows.tasks import run_tasks_for

        run = run_tasks_for(model, candidate, handle, tasks)
        out["tasks"] = run.to_dict()
        out["categories"] = category_rows(run.samples)
    config = {
        "eval": asdict(evalcfg) if evalcfg else None,
        "reference": reference,
        "tasks": None if tasks is None else {**asdict(tasks), "source": tasks.source.value},
    }
    prov = api.provenance("eval", handle, config, data, {})
    result = {**prov, **out}
    api.write_result(result_path, result, overwrite=overwrite)
    return result


def _eval_text(
    model: str,
    candidate: Any,
    handle: Any,
    manifest: dict[str, Any] | None,
    evalcfg: api.TextConfig,
    reference: str | None,
    allow_pickle: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    windows = api.text_windows(handle, evalcfg, calibration=False)
    ref_model = None
    if reference is not None:
        ref_model, _, _ = api.load_for_eval(reference, allow_pickle=allow_pickle)
    elif manifest is not None:
        api.check_origin(model, handle, manifest)
        ref_model = handle.load_model()
    with progress_bar("evaluating", windows.ids.shape[0]) as update:
        results = api.evaluate(ref_model, {"model": candidate}, windows, progress=update)
    rows = [_row(model if name == "model" else name, r) for name, r in results.items()]
    console.print(results_table(rows, f"{model} on {windows.info['source']}"))
    return results, windows.info


def run_job(
    model: str,
    evalcfg: api.TextConfig,
    calib: api.TextConfig,
    result_path: Path,
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """The demo: the original model against RTN W4, GPTQ W4 and GPTQ W3 (group 64, symmetric)."""
    api.check_outputs(result_path, overwrite=overwrite)
    handle = api.load(model)
    plans = {
        "RTN W4 g64": api.spec_from_options(4, 64, True, "rtn"),
        "GPTQ W4 g64": api.spec_from_options(4, 64, True, "gptq"),
        "GPTQ W3 g64": api.spec_from_options(3, 64, True, "gptq"),
    }
    windows = api.text_windows(handle, evalcfg, calibration=False)  # bad input fails here
    calib_w = api.text_windows(handle, calib, calibration=True)
    api.check_distinct_texts(windows, calib_w)
    quantized = {}
    for name, spec in plans.items():
        qm, _ = _quantize(handle, api.plan_from_options(spec), calib, name, calib_w)
        quantized[name] = qm
    candidates = {name: api.fake_quant_model(handle, qm) for name, qm in quantized.items()}
    with progress_bar("evaluating 4 models", windows.ids.shape[0]) as update:
        results = api.evaluate(handle.load_model(), candidates, windows, progress=update)
    rows = []
    for name, res in results.items():
        fp = api.footprint(handle, quantized.get(name))
        qs = quantized[name].timings["quantize_s"] if name in quantized else None
        rows.append(_row("original (fp32)" if name == "reference" else name, res, fp, qs))
    console.print(
        results_table(
            rows,
            f"{model}: eval on {windows.info['source']} "
            f"({windows.info['windows']} × {evalcfg.ctx} tokens)",
        )
    )
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
    )
    out = {**prov, "rows": rows, "results": {k: v.to_dict() for k, v in results.items()}}
    api.write_result(result_path, out, overwrite=overwrite)
    console.print(f"result written to {result_path}")
    return out


def _quantize(
    handle: Any,
    plan: Plan,
    calib: api.TextConfig,
    label: str,
    windows: api.Windows | None = None,
    propagation: str = "true-sequential",
) -> tuple[Any, api.Windows | None]:
    needs = plan.needs_calibration()
    if needs and windows is None:
        windows = api.text_windows(handle, calib, calibration=True)
    t0 = time.perf_counter()
    with progress_bar(f"{label}: blocks", None) as update:
        qm = api.quantize(
            handle, plan, windows if needs else None, propagation=propagation, progress=update
        )
    qm.timings["wall_s"] = time.perf_counter() - t0
    return qm, windows if needs else None


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
