"""Benchmark of the spine (issue 2): lowbit GPTQ against llm-compressor's, same run, same machine.

Protocol: SmolLM2-135M (built-in), WikiText-2 raw test, ctx 512, the first 40 windows;
calibration 128 × 512 windows from wiki.valid.tokens (seed 0), shared by both tools; GPTQ W4,
group 64, symmetric. Each quantization runs in its own process so its peak RSS is its own.

    bash bench/llmcompressor/setup.sh          # once: llm-compressor 0.14 in bench/.venv-llmc
    .venv/bin/python bench/spine.py            # writes bench/results/spine.json

Steps: (1) the calibration windows are written to a file both tools read; (2) lowbit quantizes
(``bench/spine_lowbit.py``); (3) llm-compressor quantizes (``bench/llmcompressor/run_gptq.py``);
(4) one fp32 pass of the decoder over the calibration set is timed; (5) the reference, lowbit's
and llm-compressor's models are evaluated with lowbit's evaluator, the evaluation is timed
against bare forward passes over the same windows, and the reference perplexity is checked
against an independent evaluator.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
MODES = ("true-sequential", "two-pass")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calib-windows", type=int, default=128)
    parser.add_argument("--eval-windows", type=int, default=40)
    parser.add_argument("--skip-llmc", action="store_true")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    from lowbit.evaluation import text as T
    from lowbit.models.sources import resolve_model

    handle = resolve_model("smollm2-135m")
    data = T.data_dir()
    tok = handle.load_tokenizer()
    valid = T.tokenize(tok, T.load_text(T.FileText(data / "wikitext-2" / "wiki.valid.tokens")))
    calib = T.calibration_windows(valid, 512, args.calib_windows, 0, "wiki.valid.tokens")
    calib_file = RESULTS / "calib.safetensors"
    from safetensors.torch import save_file

    save_file({"input_ids": calib.contiguous()}, str(calib_file))
    out: dict = {
        "protocol": {
            "calib_windows": args.calib_windows,
            "eval_windows": args.eval_windows,
            "ctx": 512,
            "scheme": "W4 group 64 symmetric",
        }
    }
    script = str(HERE / "spine_lowbit.py")
    for mode in MODES:
        cmd = [sys.executable, script, "--calib", str(calib_file), "--propagation", mode]
        out[f"lowbit-{mode}"] = _child([*cmd, "--out", str(RESULTS / f"lowbit-{mode}")])
    if not args.skip_llmc:
        llmc_py = HERE / ".venv-llmc" / "bin" / "python"
        _child(
            [
                str(llmc_py),
                str(HERE / "llmcompressor" / "run_gptq.py"),
                "--model-dir",
                str(handle.path),
                "--calib",
                str(calib_file),
                "--out",
                str(RESULTS / "llmc-gptq-w4"),
            ]
        )
        out["llmcompressor"] = json.loads(
            (RESULTS / "llmc-gptq-w4" / "llmc_result.json").read_text()
        )
    out["decoder_pass_s"] = _decoder_pass(handle, calib)
    test = T.tokenize(tok, T.load_text(T.FileText(data / "wikitext-2-raw" / "wiki.test.raw")))
    windows = T.eval_windows(test, 512, args.eval_windows, "wiki.test.raw")
    out["eval"] = _evaluate(handle, windows, skip_llmc=args.skip_llmc)
    (RESULTS / "spine.json").write_text(json.dumps(out, indent=2))
    _print(out)


def _child(cmd: list[str]) -> dict:
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{cmd[1]} failed:\n{run.stderr[-4000:]}")
    last = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else "{}"
    result = json.loads(last) if last.startswith("{") else {}
    result["process_wall_s"] = time.perf_counter() - t0
    return result


def _decoder_pass(handle, calib: torch.Tensor) -> float:
    """One fp32 forward pass of the decoder blocks over every calibration window."""
    model = handle.load_model()
    body = model.get_submodule(handle.arch.blocks_path.rsplit(".", 1)[0])
    t0 = time.perf_counter()
    with torch.inference_mode():
        for w in calib:
            body(input_ids=w[None], use_cache=False)
    return time.perf_counter() - t0


def _evaluate(handle, windows: torch.Tensor, *, skip_llmc: bool) -> dict:
    from transformers import AutoModelForCausalLM

    from lowbit.evaluation.metrics import evaluate_models
    from lowbit.models.saving import load_quantized

    ref = handle.load_model()
    cands = {f"lowbit-{m}": load_quantized(RESULTS / f"lowbit-{m}")[0] for m in MODES}
    if not skip_llmc:
        cands["llmcompressor"] = AutoModelForCausalLM.from_pretrained(
            RESULTS / "llmc-gptq-w4", dtype=torch.float32
        ).eval()
    res = {k: v.to_dict() for k, v in evaluate_models(ref, cands, windows).items()}
    alone = evaluate_models(ref, {}, windows)["reference"]
    t0 = time.perf_counter()
    with torch.inference_mode():
        for w in windows:
            ref(input_ids=w[None], use_cache=False)
    bare = time.perf_counter() - t0
    res["ppl_eval_alone_s"] = alone.seconds
    res["bare_forward_s"] = bare
    res["independent_ppl"] = _independent_ppl(handle.path, windows)
    return res


def _independent_ppl(path: Path, windows: torch.Tensor) -> float:
    """A 20-line evaluator: transformers forward, log-softmax in float64, gather."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in windows:
            lp = torch.log_softmax(model(w[None]).logits[0, :-1].double(), -1)
            nll -= lp.gather(1, w[1:, None]).sum().item()
            count += w.numel() - 1
    return math.exp(nll / count)


def _print(out: dict) -> None:
    ev = out["eval"]
    print(f"decoder pass over calibration: {out['decoder_pass_s']:.1f} s")
    for name in (*(f"lowbit-{m}" for m in MODES), "llmcompressor"):
        if name not in ev:
            continue
        q = out[name]
        wall = q.get("quantize_wall_s") or q.get("oneshot_wall_s")
        rss = q.get("peak_rss_bytes")
        print(
            f"{name}: ppl {ev[name]['perplexity']:.3f}  KL {ev[name]['kl']['mean']:.4f}  "
            f"top1 {ev[name]['top1_agreement']:.4f}  quantize {wall:.1f} s "
            f"({wall / out['decoder_pass_s']:.2f} decoder passes)  peak RSS {rss / 1e9:.3f} GB"
        )
    print(
        f"reference ppl {ev['reference']['perplexity']:.4f}, "
        f"independent {ev['independent_ppl']:.4f}"
    )
    print(
        f"ppl evaluation {ev['ppl_eval_alone_s']:.1f} s "
        f"vs bare forward {ev['bare_forward_s']:.1f} s"
        f" ({ev['ppl_eval_alone_s'] / ev['bare_forward_s']:.3f}×)"
    )


if __name__ == "__main__":
    main()
