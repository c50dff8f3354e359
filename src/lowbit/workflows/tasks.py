"""Task evaluation and the reference-against-quantized comparison (``lowbit compare``).

``compare`` takes two model sources (a saved quantized directory, an export, a Hugging Face
directory, a GGUF file or a built-in name), or two JSON results of ``lowbit eval --tasks``, and
writes one JSON result (schema in README, "Result files") and an HTML report.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from lowbit import api
from lowbit.errors import DataError
from lowbit.report.console import console, progress_bar, task_table
from lowbit.workflows.spine import DEFAULT_EXECUTION, Execution


def run_tasks_for(label: str, model: Any, handle: Any, cfg: Any) -> Any:
    """Run the tasks and print their table."""
    console.print(f"[bold]{label}[/]: tasks {', '.join(cfg.tasks)}" + _limit_note(cfg))
    with progress_bar(f"{label}: requests (scored or generated)", None) as update:
        run = api.evaluate_tasks(model, handle, cfg, progress=update)
    console.print(task_table(run.metrics, f"{label}: task accuracy ({run.info['seconds']:.0f} s)"))
    return run


def tasks_of(label: str, source: str, handle: Any, cfg: Any, rt: Any, allow: bool) -> Any:
    """``source``'s TaskRun on ``cfg``: from the task cache when this original model ran these
    tasks before in this dtype (the reference of every comparison runs once), else run with
    the whole model loaded for the time of the run, and cached."""
    run, key = api.cached_task_run(source, handle, cfg, rt)
    if run is not None:
        console.print(f"[bold]{label}[/]: task results from the cache ({run.info['cache']})")
        console.print(task_table(run.metrics, f"{label}: task accuracy (cached)"))
        return run
    model, _ = api.load_for_tasks(source, rt, allow_pickle=allow)
    run = run_tasks_for(label, model, handle, cfg)
    del model
    if key is not None:
        api.store_task_run(key, run)
    return run


def _limit_note(cfg: Any) -> str:
    return f" (first {cfg.limit} items each)" if cfg.limit else ""


def compare_job(
    reference: str,
    quantized: str,
    tasks: Any | None,
    text: api.TextConfig | None,
    result_path: Path,
    report_path: Path | None,
    *,
    execution: Execution = DEFAULT_EXECUTION,
    overwrite: bool = False,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Compare ``quantized`` with ``reference`` on tasks (per sample) and on a text (KL)."""
    if report_path is not None and Path(report_path).resolve() == Path(result_path).resolve():
        raise DataError(f"--report and --output are both {result_path}; give two paths")
    api.check_outputs(result_path, report_path, overwrite=overwrite)
    if reference.endswith(".json") and quantized.endswith(".json"):
        out = _compare_results(Path(reference), Path(quantized))
    else:
        out = _compare_models(reference, quantized, tasks, text, execution, allow_pickle)
    out = {"reference": reference, "quantized": quantized, **out}
    _print_comparison(out)
    report = None
    if report_path is not None:
        from lowbit.report.combined import combined_report

        title = f"lowbit compare: {quantized} against {reference}"
        report = combined_report([(str(result_path), out)], title)  # before anything is written
    api.write_result(result_path, out, overwrite=overwrite)
    console.print(f"result written to {result_path}")
    if report is not None and report_path is not None:
        report.write(report_path, overwrite=overwrite)
        console.print(f"report written to {report_path}")
    return out


def _compare_models(
    reference: str,
    quantized: str,
    tasks: Any | None,
    text: api.TextConfig | None,
    execution: Execution,
    allow: bool,
) -> dict[str, Any]:
    """One model in memory at a time: the text through the cached reference, layer-wise; the
    tasks with each whole model in turn."""
    from lowbit.evaluation.harness import tokenizer_fingerprint

    if tasks is None and text is None:
        raise DataError("nothing to compare on: give --tasks, --eval-text, or both")
    if tasks is not None:
        api.check_tasks(tasks)  # bad tasks are refused before any model is loaded
    rt = api.runtime(execution.runtime)
    ref_view, ref_handle = api.view_of(reference, allow_pickle=allow)
    q_view, q_handle = api.view_of(quantized, allow_pickle=allow)
    tok_r = tokenizer_fingerprint(ref_handle.load_tokenizer())
    tok_q = tokenizer_fingerprint(q_handle.load_tokenizer())
    if tok_r != tok_q:
        raise DataError(
            f"{reference} and {quantized} have different tokenizers ({tok_r} and {tok_q}); "
            "compare a quantized model with the model it came from"
        )
    out: dict[str, Any] = {}
    if text is not None:
        windows = api.text_windows(ref_handle, text, calibration=False)
        with progress_bar("KL divergence on text", None) as update:
            res = api.evaluate(
                ref_view, {"quantized": q_view}, windows, rt, cache=execution.reference_cache,
                progress=update,
            )  # fmt: skip
        out["text"] = {
            "source": windows.info["source"],
            "config": asdict(text),
            "windows": windows.info,
        }
        out["text"] |= {k: v.to_dict() for k, v in res.items()}
    if tasks is not None:
        runs = {
            label: tasks_of(label, source, handle, tasks, rt, allow)
            for label, source, handle in (
                ("reference", reference, ref_handle),
                ("quantized", quantized, q_handle),
            )
        }
        out["runs"] = {k: r.to_dict() for k, r in runs.items()}
        out["comparison"] = api.compare_task_runs(runs["reference"], runs["quantized"])
    prov = api.provenance("compare", ref_handle, {"tasks": _cfg(tasks)}, {}, {}, rt)
    return {**prov, **out}


def _cfg(tasks: Any | None) -> dict[str, Any] | None:
    if tasks is None:
        return None
    return {**asdict(tasks), "source": tasks.source.value}


def _compare_results(reference: Path, quantized: Path) -> dict[str, Any]:
    runs = {"reference": load_task_run(reference), "quantized": load_task_run(quantized)}
    return {
        **api.provenance_light("compare"),
        "runs": {k: r.to_dict() for k, r in runs.items()},
        "comparison": api.compare_task_runs(runs["reference"], runs["quantized"]),
    }


def load_task_run(path: Path) -> Any:
    """The TaskRun stored in a result of ``lowbit eval --tasks``."""
    import json

    from lowbit.evaluation.harness import TaskRun
    from lowbit.evaluation.samples import SampleRecord

    if not path.is_file():
        raise DataError(f"{path}: no such result file")
    try:
        data = json.loads(path.read_text())
        tasks = data["tasks"]
        samples = {
            t: [SampleRecord.from_dict(s) for s in recs] for t, recs in tasks["samples"].items()
        }
        return TaskRun(tasks["metrics"], samples, tasks["info"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(
            f"{path}: not a task result of `lowbit eval --tasks` (missing {exc}); "
            "evaluate each model with `lowbit eval MODEL --tasks ...` first"
        ) from exc


def _print_comparison(out: dict[str, Any]) -> None:
    from lowbit.report.console import comparison_table

    comparison = out.get("comparison")
    if comparison:
        console.print(comparison_table(comparison["tasks"], "reference → quantized, per task"))
    text = out.get("text")
    if text:
        kl = text["quantized"]["kl"]
        console.print(
            f"KL divergence on {text['source']}: mean {kl['mean']:.4f}, median "
            f"{kl['median']:.4f}, p99 {kl['p99']:.4f}, max {kl['max']:.3f}; same top token "
            f"{100 * text['quantized']['top1_agreement']:.2f}%"
        )
