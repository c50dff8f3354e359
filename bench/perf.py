"""The performance model against LLM-Viewer and against measurements on this machine (issue 5).

(A) Llama-2-7B, fp16 weights/activations/KV, batch 1, sequence 2048, A100 40GB (1555 GB/s,
    312 TFLOPS fp16, the numbers LLM-Viewer also uses): lowbit's per-layer times beside
    LLM-Viewer's. LLM-Viewer's paper prints its per-layer table for an A6000 only (and as an
    image); the A100 figures below are what LLM-Viewer's analyzer computes with its own A100
    parameters (hahnyuan/LLM-Viewer model_analyzer.py @ 01b269d, reproduced formula by formula).
(B) `lowbit profile` of the built-in model on this machine, fp32 and fake-quantized (RTN W4
    g32), batch 1: measured prefill and decode latency against the prediction for this
    machine's measured roofline.

Usage: .venv/bin/python bench/perf.py [--parts A,B]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import write_result

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "perf"
LOWBIT = [sys.executable, "-m", "lowbit.cli.main"]

# LLM-Viewer per-layer times (µs) for Llama-2-7B on its "nvidia_A100" (40 GB) entry, batch 1,
# seq 2048, w16a16kv16, use_flashattention=False.
LLM_VIEWER_US = {
    "prefill": {"q_proj": 220.25, "k_proj": 220.25, "v_proj": 220.25, "o_proj": 220.25,
                "gate_proj": 591.93, "up_proj": 591.93, "down_proj": 591.93,
                "attention (qk + softmax + sv)": 194.21 + 345.25 + 194.21,
                "norms (2)": 2 * 21.58, "residual adds (2)": 2 * 21.58, "silu_mul": 32.37,
                "one layer": 3510.0, "lm_head": 168.6},
    "decode": {"q_proj": 21.59, "k_proj": 21.59, "v_proj": 21.59, "o_proj": 21.59,
               "gate_proj": 58.01, "up_proj": 58.01, "down_proj": 58.01,
               "attention (qk + softmax + sv)": 10.88 + 0.169 + 10.88,
               "norms (2)": 2 * 0.0105, "residual adds (2)": 2 * 0.0105, "silu_mul": 0.0158,
               "one layer": 282.37, "lm_head": 168.6},
}  # fmt: skip
GROUPS = {
    "attention (qk + softmax + sv)": ("attention",),
    "norms (2)": ("input_norm", "post_norm"),
    "residual adds (2)": ("residual_add",),
}


def part_a() -> dict:
    from lowbit.perf.estimate import Layout, stage_cost
    from lowbit.perf.hardware import get_hardware
    from lowbit.perf.operators import Step
    from lowbit.perf.precision import precision_for
    from lowbit.perf.shape import shape_from_config

    config = json.loads((ROOT / "bench" / "configs" / "llama-2-7b.json").read_text())
    shape, hw = shape_from_config(config), get_hardware("a100-40gb")
    prec = precision_for(shape, None)
    layout = Layout(batch=1, prompt=2048, gen=2)
    rows = {}
    for stage, step in (("prefill", Step(1, 2048, 2048)), ("decode", Step(1, 1, 2048))):
        cost = stage_cost(shape, prec, hw, step, layout)
        per: dict[str, float] = {}
        for t in cost.ops:
            per[t.op.name] = per.get(t.op.name, 0.0) + t.seconds * 1e6
        layer = {
            k: v / shape.layers
            for k, v in per.items()
            if k not in ("embedding", "lm_head", "final_norm")
        }
        ours = {name: layer.get(name, 0.0) for name in LLM_VIEWER_US[stage] if name in layer}
        for label, members in GROUPS.items():
            ours[label] = sum(layer.get(m, 0.0) for m in members)
        ours["silu_mul"] = layer["silu_mul"]
        ours["one layer"] = sum(layer.values())
        ours["lm_head"] = per["lm_head"]
        rows[stage] = {
            name: {"llm_viewer_us": ref, "lowbit_us": ours[name]}
            for name, ref in LLM_VIEWER_US[stage].items()
        }
    return rows


def part_b() -> dict:
    OUT.mkdir(parents=True, exist_ok=True)
    plan = OUT / "rtn-w4g32.json"
    spec = {
        "format": {"type": "int", "bits": 4},
        "granularity": {"type": "group", "size": 32},
        "algorithm": {"name": "rtn"},
    }
    plan.write_text(json.dumps({"lowbit_plan_version": 1, "default": spec, "rules": []}))
    results = {}
    for name, extra in (("fp32", []), ("rtn-w4g32 (fake-quantized)", ["--plan", str(plan)])):
        for prompt in (128, 512):
            out = OUT / f"profile-{name.split()[0]}-p{prompt}.json"
            cmd = ["profile", "smollm2-135m", *extra, "--batch", "1", "--prompt", str(prompt)]
            subprocess.run(
                [*LOWBIT, *cmd, "--gen", "32", "-o", str(out), "--overwrite"], check=True
            )
            results[f"{name}, prompt {prompt}"] = json.loads(out.read_text())["end_to_end"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", default="A,B")
    parts = set(parser.parse_args().parts.split(","))
    OUT.mkdir(parents=True, exist_ok=True)
    record = {}
    if "A" in parts:
        record["llm_viewer"] = part_a()
    if "B" in parts:
        record["this_machine"] = part_b()
    record = write_result(OUT / "summary.json", record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
