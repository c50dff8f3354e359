"""Export of the built-in model (issue 7): sizes, times, exactness, and lowbit's GPTQ Q4_0
against llama.cpp's own Q4_0.

Steps, the lowbit side run as a user would (outputs under bench/results/export):
(1) `lowbit quantize` GPTQ and RTN INT4 group 32 symmetric (128 × 512 calibration windows of
    wiki.valid.tokens, seed 0) — the layout of GGUF's Q4_0;
(2) `lowbit export` of each to GGUF, and of the GPTQ model to compressed-tensors, timed;
(3) `lowbit eval` of the saved models and of the exports read back (GGUF through transformers'
    GGUF loader, compressed-tensors through the library's decompressors) on WikiText-2 raw test,
    40 × 512, against the fp32 model;
(4) the peer: llama.cpp's Q4_0 of the same model (ggml's reference quantize_row_q4_0, as
    llama-quantize runs it without an importance matrix, through the gguf library's port),
    evaluated on the same windows in-process.

Usage: .venv/bin/python bench/export.py [--calib-windows 128] [--eval-windows 40]
(smaller values only for a smoke test: the protocol is 128 and 40)
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
OUT = ROOT / "bench" / "results" / "export"
LOWBIT = [sys.executable, "-m", "lowbit.cli.main"]


def run(cmd: list[str]) -> float:
    print("$ lowbit", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run([*LOWBIT, *cmd], check=True, cwd=OUT)
    return time.perf_counter() - t0


def evaluate(source: str, name: str, test: str, reference: bool, windows: int = 40) -> dict:
    ref = ["--reference", "smollm2-135m"] if reference else []
    args = ["eval", source, *ref, "--eval-text", test, "--windows", str(windows), "--ctx", "512"]
    seconds = run([*args, "-o", f"{name}.eval.json", "--overwrite"])
    res = json.loads((OUT / f"{name}.eval.json").read_text())["results"]["model"]
    return {"perplexity": res["perplexity"], "kl": res["kl"]["mean"], "eval_s": seconds}


def llamacpp_q4_0(test: str, n_windows: int = 40) -> dict:
    """llama.cpp's Q4_0 of every linear layer of the blocks, evaluated like the others: the
    packed Q4_0 blocks are kept and dequantized as each decoder block is read (a view over the
    original's weights), against the reference's log-probabilities cached on disk (the same
    cache the `lowbit eval` runs below reuse). ``quantize_s``: quantization to Q4_0 alone."""
    import torch
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    from lowbit import api
    from lowbit.models.views import ModelView
    from lowbit.models.weights import OverlayWeights

    q4_0 = GGMLQuantizationType.Q4_0
    handle = api.load("smollm2-135m")
    arch, base, cpu = handle.arch, handle.weights(), torch.device("cpu")
    keys = [
        f"{arch.blocks_path}.{i}.{m}.weight"
        for i in range(int(handle.config.num_hidden_layers))
        for m in arch.linear_names
    ]
    t0 = time.perf_counter()
    packed = {k: quantize(base.read([k], cpu)[k].float().numpy(), q4_0) for k in keys}
    quant_s = time.perf_counter() - t0

    def unpacked(key: str):
        return lambda device: torch.from_numpy(dequantize(packed[key], q4_0)).to(device)

    weights = OverlayWeights(base, {k: unpacked(k) for k in keys})
    view = ModelView("llama.cpp Q4_0", f"{handle.fingerprint}+q4_0", handle.config, arch, weights)
    rt = api.runtime()
    windows = api.text_windows(handle, api.TextConfig(test, 512, n_windows), calibration=False)
    res = api.evaluate(api.model_view(handle), {"q4_0": view}, windows, rt)["q4_0"]
    return {"perplexity": res.perplexity, "kl": res.kl["mean"], "quantize_s": quant_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calib-windows", type=int, default=128)
    parser.add_argument("--eval-windows", type=int, default=40)
    args = parser.parse_args()
    from lowbit.evaluation.text import data_dir

    data = data_dir()
    valid = str(data / "wikitext-2" / "wiki.valid.tokens")
    test = str(data / "wikitext-2-raw" / "wiki.test.raw")
    OUT.mkdir(parents=True, exist_ok=True)
    record: dict = {
        "protocol": {"calib_windows": args.calib_windows, "eval_windows": args.eval_windows},
        "llama.cpp Q4_0": llamacpp_q4_0(test, args.eval_windows),
    }
    print(record, flush=True)
    n_calib = str(args.calib_windows)
    calib = ["--calib-text", valid, "--calib-windows", n_calib, "--ctx", "512", "--seed", "0"]
    for algo in ("gptq", "rtn"):
        name = f"{algo}-w4g32"
        q = ["quantize", "smollm2-135m", "-o", name, "--bits", "4", "--group-size", "32"]
        quant_s = run([*q, "--algorithm", algo, *calibration_options(algo, calib), "--overwrite"])
        saved = json.loads((OUT / f"{name}.result.json").read_text())["result"]
        entry = {"quantize_s": quant_s, "predicted_bytes": saved["size_bytes"]}
        entry["evaluated"] = evaluate(name, name, test, False, args.eval_windows)
        targets = [("gguf", f"{name}.gguf")]
        if algo == "gptq":
            targets.append(("compressed-tensors", f"{name}-ct"))
        for target, out in targets:
            export = ["export", name, "--to", target, "-o", out, "--overwrite"]
            wall = run([*export, "--eval-result", f"{name}.eval.json"])
            rep = json.loads((OUT / f"{out}.result.json").read_text())["result"]
            entry[target] = {
                "export_wall_s": wall,
                "export_s": rep["seconds"],
                "size_bytes": rep["size_bytes"],
                "predicted_bytes": rep["predicted_bytes"],
                "max_weight_error": rep["max_weight_error"],
                "reimported": evaluate(out, f"{out}-reimport", test, True, args.eval_windows),
            }
        record[name] = entry
        print(json.dumps(entry, indent=1), flush=True)
    record = write_result(OUT / "summary.json", record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
