"""``lowbit plan`` (a plan for a budget) and ``lowbit pareto`` (a sweep of budgets, each plan
quantized and measured: predicted against realised loss, exact against uniform and heuristic).

The sweep stores each measured point in ``OUT/points/`` as it completes, so an interrupted
sweep resumes with ``--resume``; ``OUT/pareto.json`` and ``OUT/pareto.html`` are written last.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from lowbit import api
from lowbit._io import atomic_file, check_new_output, figures_sha256, write_json
from lowbit.errors import ConfigError, OutputExistsError
from lowbit.plan import LayerSpec, uniform_plan
from lowbit.report.console import console
from lowbit.report.pareto import pareto_report, pareto_table
from lowbit.workflows.incontext import (
    SINGLE_LAYER,
    Inputs,
    Sensitivity,
    SingleLayer,
    allocate_with,
    greedy_config,
)
from lowbit.workflows.points import Point, Runner, measure_here, slug, trial_config, trial_row
from lowbit.workflows.spine import DEFAULT_EXECUTION, Execution, text_windows


def plan_job(
    model: str,
    table_path: Path,
    budget: Any,
    out: Path,
    *,
    method: str = "exact",
    metric: str = "kl",
    fuse: bool = True,
    pins: dict[str, str] | None = None,
    overwrite: bool = False,
    target: str = "any",
    sensitivity: Sensitivity = SINGLE_LAYER,
    calib: api.TextConfig | None = None,
    execution: Execution = DEFAULT_EXECUTION,
) -> dict[str, Any]:
    """Write the plan of least predicted loss within ``budget`` (or the heuristic's plan) on
    ``sensitivity``'s losses (in context: measured on the calibration windows ``calib``) that
    deployment ``target`` (vllm, gguf, any) can export and serve unchanged."""
    from lowbit.allocation import spec_index

    check_new_output(Path(out), overwrite=overwrite)
    handle = api.load(model)
    table = api.load_table(table_path, handle)
    limits = target_constraints(table, target, handle)
    pin_idx = {k: spec_index(v, table.labels) for k, v in (pins or {}).items()}
    inputs = _inputs(handle, sensitivity, calib, execution)
    done = allocate_with(
        sensitivity,
        table,
        budget,
        method,
        {"metric": metric, "fuse": fuse, "pins": pin_idx, "constraints": limits},
        inputs,
    )
    alloc, plan = done.allocation, done.plan
    n_weights = sum(x.numel for x in table.layers)
    with atomic_file(Path(out), overwrite=overwrite) as f:
        f.write(plan.dumps("yaml" if Path(out).suffix in (".yaml", ".yml") else "json"))
    counts = Counter(table.labels[s] for s in alloc.choice.values())
    summary = {
        "method": alloc.method,
        "bits_per_weight_linear": alloc.bits / n_weights,
        "model_bytes": alloc.bits // 8 + table.other_bytes,
        "predicted_loss": alloc.loss,
        "metric": "kl (in context)" if sensitivity.in_context else metric,
        "target": target,
        "layers_per_spec": dict(counts),
        **done.record,
    }
    if "probe_text" in done.record:
        r, c = done.record, done.record["probe"]
        console.print(
            f"in-context probe: {c['probe_windows']} × {c['probe_ctx']} tokens of {r['probe_text']}"
        )
    if "start" in done.record:
        r = done.record
        console.print(f"start plan: {r['start']}, measured KL {r['start_plan_kl']:.4g}")
    for r in done.record.get("rounds", []):
        console.print(
            f"round {r['round']}: predicted KL {r['predicted_kl']:.4g}, measured "
            f"{r['measured_kl']:.4g} ({r['decoder_passes']:.0f} decoder passes so far)"
        )
    if "selection" in done.record:
        sel, best = done.record["selection"], done.record["best_round"]
        scores = ", ".join(f"round {k}: {v:.4g}" for k, v in sel["kl_by_round"].items())
        console.print(
            f"chosen on the selection windows ({sel['windows']}, {sel['tokens']} tokens): round "
            f"{best} (KL {scores}; round 0 is the start plan)"
        )
    console.print(
        f"{alloc.method}: {summary['bits_per_weight_linear']:.4f} bits per weight over the "
        f"linear layers, {summary['model_bytes'] / 1e6:.2f} MB in all, predicted "
        f"{summary['metric']} {alloc.loss:.4g}; "
        + ", ".join(f"{n} × {k}" for k, n in counts.most_common())
    )
    console.print(f"plan written to {out}")
    return summary


def target_constraints(table: Any, target: str, handle: Any) -> Any:
    """The deployment target's constraints on plans from ``table``; prints the menu specs it
    drops."""
    from lowbit.export.targets import constraints

    limits = constraints(table, target, handle)
    for note in limits.notes():
        console.print(note)
    return limits


def sweep_points(
    table: Any,
    budgets: list[float],
    uniform_specs: list[LayerSpec],
    *,
    metric: str = "kl",
    fuse: bool = True,
    limits: Any = None,
    sensitivity: Sensitivity = SINGLE_LAYER,
    inputs: Inputs | None = None,
) -> list[Point]:
    """Uniform plans, then for each budget the exact plan, the llama.cpp-style plan and, in
    context, the iterated exact plan and the greedy plan (a heuristic plan equal to one already
    listed is not repeated); ``limits``: a deployment target's constraints on the allocated
    plans."""
    from lowbit.allocation import AvgBits, build_problem
    from lowbit.allocation.heuristic import uniform as uniform_alloc

    problem = build_problem(table, metric, fuse=False)
    labels = table.labels
    points = []
    for spec in uniform_specs:
        label = spec.describe()
        alloc = uniform_alloc(problem, labels.index(label)) if label in labels else None
        points.append(
            Point(
                f"uniform {label}",
                "uniform",
                None,
                uniform_plan(spec),
                None if alloc is None else alloc.loss,
                None if alloc is None else alloc.bits_per_weight(problem),
            )
        )
    seen: set[tuple] = set()
    runs: list[tuple[str, Sensitivity, str]] = [("exact", SingleLayer(), "exact")]
    if sensitivity.in_context:
        greedy = greedy_config(sensitivity)  # the options of the rounds are not the greedy's
        runs += [("in-context", sensitivity, "exact"), ("greedy", greedy, "greedy")]
    runs.append(("llamacpp", SingleLayer(), "llamacpp"))
    options = {"metric": metric, "fuse": fuse, "constraints": limits}
    for b in budgets:
        for name, source, method in runs:
            done = allocate_with(source, table, AvgBits(b), method, options, inputs)
            alloc = done.allocation
            key = tuple(sorted(alloc.choice.items()))
            if method == "llamacpp" and key in seen:
                continue
            seen.add(key)
            points.append(
                Point(
                    f"{name} {b:g}",
                    name,
                    b,
                    done.plan,
                    alloc.loss,
                    alloc.bits_per_weight(problem),
                    done.record,
                )
            )
    return points


def _inputs(
    handle: Any, sensitivity: Sensitivity, calib: api.TextConfig | None, execution: Execution
) -> Inputs:
    """The model, calibration windows and runtime an in-context allocation measures with."""
    if not sensitivity.in_context:
        return Inputs(handle)
    if calib is None:
        raise ConfigError("in-context sensitivity needs calibration text (--calib-text)")
    windows = text_windows(handle, calib, calibration=True, held_out=sensitivity.held_out_windows)
    return Inputs(handle, windows, api.runtime(execution.runtime))


def pareto_job(
    model: str,
    table_path: Path,
    budgets: list[float],
    uniform_specs: list[LayerSpec],
    calib: api.TextConfig,
    evalcfg: api.TextConfig,
    out: Path,
    *,
    metric: str = "kl",
    fuse: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    marks: dict[str, tuple[float, float]] | None = None,
    execution: Execution = DEFAULT_EXECUTION,
    target: str = "any",
    sensitivity: Sensitivity = SINGLE_LAYER,
    runner: Runner | None = None,
) -> dict[str, Any]:
    """Quantize and evaluate every point of the sweep; write OUT/pareto.json and .html.
    ``runner``: measures the points as trials of a sweep (Ray tasks, a results store) instead
    of one by one in this process."""
    out = Path(out)
    _check_sweep_dir(out, resume=resume, overwrite=overwrite)
    handle = api.load(model)
    table = api.load_table(table_path, handle)
    limits = target_constraints(table, target, handle)
    windows = text_windows(handle, evalcfg, calibration=False)
    held = sensitivity.held_out_windows
    calib_w = text_windows(handle, calib, calibration=True, held_out=held)
    api.check_distinct_texts(windows, calib_w)
    inputs = Inputs(handle, calib_w, api.runtime(execution.runtime))
    points = sweep_points(
        table, budgets, uniform_specs, metric=metric, fuse=fuse, limits=limits,
        sensitivity=sensitivity, inputs=inputs,
    )  # fmt: skip
    store = out / "points"
    store.mkdir(parents=True, exist_ok=True)
    _check_key(
        out / "sweep-key.json",
        {
            "model": handle.fingerprint,
            "table": table.digest(),
            "calibration": calib_w.info,
            "eval": windows.info,
            "metric": metric,
            "fuse": fuse,
            "target": target,
            "sensitivity": repr(sensitivity),
        },
    )
    todo = [p for p in points if not (store / f"{slug(p.name)}.json").exists()]
    console.print(f"{len(points)} points, {len(points) - len(todo)} already measured")
    if runner is not None:
        texts = (model, calib, evalcfg, execution)
        results = runner([(p.name, trial_config(p.plan, *texts)) for p in todo])
        for p in todo:
            write_json(store / f"{slug(p.name)}.json", trial_row(p, results[p.name]))
    else:
        measure_here(handle, todo, calib_w, windows, store, execution)
    rows = [json.loads((store / f"{slug(p.name)}.json").read_text()) for p in points]
    result = {
        **api.provenance(
            "pareto",
            handle,
            {
                "budgets": budgets,
                "metric": metric,
                "fuse": fuse,
                "target": target,
                "table": str(table_path),
                "uniform": [s.to_dict() for s in uniform_specs],
            },
            {"eval": windows.info, "calibration": calib_w.info},
            {},
        ),
        "points": rows,
        "additivity": additivity(rows),
    }
    pareto_report(rows, marks or {}, f"Pareto: {model}").write(out / "pareto.html", overwrite=True)
    write_json(
        out / "pareto.json",
        {**result, "content_sha256": {"figures": figures_sha256(result)}},
        overwrite=True,
    )
    console.print(pareto_table(rows))
    return result


def additivity(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How well the summed single-layer losses predict the realised KL divergence."""
    import math

    pairs = [(r["predicted_loss"], r["kl_mean"]) for r in rows if r["predicted_loss"]]
    if not pairs:
        return {}
    ratios = [kl / pred for pred, kl in pairs]
    logs = [math.log(x) for x in ratios]
    return {
        "points": len(pairs),
        "realised_over_predicted_median": sorted(ratios)[len(ratios) // 2],
        "realised_over_predicted_min": min(ratios),
        "realised_over_predicted_max": max(ratios),
        "mean_abs_log_error": sum(abs(x) for x in logs) / len(logs),
    }


def _check_key(path: Path, key: dict[str, Any]) -> None:
    """A resumed sweep must use the same model, table, texts and settings as its points."""
    from lowbit.errors import ArtefactError

    key = json.loads(json.dumps(key, default=str))
    if path.exists():
        if json.loads(path.read_text()) != key:
            raise ArtefactError(
                f"{path.parent} holds points of a sweep with another model, table, text or "
                "setting; use a new output directory or --overwrite"
            )
        return
    write_json(path, key)


def _check_sweep_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    if not out.exists() or resume:
        return
    if overwrite:
        import shutil

        shutil.rmtree(out)
        return
    raise OutputExistsError(
        f"{out} exists; pass --resume to continue its sweep or --overwrite to start again"
    )
