"""The in-context allocation on the built-in model without `lowbit pareto`'s quantize-and-
evaluate of every point (too slow on the shared, overloaded 2-core machine): every plan is a
weight swap of the same cached RTN weights and is scored by the in-context probe's own KL
machinery (the whole model, one block at a time, against the original's cached
log-probabilities), on

* the probe tokens the in-context allocation measured on (in-sample: the first
  ``--probe-windows`` calibration windows (of 2) of wiki.valid.tokens, each cut to
  ``--probe-ctx`` tokens (at most 128)), and
* held-out windows of WikiText-2 raw test (``--eval-windows`` × 128 tokens).

Plans at 3.25 and 4.0 bits per weight: uniform RTN W3 g64 / W4 g64 (menu INT2/3/4 g64), the
additive exact plan (the table's Fisher proxy), the llama.cpp-style plan, the ExLlamaV3-style
greedy on the in-context measurements in the cheapest plan (left out with `--no-greedy`), the
first in-context exact plan and the iterated one (the best measured of the start plan and its
rounds), measured from the `--start` plan (lowbit's rules: `uniform`, the costliest uniform
plan within the budget, `additive`, the exact plan on the table's Fisher proxy (the additive
row), or `cheapest`). Needs the table of step 1 of bench/incontext.py
(`--steps 1`). Writes bench/results/incontext/quick.json (`--start cheapest`, the first run's
protocol) or quick-START.json (``-probeWxC`` added at another probe than 1 x 32).

Usage: .venv/bin/python bench/incontext_quick.py [--probe-ctx 32] [--eval-windows 4]
       [--start uniform] [--no-greedy] [--probe-windows 1] [--calib-windows 2]

``--calib-windows N`` (other than 2): the proxies-only table of N × 128 calibration windows is
measured first (``sens-rtn-234-calibN.json``, the same command as bench/incontext.py's step 1)
and the result file is named ``…-calibN.json``. ``--select-windows K``: the iterated plan is
chosen among the start plan and the rounds by the KL on the K calibration windows after the
probe's (cut to ``--probe-ctx``), as ``lowbit plan --select-windows`` does (``…-selectK.json``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from common import RESULTS, write_result
from incontext import table_command

OUT = RESULTS / "incontext"


def ensure_table(valid: str, windows: int) -> Path:
    """The proxies-only RTN table of the calibration windows (bench/incontext.py's step 1 for
    the 2 windows it uses; measured here, with the same command, for any other count)."""
    if windows == 2:
        return OUT / "sens-rtn-234.json"
    path = OUT / f"sens-rtn-234-calib{windows}.json"
    if not path.exists():
        subprocess.run(table_command(valid, windows, path), check=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--probe-ctx", type=int, default=32)
    parser.add_argument("--probe-windows", type=int, default=1)
    parser.add_argument("--eval-windows", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--boundary", type=int, default=12)
    parser.add_argument("--start", default="cheapest")
    parser.add_argument("--no-greedy", action="store_true")
    parser.add_argument("--calib-windows", type=int, default=2)
    parser.add_argument("--select-windows", type=int, default=0)
    args = parser.parse_args()
    from lowbit import api
    from lowbit.allocation import AvgBits, build_problem
    from lowbit.allocation.greedy import cheapest, greedy
    from lowbit.allocation.heuristic import uniform
    from lowbit.allocation.iterate import IterateConfig, curves_problem, iterate, unit_choice
    from lowbit.evaluation.text import data_dir
    from lowbit.sensitivity.incontext import ContextConfig, ContextProbe
    from lowbit.workflows.incontext import check_calibration

    t0 = time.perf_counter()
    data = data_dir()
    handle = api.load("smollm2-135m")
    valid = str(data / "wikitext-2" / "wiki.valid.tokens")
    table = api.load_table(ensure_table(valid, args.calib_windows), handle)
    calib = api.text_windows(
        handle, api.TextConfig(valid, 128, args.calib_windows, 0, "auto"), calibration=True
    )
    check_calibration(table, calib)
    held = api.text_windows(
        handle,
        api.TextConfig(str(data / "wikitext-2-raw" / "wiki.test.raw"), 128, args.eval_windows,
                       bos="auto"),
        calibration=False,
    )  # fmt: skip
    rt = api.runtime()
    problem = build_problem(table, "fisher")
    probe = ContextProbe(
        handle, tuple(table.menu), table.layers, [u.layers for u in problem.units], calib.ids,
        ContextConfig(args.probe_windows, args.probe_ctx), rt, calib.bos,
    )  # fmt: skip
    scorer = probe.on_windows(held.ids, held.bos)
    selector = None
    if args.select_windows:
        first, n = args.probe_windows, args.select_windows
        assert first + n <= args.calib_windows, "the selection windows follow the probe's"
        # lowbit refuses it too: the additive start is fitted on the table's (all) windows
        assert args.start != "additive", "no calibration window is held out from the table"
        selector = probe.on_windows(calib.ids[first : first + n, : args.probe_ctx], calib.bos)
    round0: dict = {}
    if not args.no_greedy:  # the ExLlamaV3-style greedy measures in the cheapest plan
        start = tuple(cheapest(problem))
        curves = probe.curves(start, list(range(len(problem.units))))
        round0 = {"stats": probe.stats(), "cheapest_plan_kl": probe.kl(start)}
        print("round 0:", json.dumps(round0), flush=True)
    rows = []

    def score(name: str, budget: float, alloc, extra: dict | None = None) -> None:
        choice = unit_choice(problem, alloc)
        row = {
            "name": name,
            "budget": budget,
            "bits_per_weight_linear": alloc.bits / problem.n_weights,
            "kl_probe_in_sample": probe.kl(choice),
            "kl_held_out": scorer.kl(choice),
            **(extra or {}),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    score("uniform RTN W3 g64", 3.25, uniform(problem, 1))
    score("uniform RTN W4 g64", 4.25, uniform(problem, 2))
    in_context = (
        None if args.no_greedy else curves_problem(problem, curves, round0["cheapest_plan_kl"])
    )
    for b in (3.25, 4.0):
        budget = AvgBits(b)
        score(f"exact additive (Fisher) {b:g}", b, api.allocate(table, budget, metric="fisher")[0])
        llama = api.allocate(table, budget, method="llamacpp", metric="fisher")[0]
        score(f"llama.cpp-style {b:g}", b, llama)
        if in_context is not None:
            score(f"greedy in-context {b:g}", b, greedy(in_context, budget))
        t1 = time.perf_counter()
        cfg = IterateConfig(args.rounds, args.boundary, args.start)
        result = iterate(problem, budget, probe, cfg, selector=selector)
        rounds = [
            {"round": r.index, "predicted_kl": r.predicted_kl, "measured_kl": r.measured_kl,
             "units_measured_before": r.remeasured, "decoder_passes": r.stats["decoder_passes"]}
            for r in result.rounds
        ]  # fmt: skip
        extra = {
            "rounds": rounds, "stopped": result.stopped, "start": result.start,
            "start_plan_kl": result.base_kl, "best_round": int(result.best.info["round"]),
            "selection_kl_by_round": result.selection,
            "wall_s": time.perf_counter() - t1,
        }  # fmt: skip
        score(f"in-context first plan {b:g}", b, result.first)
        score(f"in-context iterated {b:g}", b, result.best, extra)
    record = {
        "protocol": (
            f"reduced, in-process: RTN INT2/3/4 g64; in-context from the {args.start!r} start, "
            f"probe {args.probe_windows} x {args.probe_ctx} tokens "
            f"of the first of {args.calib_windows} x 128 calibration windows; held-out "
            f"{args.eval_windows} x 128 WikiText-2 raw test; plans scored by weight swap "
            "(see docstring); iterated plan chosen by "
            + (
                f"the KL on the next {args.select_windows} calibration windows"
                if args.select_windows
                else "the probe's KL"
            )
        ),
        "round0": round0,
        "points": rows,
        "stats": probe.stats(),
        "wall_s": time.perf_counter() - t0,
    }
    name = "quick.json" if args.start == "cheapest" else f"quick-{args.start}.json"
    if args.calib_windows != 2:
        name = name.replace(".json", f"-calib{args.calib_windows}.json")
    if (args.probe_windows, args.probe_ctx) != (1, 32):
        name = name.replace(".json", f"-probe{args.probe_windows}x{args.probe_ctx}.json")
    if args.select_windows:
        name = name.replace(".json", f"-select{args.select_windows}.json")
    write_result(OUT / name, record)


if __name__ == "__main__":
    main()
