"""Is a GPTQ candidate's measured KL biased when the probe scores the windows GPTQ was fitted on?
Per candidate, on the built-in model: the sensitivity table's KL on its default probe windows
(the first calibration windows, cut) against the KL on held-out windows of the same text
(``lowbit sensitivity --probe-held-out``: seeded offsets overlapping no calibration window).

Calibration as ``bench/allocation.py``'s table: 32 × 512 windows of wiki.valid.tokens (seed 0),
probe 2 × 192 tokens. Menu: RTN and GPTQ at INT3 and INT4 g64 (symmetric), so RTN, which fits
nothing, gives each layer's change of text alone and GPTQ's ratio beside it the in-sample part:
``bias = (GPTQ held-out / calibration) / (RTN held-out / calibration)`` per layer and bits
(above 1: GPTQ looks better on the windows it was fitted on than on other text of the same
source). Blocks probed: ``--blocks`` (default 0 7 15 22 29; the table is partial, every
linear of those blocks).

    .venv/bin/python bench/probe_heldout.py [--blocks 0 7 15 22 29] [--calib-windows 32]
        [--out probe_heldout.json]     # writes bench/results/OUT
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_result

from lowbit import api
from lowbit.algorithms import GPTQConfig, RTNConfig
from lowbit.evaluation.text import data_dir
from lowbit.formats import IntFormat, PerGroup
from lowbit.plan import LayerSpec

ALGORITHMS = {"rtn": RTNConfig(), "gptq": GPTQConfig()}
BITS = (3, 4)


def menu() -> tuple[LayerSpec, ...]:
    return tuple(
        LayerSpec(IntFormat(b), PerGroup(64), cfg) for cfg in ALGORITHMS.values() for b in BITS
    )


def tables(args: argparse.Namespace) -> dict[str, dict]:
    """{"calibration" | "held-out": {(layer, spec): KL}} and each table's seconds."""
    handle = api.load("smollm2-135m")
    rt = api.runtime(api.RuntimeConfig(dtype="float32"))
    text = str(data_dir() / "wikitext-2" / "wiki.valid.tokens")
    calib = api.TextConfig(text, 512, args.calib_windows, 0, "auto")
    out: dict[str, dict] = {}
    for name, held in (("calibration", False), ("held-out", True)):
        probe = api.ProbeConfig(
            probe_windows=2, probe_ctx=192, fisher=False, blocks=tuple(args.blocks), held_out=held
        )
        windows = api.text_windows(handle, calib, calibration=True, held_out=probe.held_out_windows)
        t0 = time.perf_counter()
        table = api.sensitivity(handle, menu(), windows, probe, rt=rt)
        out[name] = {
            "kl": {(e.layer, e.spec): e.kl for e in table.entries.values()},
            "seconds": time.perf_counter() - t0,
            "windows": windows.info,
        }
        print(name, f"{out[name]['seconds']:.0f} s", flush=True)
    return out


def summarise(kl: dict[str, dict]) -> dict:
    """Per layer and bits the ratios; their medians (and ranges) per algorithm and bits."""
    cal, held = kl["calibration"]["kl"], kl["held-out"]["kl"]
    labels = [f"{a} INT{b} g64" for a in ALGORITHMS for b in BITS]
    layers = sorted({layer for layer, _ in cal})
    rows = []
    for layer in layers:
        ratio = {labels[s]: held[(layer, s)] / cal[(layer, s)] for s in range(len(labels))}
        row: dict = {"layer": layer, "ratio": ratio}
        for b in BITS:
            row[f"bias INT{b}"] = ratio[f"gptq INT{b} g64"] / ratio[f"rtn INT{b} g64"]
        rows.append(row)
    summary = {}
    for key in [*labels, *(f"bias INT{b}" for b in BITS)]:
        values = [r["ratio"][key] if key in r["ratio"] else r[key] for r in rows]
        summary[key] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "above_1": sum(v > 1 for v in values),
            "n": len(values),
        }
    return {"rows": rows, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, nargs="+", default=[0, 7, 15, 22, 29])
    parser.add_argument("--calib-windows", type=int, default=32)
    parser.add_argument("--out", default="probe_heldout.json")
    args = parser.parse_args()
    kl = tables(args)
    result = summarise(kl)
    for key, s in result["summary"].items():
        print(f"{key}: median {s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}], "
              f"{s['above_1']}/{s['n']} above 1")  # fmt: skip
    record = {
        "protocol": f"built-in model, calibration {args.calib_windows} x 512 wiki.valid.tokens "
        f"seed 0, probe 2 x 192, blocks {args.blocks}; menu RTN/GPTQ INT3/INT4 g64",
        "seconds": {k: v["seconds"] for k, v in kl.items()},
        "held_out_windows": kl["held-out"]["windows"]["held_out"],
        **result,
    }
    write_result(RESULTS / args.out, record)


if __name__ == "__main__":
    main()
