"""Formats × algorithms (issue 3) on the built-in model: perplexity and KL divergence at about 4
and 3 bits per weight, W8A8 (INT8 and FP8) and KV-cache quantization, each with its true bits
per weight and quantization time.

Protocol: WikiText-2 raw test, ctx 512, first 40 windows, against the fp32 model; calibration
windows of 512 tokens drawn (seed 0) from wiki.valid.tokens: `--calib-windows` for the table
(default 128, the spine's), and always 128 for the 3-bit comparison of GPTQ, AWQ and SqueezeLLM
with RTN. A configuration stored with any number of calibration windows is not run again
unless named in `--only`. Each configuration is quantized and then evaluated on its own (one
model in memory) against the reference's log-probabilities, computed once and cached under
$LOWBIT_CACHE/references. Each finished batch of `--batch` configurations is
stored at once in bench/results/formats/formats.json (each row with the command, commit and
machine that measured it), so an interrupted run resumes where it stopped.

Usage: .venv/bin/python bench/formats.py [--calib-windows N] [--only NAME ...] [--batch K]
(`--eval-windows N` and `--store FILE` for a smoke test apart from the stored rows)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import provenance

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "formats"


def configs() -> dict[str, tuple[str, object]]:
    """name → (part, plan)."""
    from lowbit.algorithms import AWQConfig, GPTQConfig, RTNConfig, SqueezeLLMConfig
    from lowbit.algorithms.activation_specs import ActivationSpec, KVCacheSpec
    from lowbit.formats import IntFormat, PerChannel, PerGroup
    from lowbit.formats.codebook import LUTFormat, NF4Format
    from lowbit.formats.floating import FloatFormat
    from lowbit.formats.microscaling import MXFormat
    from lowbit.formats.nvfp4 import NVFP4Format
    from lowbit.plan import LayerSpec, Plan, uniform_plan

    algos = {"RTN": RTNConfig(), "GPTQ": GPTQConfig(), "AWQ": AWQConfig()}
    weights = {
        "4": [
            ("INT4 g64", IntFormat(4), PerGroup(64)),
            ("INT4 g32", IntFormat(4), PerGroup(32)),
            ("NF4 g64", NF4Format(), PerGroup(64)),
            ("FP4 E2M1 g32", FloatFormat(2, 1), PerGroup(32)),
            ("MXFP4", MXFormat("fp4_e2m1"), PerGroup(32)),
            ("NVFP4", NVFP4Format(), PerGroup(16)),
        ],
        "3": [("INT3 g64", IntFormat(3), PerGroup(64))],
    }
    out: dict[str, tuple[str, object]] = {}
    for bits, rows in weights.items():
        for label, fmt, gran in rows:
            for algo, cfg in algos.items():
                out[f"{algo} {label}"] = (f"~{bits} bits", uniform_plan(LayerSpec(fmt, gran, cfg)))
    for bits in (4, 3):
        lut = LUTFormat(bits)
        for algo, cfg in (("RTN", RTNConfig()), ("GPTQ", GPTQConfig()),
                          ("SqueezeLLM", SqueezeLLMConfig())):  # fmt: skip
            out[f"{algo} LUT{bits} per-channel"] = (
                f"~{bits} bits",
                uniform_plan(LayerSpec(lut, PerChannel(), cfg)),
            )
    int8 = LayerSpec(IntFormat(8), PerChannel(), RTNConfig())
    fp8 = FloatFormat(4, 3, "float32")
    out["W8A8 INT8 (per-token dynamic)"] = (
        "W8A8",
        Plan(int8, activations=ActivationSpec(IntFormat(8), "per_token", True)),
    )
    out["W8A8 FP8 E4M3 (per-tensor static, min-max)"] = (
        "W8A8",
        Plan(
            LayerSpec(fp8, PerChannel(), RTNConfig()),
            activations=ActivationSpec(FloatFormat(4, 3, "float32"), "per_tensor", False),
        ),
    )
    # what W8A8 costs, split: the weights alone, and SmoothQuant against the activations' outliers
    out["W8 INT8 per-channel (weights only)"] = ("W8A8", Plan(int8))
    out["W8 FP8 E4M3 per-channel (weights only)"] = (
        "W8A8",
        Plan(LayerSpec(fp8, PerChannel(), RTNConfig())),
    )
    out["W8A8 INT8 (per-token dynamic) + SmoothQuant α 0.8"] = (
        "W8A8",
        Plan(int8, activations=ActivationSpec(IntFormat(8), "per_token", True), smoothquant=0.8),
    )
    for bits in (8, 4):
        out[f"KV cache INT{bits} per-token (weights fp32)"] = (
            "KV cache",
            Plan(None, kv_cache=KVCacheSpec(IntFormat(bits))),
        )
    return out


THREE_BIT = ("RTN INT3 g64", "GPTQ INT3 g64", "AWQ INT3 g64", "SqueezeLLM LUT3 per-channel")
PRIORITY = tuple(f"{a} {f}" for f in ("MXFP4", "NVFP4", "INT4 g32") for a in ("RTN", "GPTQ", "AWQ"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calib-windows", type=int, default=128)
    parser.add_argument("--eval-windows", type=int, default=40, help="40: the protocol")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--batch", type=int, default=6, help="configs between two stores")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--store", default="formats.json", help="results file in OUT")
    parser.add_argument("--table", action="store_true", help="print the stored rows as Markdown")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads((OUT / args.store).read_text())))
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from lowbit import api
    from lowbit.evaluation.text import data_dir

    data = data_dir()
    OUT.mkdir(parents=True, exist_ok=True)
    store = OUT / args.store
    done = json.loads(store.read_text()) if store.is_file() else {}
    handle = api.load("smollm2-135m")
    test = api.TextConfig(str(data / "wikitext-2-raw" / "wiki.test.raw"), 512, args.eval_windows)
    windows = api.text_windows(handle, test, calibration=False)
    valid = str(data / "wikitext-2" / "wiki.valid.tokens")
    calib = {
        n: api.text_windows(handle, api.TextConfig(valid, 512, n, 0), calibration=True)
        for n in {args.calib_windows, 128}
    }
    every = configs()
    first = [*THREE_BIT, *(k for k in every if k.startswith("W8A8")), *PRIORITY]
    order = [*first, *(k for k in every if k not in first)]
    todo = {k: every[k] for k in order if args.only is None or k in args.only}
    batch: dict[str, tuple[str, object, int]] = {}
    for name, (part, plan) in todo.items():
        n_calib = 128 if name in THREE_BIT else args.calib_windows
        key = f"{name} [calib {n_calib}]" if plan.needs_calibration() else name
        measured = key in done or any(k.startswith(f"{name} [calib ") for k in done)
        if not measured or (args.only is not None and key not in done):
            batch[key] = (part, plan, n_calib)
        if len(batch) == args.batch:
            run_batch(api, handle, windows, calib, batch, done, store)
            batch = {}
    if batch:
        run_batch(api, handle, windows, calib, batch, done, store)


def run_batch(api, handle, windows, calib, batch: dict, done: dict, store: Path) -> None:
    """Quantize each config of ``batch`` and evaluate it at once (one model in memory: the
    fake-quantized view, read block by block) against the reference's log-probabilities,
    computed once and cached (under $LOWBIT_CACHE/references); store the batch."""
    rt = api.runtime()
    reference = api.model_view(handle)
    for key, (part, plan, n_calib) in batch.items():
        print(f"--- {key}", flush=True)
        t0 = time.perf_counter()
        qm = api.quantize(handle, plan, calib[n_calib], rt=rt)
        seconds = time.perf_counter() - t0
        fp = api.footprint(handle, qm)
        view = api.quantized_view(qm, key)
        res = api.evaluate(reference, {key: view}, windows, rt)
        q = res[key]
        done[key] = {
            "part": part,
            "bits_per_weight_linear": fp.bits_per_weight_linear,
            "bits_per_weight_model": fp.bits_per_weight_model,
            "quantize_s": seconds,
            "calibration_windows": n_calib if plan.needs_calibration() else 0,
            "perplexity": q.perplexity,
            "reference_perplexity": res["reference"].perplexity,
            "kl_mean": q.kl["mean"],
            "kl_p99": q.kl["p99"],
            "top1_agreement": q.top1_agreement,
            "eval_windows": int(windows.ids.shape[0]),
            "provenance": provenance(),
        }
        print(
            key, json.dumps({k: v for k, v in done[key].items() if k != "provenance"}), flush=True
        )
        del qm, view, res
    store.write_text(json.dumps(done, indent=1))


def markdown_table(done: dict) -> str:
    """The stored rows as a Markdown table, by part then by KL divergence, followed by each
    calibrated algorithm's KL against RTN's in the same format."""
    head = (
        "| part | configuration | bpw linear | bpw model | quantize s | calib | perplexity "
        "| Δppl | KL mean | KL p99 | top-1 |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    parts = ["~4 bits", "~3 bits", "W8A8", "KV cache"]
    for key, r in sorted(
        done.items(), key=lambda kv: (parts.index(kv[1]["part"]), kv[1]["kl_mean"])
    ):
        ref = r["reference_perplexity"]
        lines.append(
            f"| {r['part']} | {key} | {r['bits_per_weight_linear']:.3f} "
            f"| {r['bits_per_weight_model']:.3f} | {r['quantize_s']:.0f} "
            f"| {r['calibration_windows'] or '–'} | {r['perplexity']:.2f} "
            f"| {100 * (r['perplexity'] / ref - 1):+.2f}% | {r['kl_mean']:.4f} "
            f"| {r['kl_p99']:.3f} | {100 * r['top1_agreement']:.2f}% |"
        )
    rtn = {k.removeprefix("RTN "): r["kl_mean"] for k, r in done.items() if k.startswith("RTN ")}
    lines += [
        "",
        "| configuration | KL mean | against | its KL | KL change |",
        "|---|---|---|---|---|",
    ]
    for key, r in sorted(done.items()):
        algo, _, rest = key.partition(" ")
        fmt = rest.split(" [calib")[0]
        against = [fmt]
        if algo == "SqueezeLLM":  # the comparison: RTN on the integer grid, group 64
            against.append(f"INT{fmt[3]} g64")
        for other in against:
            if algo != "RTN" and other in rtn:
                change = 100 * (r["kl_mean"] / rtn[other] - 1)
                kl, its = f"{r['kl_mean']:.4f}", f"{rtn[other]:.4f}"
                lines.append(f"| {key} | {kl} | RTN {other} | {its} | {change:+.1f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
