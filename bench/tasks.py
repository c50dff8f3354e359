"""Tasks (issue 4): harness parity, forward cost, and accuracy / flips / KL of RTN and GPTQ.

Steps (outputs under bench/results/tasks):
(1) bridge against the stock harness (both score with the harness's HFLM, so this checks
    lowbit's model loading and task files, not the scoring): the fp32 built-in model on the
    local tasks through lowbit's bridge (in-memory model)
    and through the harness directly (`lm_eval.simple_evaluate(model="hf", pretrained=<the
    model's directory>, include_path=<lowbit's task directory>)`): per-sample agreement;
(2) cost: the bare forward passes the requests need (each distinct token sequence the harness
    scores, tokenized by the harness's own HFLM, once, in length-sorted batches of the same
    size) against lowbit's task time on the same model, in the same process;
(3) RTN and GPTQ, INT4 and INT3, group 64, symmetric (128 × 512 calibration windows of
    wiki.valid.tokens, seed 0): `lowbit eval --tasks` of each and of the reference, then
    `lowbit compare ref.json quant.json`; text KL on WikiText-2 raw test, 40 × 512.

Usage: .venv/bin/python bench/tasks.py [--limit N] [--mmlu-limit M] [--cost-only | --models-only]
       .venv/bin/python bench/tasks.py --markdown bench/results/tasks/tasks-models.json

``--models-only``: step (3) alone (the reference's and each model's runs), e.g. to re-measure
the models after a change of the quantization grid without the parity and cost steps;
``--only "RTN W4 g64" ...``: of step (3), these models.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

from common import calibration_options, write_result

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "tasks"
LOWBIT = [sys.executable, "-m", "lowbit.cli.main"]
MAIN = ("lambada_openai", "hellaswag", "piqa", "winogrande", "arc_easy", "arc_challenge")
MODELS = {
    "RTN W4 g64": ("rtn", 4),
    "GPTQ W4 g64": ("gptq", 4),
    "RTN W3 g64": ("rtn", 3),
    "GPTQ W3 g64": ("gptq", 3),
}


def run(cmd: list[str]) -> float:
    print("$ lowbit", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run([*LOWBIT, *cmd], check=True, cwd=OUT)
    return time.perf_counter() - t0


def parity_and_cost(tasks: tuple[str, ...], limit: int) -> dict:
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from lowbit import api
    from lowbit.evaluation.harness import TaskConfig
    from lowbit.evaluation.samples import record_from_harness
    from lowbit.runtime import RuntimeConfig

    torch.manual_seed(0)
    rt = api.runtime(RuntimeConfig("cpu", "float32"))  # as the harness side runs
    model, handle = api.load_for_tasks("smollm2-135m", rt)
    run_ = api.evaluate_tasks(model, handle, TaskConfig(tasks, limit))
    include = run_.info["task_dirs"]
    del model  # the harness loads its own copy: one model in memory at a time
    gc.collect()
    direct = simple_evaluate(
        model="hf",
        model_args={"pretrained": str(handle.path), "dtype": "float32", "device": "cpu"},
        tasks=[f"local_{t}" for t in tasks],
        task_manager=TaskManager(include_path=include, include_defaults=False),
        limit=limit,
        log_samples=True,
        bootstrap_iters=0,
        batch_size=16,
    )
    parity = {}
    for name, recs in direct["samples"].items():
        task = name.removeprefix("local_")
        theirs = {s["doc_id"]: record_from_harness(s) for s in recs}
        ours = {s.doc_id: s for s in run_.samples[task]}
        same = sum(theirs[i].correct == ours[i].correct for i in ours)
        max_dll = max(
            abs(a - b) for i in ours for a, b in zip(ours[i].scores, theirs[i].scores, strict=True)
        )
        parity[task] = {
            "n": len(ours),
            "same_verdict": same,
            "acc_lowbit": run_.metrics[task]["acc"],
            "acc_harness": direct["results"][name]["acc,none"],
            "max_abs_loglik_diff": max_dll,
        }
    model, _ = api.load_for_tasks("smollm2-135m", rt)
    lm = HFLM(pretrained=model, tokenizer=handle.load_tokenizer())
    return {"parity": parity, "cost": cost(lm, model, handle, tasks, limit, direct["samples"])}


def cost(lm, model, handle, tasks: tuple[str, ...], limit: int, samples: dict) -> dict:
    """lowbit's task time between two timings of the bare forward passes (their mean is the
    reference, so a change of machine load during the run shows as their spread)."""
    from lowbit import api
    from lowbit.evaluation.harness import TaskConfig

    before = bare_forward_seconds(lm, model, samples)
    run_ = api.evaluate_tasks(model, handle, TaskConfig(tasks, limit))
    after = bare_forward_seconds(lm, model, samples)
    bare = (before["bare_forward_s"] + after["bare_forward_s"]) / 2
    return {
        **before,
        "bare_forward_s": bare,
        "bare_forward_spread_s": abs(before["bare_forward_s"] - after["bare_forward_s"]),
        "lowbit_task_s": run_.info["seconds"],
        "ratio": run_.info["seconds"] / bare,
    }


def bare_forward_seconds(lm, model, samples: dict, batch: int = 16) -> dict:
    """Time one forward pass over each distinct sequence the requests need."""
    import torch

    seqs = set()
    for recs in samples.values():
        for s in recs:
            for context, continuation in s["arguments"]:
                ctx, cont = lm._encode_pair(context, continuation)
                seqs.add(tuple((ctx + cont)[-(lm.max_length + 1) :][:-1]))
    ordered = sorted(seqs, key=len, reverse=True)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(ordered), batch):
            chunk = ordered[i : i + batch]
            width = len(chunk[0])
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            for r, seq in enumerate(chunk):
                ids[r, : len(seq)] = torch.tensor(seq)
            model(input_ids=ids, use_cache=False)
    tokens = sum(len(s) for s in ordered)
    return {"bare_forward_s": time.perf_counter() - t0, "sequences": len(ordered), "tokens": tokens}


def markdown(path: Path) -> str:
    """BENCHMARKS.md's tables of step (3) from its result file ``path``."""
    record = json.loads(path.read_text())
    out = []
    for name in MODELS:
        if name not in record:
            continue
        e, t = record[name], record[name]["text"]
        kl, dp = t["kl"], t["delta_p"]
        out += [
            f"**{name}** — quantized in {e['quantize_s']:.0f} s; tasks + text evaluated in "
            f"{e['eval main s']:.0f} s, MMLU in {e['eval mmlu s']:.0f} s (wall).",
            "",
            "| text | perplexity | KL mean | median | p90 | p99 | max | Δp mean | Δp RMS "
            "| same top token |",
            "|---|---|---|---|---|---|---|---|---|---|",
            f"| WikiText-2 | {t['perplexity']:.2f} | {kl['mean']:.4f} | "
            f"{kl['median']:.4f} | {kl['p90']:.4f} | {kl['p99']:.3f} | {kl['max']:.2f} | "
            f"{dp['mean']:.4f} | {dp['rms']:.4f} | {100 * t['top1_agreement']:.2f}% |",
            "",
            "| task | n | acc ref | acc quant | right→wrong | wrong→right | flips | error Jaccard "
            "| McNemar p | FP/FN ref → quant |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        rows = {**e["main"]["tasks"], **{k: v for k, v in e["mmlu"]["tasks"].items()
                                           if not k.startswith("mmlu_")}}  # fmt: skip
        for task, r in sorted(rows.items(), key=lambda kv: (kv[0].startswith("mmlu"), kv[0])):
            f = r.get("fp_fn")
            fpfn = "–" if not f else (
                f"{f['reference']['fp']}/{f['reference']['fn']} → "
                f"{f['quantized']['fp']}/{f['quantized']['fn']}"
            )  # fmt: skip
            out.append(
                f"| {task} | {r['n']} | {r['acc_ref']:.3f} | {r['acc_quant']:.3f} | "
                f"{r['flips_to_wrong']} | {r['flips_to_right']} | {100 * r['flip_rate']:.1f}% | "
                f"{r['error_jaccard']:.2f} | {r['mcnemar']['p_exact']:.2f} | {fpfn} |"
            )
        groups = e["main"]["categories"] + e["mmlu"]["categories"]
        by = "; ".join(f"{g['group']} {g['acc_ref']:.3f} → {g['acc_quant']:.3f}" for g in groups)
        out += ["", f"By group: {by}.", ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=25)
    parser.add_argument("--mmlu-limit", type=int, default=2)
    steps = parser.add_mutually_exclusive_group()
    steps.add_argument("--cost-only", action="store_true", help="steps (1) and (2) only")
    steps.add_argument("--models-only", action="store_true", help="step (3) only")
    parser.add_argument("--only", nargs="+", choices=list(MODELS), help="these models of (3)")
    parser.add_argument("--markdown", type=Path, help="print the tables of a result file, only")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(args.markdown))
        return
    from lowbit.evaluation.text import data_dir

    data = data_dir()
    valid = str(data / "wikitext-2" / "wiki.valid.tokens")
    test = str(data / "wikitext-2-raw" / "wiki.test.raw")
    OUT.mkdir(parents=True, exist_ok=True)
    record: dict = {"limit": args.limit, "mmlu_limit": args.mmlu_limit}
    if not args.models_only:
        record |= parity_and_cost(MAIN, args.limit)
        print(json.dumps(record, indent=1), flush=True)
    if args.cost_only:
        write_result(OUT / "cost.json", record)
        return
    sets = {"main": (",".join(MAIN), args.limit), "mmlu": ("mmlu", args.mmlu_limit)}
    result = "tasks-models.json" if args.models_only else "tasks.json"
    if args.only:  # a partial set of models never replaces the whole set's file
        result = result.replace(".json", "-only.json")
    for part, (tasks, limit) in sets.items():
        t = run(["eval", "smollm2-135m", "--tasks", tasks, "--limit", str(limit),
                 "-o", f"ref-{part}.json", "--overwrite"])  # fmt: skip
        record[f"reference {part} s"] = t
    calib = ["--calib-text", valid, "--calib-windows", "128", "--ctx", "512", "--seed", "0"]
    for name, (algo, bits) in MODELS.items():
        if args.only and name not in args.only:
            continue
        d = f"{algo}-w{bits}g64"
        q = ["quantize", "smollm2-135m", "-o", d, "--bits", str(bits), "--group-size", "64"]
        entry = {"quantize_s": run([*q, "--algorithm", algo, *calibration_options(algo, calib),
                                    "--overwrite"])}  # fmt: skip
        for part, (tasks, limit) in sets.items():
            text = ["--eval-text", test, "--windows", "40"] if part == "main" else []
            args_ = ["eval", d, "--tasks", tasks, "--limit", str(limit), *text]
            entry[f"eval {part} s"] = run([*args_, "-o", f"{d}-{part}.json", "--overwrite"])
            run(["compare", f"ref-{part}.json", f"{d}-{part}.json", "-o",
                 f"{d}-{part}.compare.json", "--overwrite"])  # fmt: skip
            entry[part] = json.loads((OUT / f"{d}-{part}.compare.json").read_text())["comparison"]
            if part == "main":
                res = json.loads((OUT / f"{d}-main.json").read_text())["results"]["model"]
                entry["text"] = {
                    k: res[k] for k in ("perplexity", "kl", "top1_agreement", "delta_p")
                }
        record[name] = entry
        write_result(OUT / result, record)
    write_result(OUT / result, record)
    print("written", OUT / result)


if __name__ == "__main__":
    main()
