"""Step ``tasks`` (issue 19): lowbit's task evaluation on the device, the reference (the
step-1 model in the runtime's dtype) against GPTQ W4 g64 (the ``ranks`` step's plain run, or one
quantized here), through the harness on the local task files.

Phases, in order, each for both models before the next starts, each skipped when less budget is
left than it needs (the figures say which ran and how far): the log-likelihood suite (every
local task but GSM8K, ``--limit`` items each), GSM8K (5-shot, greedy, ``--max-gen-toks 256``,
``gsm8k_limit`` items), then MMLU's 57 subjects (``mmlu_limit`` items each). For each: the
harness's metrics, the per-sample comparison (flips, error overlap, McNemar), wall time, and
requests (log-likelihood) or answer tokens (generation) per second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .record import Deadline, Figures


@dataclass(frozen=True)
class TasksProtocol:
    limit: int = 500
    gsm8k_limit: int = 1319
    mmlu_limit: int = 100
    max_gen_toks: int = 256
    batch_size: int = 64
    gen_batch_size: int = 128


TINY_PROTOCOL = TasksProtocol(limit=2, gsm8k_limit=2, mmlu_limit=1, max_gen_toks=16,
                              batch_size=4, gen_batch_size=2)  # fmt: skip


def phases(p: TasksProtocol) -> list[tuple[str, tuple[str, ...], int, int]]:
    """(name, tasks, limit, batch size) in the order run."""
    from lowbit.evaluation.task_defs import LOCAL_TASKS, MMLU

    ll = tuple(t for t in LOCAL_TASKS.names() if t != "gsm8k")
    return [
        ("loglikelihood", ll, p.limit, p.batch_size),
        ("gsm8k", ("gsm8k",), p.gsm8k_limit, p.gen_batch_size),
        ("mmlu", (MMLU,), p.mmlu_limit, p.batch_size),
    ]


def _counts(run: Any, tok: Any) -> dict[str, float]:
    """Requests (log-likelihood) and answer tokens (generation) of one run."""
    requests = answers = 0
    for recs in run.samples.values():
        for r in recs:
            if r.generated is not None:
                answers += len(tok(r.generated, add_special_tokens=False).input_ids)
            else:
                requests += max(1, len(r.scores))  # one request per choice
    return {"requests": requests, "answer_tokens": answers}


def _one(model: Any, handle: Any, cfg: Any, tok: Any) -> tuple[Any, dict[str, Any]]:
    from lowbit import api

    t0 = time.perf_counter()
    run = api.evaluate_tasks(model, handle, cfg)
    seconds = time.perf_counter() - t0
    counts = _counts(run, tok)
    rates = {f"{k}_per_s": v / seconds for k, v in counts.items() if v}
    return run, {"seconds": seconds, **counts, **rates, "metrics": run.metrics}


def run_tasks(
    figures: Figures,
    reference: str,
    candidate: str,
    rt_cfg: Any,
    protocol: TasksProtocol,
    deadline: Deadline,
    *,
    needs_s: dict[str, float],
    save: Callable[[], None] = lambda: None,
) -> None:
    """Fill ``figures[phase]`` for every phase that fits in the budget (``save`` after each)."""
    from lowbit import api

    figures["protocol"] = asdict(protocol)
    rt = api.runtime(rt_cfg)
    models = {}
    for name, source in (("reference", reference), ("gptq_w4g64", candidate)):
        models[name] = api.load_for_tasks(source, rt)
    tok = models["reference"][1].load_tokenizer()
    figures["models"] = {"reference": reference, "gptq_w4g64": candidate,
                         "runtime": rt.describe()}  # fmt: skip
    for phase, tasks, limit, batch in phases(protocol):
        if deadline.left() < needs_s.get(phase, 0.0):
            figures[phase] = {"skipped": f"{deadline.left():.0f} s left of the budget"}
            continue
        entry: dict[str, Any] = {"tasks": list(tasks), "batch_size": batch}
        figures[phase] = entry
        runs: dict[str, Any] = {}
        if phase == "gsm8k":  # generation: as many items as the budget allows
            limit = _fit_generation(entry, models, tok, tasks, limit, batch, protocol,
                                    deadline, needs_s, runs)  # fmt: skip
        entry["limit"] = limit
        cfg = api.TaskConfig(tasks, limit=limit, batch_size=batch,
                             max_gen_toks=protocol.max_gen_toks)  # fmt: skip
        api.check_tasks(cfg)
        for name, (model, handle) in models.items():
            if name not in runs:
                runs[name], entry[name] = _one(model, handle, cfg, tok)
        entry["comparison"] = api.compare_task_runs(runs["reference"], runs["gptq_w4g64"])
        save()


def _fit_generation(
    entry: dict[str, Any], models: dict[str, Any], tok: Any, tasks: tuple[str, ...],
    limit: int, batch: int, protocol: TasksProtocol, deadline: Deadline,
    needs_s: dict[str, float], runs: dict[str, Any],
) -> int:  # fmt: skip
    """A pilot of one batch on the reference; the limit both models fit in the budget left
    (after the reserve of the phases still to come); the pilot is kept when it is the run."""
    from lowbit import api

    pilot_n = min(batch, limit)
    cfg = api.TaskConfig(tasks, limit=pilot_n, batch_size=batch,
                         max_gen_toks=protocol.max_gen_toks)  # fmt: skip
    model, handle = models["reference"]
    run, figures = _one(model, handle, cfg, tok)
    per_item = figures["seconds"] / pilot_n
    left = deadline.left() - needs_s.get("mmlu", 0.0) - 15.0
    fit = int(0.8 * left / (2 * per_item)) if per_item > 0 else limit
    chosen = max(pilot_n, min(limit, fit))
    entry["pilot"] = {"items": pilot_n, "seconds": figures["seconds"], "chosen_limit": chosen,
                      "asked_limit": limit}  # fmt: skip
    if chosen == pilot_n:
        runs["reference"], entry["reference"] = run, figures
    return chosen


CATEGORIES = ("stem", "humanities", "social_sciences", "other")


def lines(figures: Figures) -> list[str]:
    out = []
    for phase in ("loglikelihood", "gsm8k", "mmlu"):
        entry = figures.get(phase)
        if not entry or "reference" not in entry:
            if entry:
                out.append(f"{phase}: {entry.get('skipped', 'not run')}")
            continue
        ref, q = entry["reference"], entry["gptq_w4g64"]
        rate = "answer_tokens_per_s" if phase == "gsm8k" else "requests_per_s"
        out.append(f"{phase} (limit {entry['limit']}): reference {ref['seconds']:.1f} s "
                   f"({ref.get(rate, 0):.0f} {rate}), GPTQ {q['seconds']:.1f} s")  # fmt: skip
        for task, m in sorted(ref["metrics"].items()):
            if task.startswith("mmlu_") and task.removeprefix("mmlu_") not in CATEGORIES:
                continue
            acc = next((v for k, v in m.items() if k.startswith(("acc", "exact_match"))), None)
            qm = q["metrics"].get(task, {})
            qacc = next((v for k, v in qm.items() if k.startswith(("acc", "exact_match"))), None)
            if isinstance(acc, float) and isinstance(qacc, float):
                out.append(f"  {task}: {acc:.4f} -> {qacc:.4f}")
    return out
