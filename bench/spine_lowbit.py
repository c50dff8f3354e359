"""lowbit's side of bench/spine.py, in its own process: GPTQ W4 group 64 symmetric on the
built-in model with the given calibration windows; prints one JSON line (wall time, peak RSS)."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--propagation", default="true-sequential")
    args = parser.parse_args()
    t_start = time.perf_counter()
    from safetensors.torch import load_file

    from lowbit._io import peak_rss_bytes
    from lowbit.algorithms import GPTQConfig
    from lowbit.formats import IntFormat, PerGroup
    from lowbit.models.quantize import PipelineConfig, quantize_model
    from lowbit.models.saving import save_quantized
    from lowbit.models.sources import resolve_model
    from lowbit.plan import LayerSpec, uniform_plan

    calib = load_file(str(args.calib))["input_ids"]
    handle = resolve_model("smollm2-135m")
    plan = uniform_plan(LayerSpec(IntFormat(args.bits), PerGroup(args.group_size), GPTQConfig()))
    t0 = time.perf_counter()
    qm = quantize_model(handle, plan, calib, pipeline=PipelineConfig(args.propagation))
    wall = time.perf_counter() - t0
    rss = peak_rss_bytes()
    if args.out.exists():
        shutil.rmtree(args.out)
    save_quantized(qm, args.out, {"bench": "spine"})
    print(
        json.dumps(
            {
                "quantize_wall_s": wall,
                "peak_rss_bytes": rss,
                "timings": qm.timings,
                "total_wall_s": time.perf_counter() - t_start,
            }
        )
    )


if __name__ == "__main__":
    main()
