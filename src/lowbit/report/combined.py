"""One HTML page tying a run's result files together (``lowbit report RESULT... -o page.html``).

Each result file is recognised by what wrote it (its ``command``, or a sensitivity table's
version key) and adds its sections: an overview row for every file; the plan per layer
(``quantize``); perplexity, KL divergence and its histogram (``eval``, ``run``, ``compare``);
accuracy and loss by task and category and the flips (``eval --tasks``, ``compare``); the
Pareto front (``pareto``); the sensitivity heatmaps (``sensitivity``); the roofline
(``perf``). Every text taken from a result is escaped by :class:`Report`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lowbit.errors import ArtefactError
from lowbit.report import charts
from lowbit.report.html import Report

Result = dict[str, Any]
Sections = Callable[[Report, str, Result], None]


def load_results(paths: list[Path]) -> list[tuple[str, Result]]:
    """(file name, result) of every path, refused by name when it is not a lowbit result."""
    out = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ArtefactError(f"{path}: no such result file") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ArtefactError(f"{path} is not a JSON result file ({exc})") from exc
        if not isinstance(data, dict) or kind_of(data) not in SECTIONS:
            raise ArtefactError(
                f"{path} is not a result of a lowbit command this report reads "
                f"({', '.join(sorted(SECTIONS))})"
            )
        out.append((str(path), data))
    return out


def kind_of(data: Result) -> str | None:
    if "lowbit_sensitivity_version" in data:
        return "sensitivity"
    command = data.get("command")
    return command if isinstance(command, str) else None


def combined_report(results: list[tuple[str, Result]], title: str = "lowbit report") -> Report:
    report = Report(title)
    report.section("overview", "overview")
    report.table(
        ["result file", "command", "model", "created (UTC)", "figures"],
        [[name, kind_of(data), _model(data), _created(data), _headline(data)]
         for name, data in results],
    )  # fmt: skip
    for k, (name, data) in enumerate(results):
        SECTIONS[str(kind_of(data))](report, f"r{k}", {**data, "_file": name})
    return report


def _model(data: Result) -> str:
    model = data.get("model")
    if isinstance(model, dict):
        return str(model.get("source", ""))
    return "" if model is None else str(model)


def _created(data: Result) -> str:
    t = data.get("created_unix")
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)) if isinstance(t, int | float) else ""


def _headline(data: Result) -> str:
    res = data.get("result") or {}
    parts = []
    if "bits_per_weight_linear" in res:
        parts.append(f"{res['bits_per_weight_linear']:.3f} bits/weight (linear)")
    for name, r in (data.get("results") or {}).items():
        ppl, kl = r.get("perplexity"), (r.get("kl") or {}).get("mean")
        if ppl is not None:
            parts.append(f"{name}: ppl {ppl:.3f}" + (f", KL {kl:.4f}" if kl is not None else ""))
    if "points" in data:
        parts.append(f"{len(data['points'])} Pareto points")
    if "estimate" in data:
        parts.append(f"{data['estimate']['tokens_per_s']:.1f} tokens/s (estimate)")
    return "; ".join(parts)


def _quantize(report: Report, key: str, data: Result) -> None:
    layers = (data.get("result") or {}).get("layers") or []
    report.section(f"{key}-plan", f"plan per layer ({data['_file']})")
    plan = (data.get("config") or {}).get("plan")
    if plan is not None:
        report.note(f"plan: {json.dumps(plan)}")
    report.table(
        ["layer", "spec", "shape", "bits/weight", "seconds", "GPTQ loss"],
        [[r["name"], r["spec"], "×".join(map(str, r["shape"])), r["bits_per_weight"],
          r["seconds"], r.get("gptq_loss")] for r in layers],
    )  # fmt: skip
    if layers:
        bits = {r["name"]: r["bits_per_weight"] for r in layers}
        report.figure(charts.bars(bits, "stored bits per weight by layer", "bits/weight"))


def _text_results(report: Report, key: str, data: Result) -> None:
    results = data.get("results") or {}
    if results:
        report.section(f"{key}-text", f"perplexity and KL divergence ({data['_file']})")
        report.table(
            ["model", "perplexity", "KL mean", "KL p99", "top-1 agreement"],
            [[n, r.get("perplexity"), (r.get("kl") or {}).get("mean"),
              (r.get("kl") or {}).get("p99"), r.get("top1_agreement")]
             for n, r in results.items()],
        )  # fmt: skip
        for name, r in results.items():
            hist = r.get("kl_histogram")
            if hist:
                title = f"per-token KL divergence: {name}"
                report.figure(
                    charts.histogram(hist["edges"], hist["counts"], "KL divergence (nats)", title)
                )
    if data.get("tasks"):
        _task_metrics(report, key, data)
    if data.get("rows"):
        report.section(f"{key}-rows", f"results ({data['_file']})")
        rows = data["rows"]
        cols = [c for c in rows[0] if not isinstance(rows[0][c], dict | list)]
        report.table(cols, [[r.get(c) for c in cols] for r in rows])


def _task_metrics(report: Report, key: str, data: Result) -> None:
    report.section(f"{key}-tasks", f"accuracy by task and category ({data['_file']})")
    metrics = data["tasks"].get("metrics") or {}
    names = sorted({m for values in metrics.values() for m in values})
    report.table(["task", *names], [[t, *(v.get(m) for m in names)] for t, v in metrics.items()])
    rows = data.get("categories") or []
    if rows:
        report.table(["kind", "group", "n", "accuracy"],
                     [[r["kind"], r["group"], r["n"], r["acc_ref"]] for r in rows])  # fmt: skip
        series = {"accuracy": [r["acc_ref"] for r in rows]}
        labels = [r["group"] for r in rows]
        chart = charts.grouped_bars(series, labels, "accuracy by group", "accuracy", "linear")
        report.figure(chart)


def _compare(report: Report, key: str, data: Result) -> None:
    from lowbit.report.tasks import compare_sections

    report.section(f"{key}-compare", f"comparison ({data['_file']})")
    report.note(f"{data.get('quantized', '')} against {data.get('reference', '')}")
    compare_sections(report, data)
    _flips(report, key, data)


def _flips(report: Report, key: str, data: Result) -> None:
    runs = data.get("runs") or {}
    if set(runs) != {"reference", "quantized"}:
        return
    report.section(f"{key}-flips", f"flipped items ({data['_file']})")
    rows = []
    for task, recs in sorted(runs["reference"]["samples"].items()):
        quant = {s["doc_id"]: s for s in runs["quantized"]["samples"].get(task, [])}
        for s in recs:
            q = quant.get(s["doc_id"])
            if q is not None and q["correct"] != s["correct"]:
                way = "right → wrong" if s["correct"] else "wrong → right"
                rows.append([task, s["doc_id"], s["doc_hash"], way])
    report.table(["task", "item", "item hash", "flip"], rows[:200])
    report.note(f"{len(rows)} flipped items" + (" (first 200 shown)" if len(rows) > 200 else ""))


def _pareto(report: Report, key: str, data: Result) -> None:
    from lowbit.report.pareto import pareto_sections

    report.section(f"{key}-pareto", f"Pareto front ({data['_file']})")
    pareto_sections(report, data["points"], {})


def _sensitivity(report: Report, key: str, data: Result) -> None:
    from lowbit.report.sensitivity import sensitivity_sections
    from lowbit.sensitivity.table import SensitivityTable

    report.section(f"{key}-sensitivity", f"sensitivity heatmaps ({data['_file']})")
    table = SensitivityTable.from_dict(
        {k: v for k, v in data.items() if k != "_file"}, data["_file"]
    )
    sensitivity_sections(report, table)


def _perf(report: Report, key: str, data: Result) -> None:
    from lowbit.perf.hardware import Hardware
    from lowbit.report.perf import perf_sections

    report.section(f"{key}-roofline", f"roofline and performance estimate ({data['_file']})")
    hw = data["hardware"]
    chip = Hardware(hw["key"], hw["name"], hw["memory_bytes"], hw["bandwidth_bytes_s"],
                    hw["peaks_flops"], hw["interconnect_bytes_s"])  # fmt: skip
    peak = chip.peak(data["compute"])
    perf_sections(report, data, data.get("batch_sweep") or [], peak, chip.bandwidth)


SECTIONS: dict[str, Sections] = {
    "quantize": _quantize,
    "eval": _text_results,
    "run": _text_results,
    "compare": _compare,
    "pareto": _pareto,
    "sensitivity": _sensitivity,
    "perf": _perf,
}
