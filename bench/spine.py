"""Benchmark of the spine (issue 2): lowbit GPTQ against llm-compressor's, same run, same machine.

Protocol: SmolLM2-135M (built-in), WikiText-2 raw test, ctx 512, the first 40 windows;
calibration 128 × 512 windows from wiki.valid.tokens (seed 0), shared by both tools; GPTQ W4,
group 64, symmetric. Each quantization runs in its own process so its peak RSS is its own.

    bash bench/llmcompressor/setup.sh          # once: llm-compressor 0.14 in bench/.venv-llmc
    .venv/bin/python bench/spine.py            # writes bench/results/spine.json

Steps: (1) the calibration windows are written to a file both tools read; (2) lowbit quantizes
(``bench/spine_lowbit.py``); (3) llm-compressor quantizes (``bench/llmcompressor/run_gptq.py``);
(4) one fp32 pass of the decoder over the calibration set is timed; (5) lowbit's and
llm-compressor's models are evaluated with lowbit's evaluator, one model in memory at a time,
layer-wise, against the reference's log-probabilities cached on disk
(``bench/results/spine-reference.lbref``); the reference's perplexity evaluation alone is timed
against bare forward passes of the whole model over the same windows, and the reference
perplexity is checked against an independent evaluator. The result file records the command,
the commit and the machine.
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
from common import write_result

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
    RESULTS.mkdir(parents=True, exist_ok=True)
    from lowbit import api
    from lowbit.evaluation.text import data_dir

    handle = api.load("smollm2-135m")
    data = data_dir()
    valid = api.TextConfig(str(data / "wikitext-2" / "wiki.valid.tokens"), 512, args.calib_windows)
    calib = api.text_windows(handle, valid, calibration=True).ids
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
    test = api.TextConfig(str(data / "wikitext-2-raw" / "wiki.test.raw"), 512, args.eval_windows)
    windows = api.text_windows(handle, test, calibration=False)
    out["eval"] = _evaluate(handle, windows, skip_llmc=args.skip_llmc)
    write_result(RESULTS / "spine.json", out)
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
    """One fp32 forward pass of the decoder blocks over every calibration window (the whole
    model in memory: the bare cost quantization is compared with)."""
    model = handle.load_model()
    body = model.get_submodule(handle.arch.blocks_path.rsplit(".", 1)[0])
    t0 = time.perf_counter()
    with torch.inference_mode():
        for w in calib:
            body(input_ids=w[None], use_cache=False)
    return time.perf_counter() - t0


def _evaluate(handle, windows, *, skip_llmc: bool) -> dict:
    """The three (or two) quantized models against the reference's cached log-probabilities,
    one model in memory at a time, layer-wise; then the reference's perplexity alone, bare
    forward passes of the whole model over the same windows, and the independent evaluator."""
    from lowbit import api

    rt = api.runtime()
    reference = api.model_view(handle)
    cands = {f"lowbit-{m}": api.view_of(str(RESULTS / f"lowbit-{m}"))[0] for m in MODES}
    if not skip_llmc:  # compressed-tensors: decompressed once into $LOWBIT_CACHE
        cands["llmcompressor"] = api.view_of(str(RESULTS / "llmc-gptq-w4"))[0]
    cache = RESULTS / "spine-reference.lbref"
    cache.unlink(missing_ok=True)  # so that the reference's own evaluation is timed
    res = {
        k: v.to_dict() for k, v in api.evaluate(reference, cands, windows, rt, cache=cache).items()
    }
    alone = api.perplexity(reference, windows, rt)
    model = handle.load_model(rt)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for w in windows.ids:
            model(input_ids=w[None], use_cache=False)
    bare = time.perf_counter() - t0
    del model
    res["ppl_eval_alone_s"] = alone.wall_seconds
    res["ppl_eval_alone_forward_s"] = alone.seconds
    res["bare_forward_s"] = bare
    res["independent_ppl"] = _independent_ppl(handle.path, windows.ids)
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
