"""GSM8K (issue 19): the built-in model in fp32 against GPTQ (or RTN) W4 g64, generation through
the harness.

Steps (outputs under bench/results/gsm8k):
(1) GPTQ (--algorithm rtn: RTN) W4 g64 symmetric by `lowbit quantize` (calibration:
    --calib-windows windows of 512 tokens of wiki.valid.tokens, seed 0);
(2) each model on GSM8K's first N test items, 5-shot from train (the harness's standard task
    on the local files), --max-gen-toks 256, through lowbit's bridge (`api.evaluate_tasks`):
    exact match (strict and flexible), time, answer tokens per second; then the per-sample
    comparison (flips, error overlap, McNemar);
(3) the same prompts (the harness's own contexts, checked against the records' prompt hashes)
    through a bare transformers `generate` (greedy, KV cache, the same batches: length-sorted,
    left-padded, the same stop strings): time and answer tokens per second, and whether it
    gives the same answers; the ratio of lowbit's time to it.

Usage: nice .venv/bin/python bench/gsm8k.py [--limit 50] [--calib-windows 32] [--batch-size 16]
       [--algorithm gptq|rtn]
       [--gptq DIR]   (a directory step (1) saved before: skips it)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import calibration_options, write_result

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "gsm8k"
MAX_GEN = 256


def quantize(algorithm: str, windows: int) -> tuple[str, float]:
    from lowbit.evaluation.text import data_dir

    valid = str(data_dir() / "wikitext-2" / "wiki.valid.tokens")
    out = OUT / f"{algorithm}-w4g64"
    calib = ["--calib-text", valid, "--calib-windows", str(windows), "--ctx", "512", "--seed", "0"]
    cmd = ["quantize", "smollm2-135m", "-o", str(out), "--bits", "4", "--group-size", "64",
           "--symmetric", "--algorithm", algorithm, *calibration_options(algorithm, calib),
           "--overwrite"]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lowbit.cli.main", *cmd], check=True)
    return str(out), time.perf_counter() - t0


def contexts(cfg, records) -> list[str]:
    """The harness's own prompts for the evaluated documents, in document order."""
    from lm_eval.utils import hash_string

    from lowbit.evaluation.harness import prepare
    from lowbit.evaluation.text import data_dir
    from lowbit.models.sources import cache_root

    task = prepare(cfg, data_dir(), cache_root()).manager.load(["local_gsm8k"])["tasks"]
    task = task["local_gsm8k"]
    task.set_fewshot_seed(1234)  # simple_evaluate's default few-shot seed
    task.build_all_requests(limit=cfg.limit)
    by_doc = {inst.doc_id: inst.args[0] for inst in task.instances}
    prompts = [by_doc[r.doc_id] for r in records]
    assert [hash_string(p) for p in prompts] == [r.prompt_hash for r in records]
    return prompts


def bare_generate(model, tok, prompts: list[str], stops: list[str], batch: int) -> dict:
    """Greedy generation by transformers alone, batched as the harness batches."""
    import torch

    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    order = sorted(range(len(prompts)), key=lambda i: -len(tok(prompts[i]).input_ids))
    answers: dict[int, str] = {}
    t0 = time.perf_counter()
    with torch.inference_mode():
        for k in range(0, len(order), batch):
            idx = order[k : k + batch]
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True,
                      add_special_tokens=False)  # fmt: skip
            out = model.generate(**enc, max_new_tokens=MAX_GEN, do_sample=False,
                                 stop_strings=stops, tokenizer=tok, use_cache=True,
                                 pad_token_id=tok.pad_token_id)  # fmt: skip
            for row, i in enumerate(idx):
                text = tok.decode(out[row, enc.input_ids.shape[1] :], skip_special_tokens=True)
                cut = min([text.find(s) for s in stops if s in text] or [len(text)])
                answers[i] = text[:cut]
    seconds = time.perf_counter() - t0
    texts = [answers[i] for i in range(len(prompts))]
    return {"seconds": seconds, "texts": texts, "tokens": answer_tokens(tok, texts)}


def answer_tokens(tok, texts: list[str]) -> int:
    return sum(len(tok(t, add_special_tokens=False).input_ids) for t in texts)


def evaluate(source: str, cfg, rt) -> tuple:
    from lowbit import api

    model, handle = api.load_for_tasks(source, rt)
    run = api.evaluate_tasks(model, handle, cfg)
    return model, handle, run


def summary(run, tok) -> dict:
    recs = run.samples["gsm8k"]
    texts = [r.generated or "" for r in recs]
    tokens = answer_tokens(tok, texts)
    return {
        "metrics": run.metrics["gsm8k"],
        "seconds": run.info["seconds"],
        "answer_tokens": tokens,
        "answer_tokens_per_s": tokens / run.info["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--calib-windows", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--gptq", help="a GPTQ W4 g64 directory saved by (1) already")
    parser.add_argument(
        "--algorithm", default="gptq", help="gptq (the issue's), or rtn where GPTQ takes too long"
    )
    args = parser.parse_args()
    from lowbit import api
    from lowbit.runtime import resolve_runtime

    OUT.mkdir(parents=True, exist_ok=True)
    rt = resolve_runtime()
    cfg = api.TaskConfig(("gsm8k",), limit=args.limit, batch_size=args.batch_size,
                         max_gen_toks=MAX_GEN)  # fmt: skip
    record: dict = {"limit": args.limit, "batch_size": args.batch_size, "max_gen_toks": MAX_GEN,
                    "calib_windows": args.calib_windows, "device": str(rt.device)}  # fmt: skip
    if args.gptq:
        gptq_dir, record["gptq_dir"] = args.gptq, args.gptq
    else:
        gptq_dir, record["quantize_s"] = quantize(args.algorithm, args.calib_windows)
    record["candidate"] = f"{args.algorithm} W4 g64 symmetric"
    model, handle, ref = evaluate("smollm2-135m", cfg, rt)
    tok = handle.load_tokenizer()
    record["fp32"] = summary(ref, tok)
    prompts = contexts(cfg, ref.samples["gsm8k"])
    stops = ["Question:", "</s>", "<|im_end|>", tok.eos_token]
    bare = bare_generate(model, tok, prompts, stops, args.batch_size)
    same = sum(a == (r.generated or "") for a, r in zip(bare["texts"], ref.samples["gsm8k"],
                                                        strict=True))  # fmt: skip
    record["bare_generate_fp32"] = {
        "seconds": bare["seconds"], "answer_tokens": bare["tokens"],
        "answer_tokens_per_s": bare["tokens"] / bare["seconds"], "same_answers": same,
        "lowbit_over_bare_time": ref.info["seconds"] / bare["seconds"],
    }  # fmt: skip
    print(json.dumps(record, indent=1), flush=True)
    del model
    _, _, quant = evaluate(gptq_dir, cfg, rt)
    record["candidate_run"] = summary(quant, tok)
    cmp = api.compare_task_runs(ref, quant)["tasks"]["gsm8k"]
    keys = ("n", "acc_ref", "acc_quant", "delta", "flips_to_wrong", "flips_to_right",
            "error_jaccard", "mcnemar")  # fmt: skip
    record["comparison"] = {k: cmp[k] for k in keys}
    write_result(OUT / "gsm8k.json", record)
    samples = {"fp32": ref.to_dict()["samples"], "candidate": quant.to_dict()["samples"]}
    write_result(OUT / "samples.json", samples)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
