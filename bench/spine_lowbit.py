"""lowbit's side of bench/spine.py, in its own process: GPTQ W4 group 64 symmetric on the
built-in model with the given calibration windows, each block written to ``--out`` as soon as it
is quantized; prints one JSON line (wall time, peak RSS, timings, execution)."""

from __future__ import annotations

import argparse
import json
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

    from lowbit import api
    from lowbit._io import peak_rss_bytes

    ids = load_file(str(args.calib))["input_ids"]
    calib = api.Windows(ids, {"source": str(args.calib), "windows": int(ids.shape[0])})
    handle = api.load("smollm2-135m")
    rt = api.runtime()
    plan = api.plan_from_options(api.spec_from_options(args.bits, args.group_size, True, "gptq"))
    with api.saving(args.out, overwrite=True) as tmp:
        t0 = time.perf_counter()
        qm = api.quantize(handle, plan, calib, rt=rt, propagation=args.propagation, shard_dir=tmp)
        wall = time.perf_counter() - t0
        rss = peak_rss_bytes()
        prov = api.provenance(
            "bench/spine_lowbit.py",
            handle,
            {"plan": plan.to_dict(), "propagation": args.propagation},
            {"calibration": calib.info},
            dict(qm.timings),
            rt,
        )
        api.finish_save(qm, tmp, prov)
    print(
        json.dumps(
            {
                "quantize_wall_s": wall,
                "peak_rss_bytes": rss,
                "timings": dict(qm.timings),
                "execution": dict(qm.execution),
                "total_wall_s": time.perf_counter() - t_start,
            }
        )
    )


if __name__ == "__main__":
    main()
