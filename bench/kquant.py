"""GGML k-quants (issue 16 part 5) on the built-in model: RTN and GPTQ into Q4_K, Q5_K and
Q6_K, each layer in the type it was evaluated in (llama.cpp's fallback by name where a row is
not a multiple of 256: SmolLM2's 576-wide inputs of q/k/v/o/gate/up fall back to Q5_0, Q5_1 or
Q8_0; only down_proj, 1536 wide, holds super-blocks), with RTN INT4 g32 (Q4_0's layout) as a
reference point. Each model is exported to GGUF and every quantized tensor read back through
gguf's reader and dequantizer and compared with the weight lowbit evaluated.

Reduced protocol (not the spine's): WikiText-2 raw test, ctx 512, the first ``--eval-windows``
(default 20) windows, KL divergence against the fp32 model; calibration ``--calib-windows``
(default 16) windows of 512 tokens of wiki.valid.tokens (seed 0). Results in
bench/results/kquant.json, or ``--out`` (command, commit, machine); ``--only PREFIX ...`` runs only
the rows whose names start so (several processes side by side on a loaded machine).

Usage: .venv/bin/python bench/kquant.py [--eval-windows 20] [--calib-windows 16] [--threads N]
[--only PREFIX ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

from common import RESULTS, write_result


def configs() -> dict[str, object]:
    from lowbit.algorithms import GPTQConfig, RTNConfig
    from lowbit.formats import GGMLFormat, IntFormat, PerGroup
    from lowbit.plan import LayerSpec, uniform_plan

    out: dict[str, object] = {
        "RTN INT4 g32 sym (Q4_0 layout)": uniform_plan(
            LayerSpec(IntFormat(4), PerGroup(32), RTNConfig())
        )
    }
    for kind in ("q4_k", "q5_k", "q6_k"):
        for algo, cfg in (("RTN", RTNConfig()), ("GPTQ", GPTQConfig())):
            spec = LayerSpec(GGMLFormat(kind), PerGroup(256), cfg)
            out[f"{algo} {kind.upper()}"] = uniform_plan(spec)
    return out


def read_back(api, handle, qm, path: Path) -> dict:
    """Export ``qm`` to ``path`` and compare every written quantized tensor, dequantized by
    gguf's reader, with lowbit's weight (rows in llama.cpp's q/k order)."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from lowbit.export.gguf_blocks import permute_rows

    t0 = time.perf_counter()
    report = api.export(qm, api.fake_quant_model(handle, qm), "gguf", path)
    export_s = time.perf_counter() - t0
    tensors = {t.name: t for t in GGUFReader(path).tensors}
    heads = {
        "q_proj": handle.config.num_attention_heads,
        "k_proj": handle.config.num_key_value_heads,
    }
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    worst, checked = 0.0, 0
    for name, qw in qm.weights.items():
        block, module = name.split(".")[2], ".".join(name.split(".")[3:])
        t = tensors[f"blk.{block}.{names[module]}.weight"]
        want = qw.dequantize().numpy()
        n_head = heads.get(module.split(".")[-1])
        want = permute_rows(want, n_head) if n_head else want
        worst = max(worst, float(np.abs(dequantize(t.data, t.tensor_type) - want).max()))
        checked += 1
    return {
        "export_s": export_s,
        "file_bytes": report.size_bytes,
        "types": dict(collections.Counter(report.layers.values())),
        "notes": [n for n in report.notes if "fallback" in n],
        "exporter_max_weight_error": report.max_weight_error,
        "read_back_tensors": checked,
        "read_back_max_abs_diff": worst,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--eval-windows", type=int, default=20)
    parser.add_argument("--calib-windows", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", nargs="*", default=None, help="only rows starting so")
    parser.add_argument("--out", default="kquant.json")
    parser.add_argument("--table", nargs="*", default=None, help="print these result files")
    args = parser.parse_args()
    if args.table is not None:
        print(markdown_table([json.loads((RESULTS / f).read_text()) for f in args.table]))
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from lowbit import api
    from lowbit.evaluation.text import data_dir

    data = data_dir()
    handle = api.load("smollm2-135m")
    test = api.TextConfig(str(data / "wikitext-2-raw" / "wiki.test.raw"), 512, args.eval_windows)
    windows = api.text_windows(handle, test, calibration=False)
    valid = api.TextConfig(
        str(data / "wikitext-2" / "wiki.valid.tokens"), 512, args.calib_windows, 0
    )
    calib = api.text_windows(handle, valid, calibration=True)
    rt = api.runtime()
    reference = api.model_view(handle)
    rows: dict[str, dict] = {}
    only = tuple(args.only or ())
    todo = {k: p for k, p in configs().items() if not only or k.startswith(only)}
    for name, plan in todo.items():
        print(f"--- {name}", flush=True)
        t0 = time.perf_counter()
        qm = api.quantize(handle, plan, calib if plan.needs_calibration() else None, rt=rt)
        seconds = time.perf_counter() - t0
        fp = api.footprint(handle, qm)
        res = api.evaluate(reference, {name: api.quantized_view(qm, name)}, windows, rt)
        q = res[name]
        rows[name] = {
            "bits_per_weight_linear": fp.bits_per_weight_linear,
            "quantize_s": seconds,
            "calibration_windows": args.calib_windows if plan.needs_calibration() else 0,
            "kl_mean": q.kl["mean"],
            "kl_p99": q.kl["p99"],
            "perplexity": q.perplexity,
            "reference_perplexity": res["reference"].perplexity,
            "top1_agreement": q.top1_agreement,
        }
        with tempfile.TemporaryDirectory() as tmp:
            rows[name]["gguf"] = read_back(api, handle, qm, Path(tmp) / "m.gguf")
        print(json.dumps(rows[name]), flush=True)
        protocol = {
            "eval": f"WikiText-2 raw test, ctx 512, first {args.eval_windows} windows",
            "calibration": f"{args.calib_windows} x 512 windows of wiki.valid.tokens, seed 0",
        }
        write_result(RESULTS / args.out, {"protocol": protocol, "rows": rows})


def markdown_table(results: list[dict]) -> str:
    """The rows of several result files as one Markdown table."""
    lines = [
        "| configuration | bpw linear | calib | quantize s | KL mean | KL p99 | top-1 | ppl "
        "| GGUF types | read-back max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for name, r in result["rows"].items():
            types = ", ".join(f"{n} {t}" for t, n in sorted(r["gguf"]["types"].items()))
            lines.append(
                f"| {name} | {r['bits_per_weight_linear']:.4f} | {r['calibration_windows'] or '–'} "
                f"| {r['quantize_s']:.0f} | {r['kl_mean']:.4f} | {r['kl_p99']:.3f} "
                f"| {100 * r['top1_agreement']:.2f}% | {r['perplexity']:.2f} | {types} "
                f"| {r['gguf']['read_back_max_abs_diff']:.1f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
