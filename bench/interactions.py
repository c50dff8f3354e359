"""How far from additive the losses of quantized units are on the built-in model, and whether
measured pair terms improve the exact solver's prediction (issue 16, part 2).

Protocol (reduced, to fit two loaded CPU cores): units are the fused q/k/v, o_proj, the fused
gate/up and down_proj of two decoder blocks (8 units); the menu is RTN W3 g64 and RTN W8 g64
(symmetric); every other layer keeps its full precision. KL divergence to the unquantized model
on WikiText-2 raw test windows (default 4 × 128 tokens), mean per token. Measured: each unit
alone at W3 and at W8, every pair of units together at W3 (within a block and across blocks);
then plans over the 8 units (random W3/W8 mixes, and the exact solver's plans at several
budgets with and without the W3 pair terms; W8 pair terms are taken as zero, unmeasured), each
measured, and the prediction error |ln(realised / predicted)| of the additive and the pairwise
prediction.

Usage: .venv/bin/python bench/interactions.py [--blocks 5,20] [--windows 4] [--ctx 128]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from common import RESULTS, write_result

MODULES = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", default="5,20")
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--ctx", type=int, default=128)
    parser.add_argument("--random-plans", type=int, default=6)
    parser.add_argument("--budgets", default="4.5,5.5,6.5,7.5")
    args = parser.parse_args()

    from lowbit import api
    from lowbit.algorithms import RTNConfig
    from lowbit.allocation import AvgBits, build_problem, solve_exact
    from lowbit.allocation.interactions import log_error, pair_terms
    from lowbit.evaluation.text import data_dir
    from lowbit.formats import IntFormat, PerGroup
    from lowbit.plan import LayerSpec
    from lowbit.sensitivity.table import Entry, LayerInfo, SensitivityTable
    from lowbit.workflows.interactions import Measurer, measure_pairs, nonadditivity, show

    t0 = time.perf_counter()
    blocks = [int(b) for b in args.blocks.split(",")]
    units = [tuple(f"model.layers.{b}.{m}" for m in group) for b in blocks for group in MODULES]
    menu = tuple(LayerSpec(IntFormat(b), PerGroup(64), RTNConfig()) for b in (3, 8))
    handle = api.load("smollm2-135m")
    text = str(data_dir() / "wikitext-2-raw" / "wiki.test.raw")
    windows = api.text_windows(
        handle, api.TextConfig(text, args.ctx, args.windows), calibration=False
    )
    rt = api.runtime()
    m = Measurer(handle, windows.ids, rt, units, menu)
    singles, pairs = measure_pairs(m, units, index=0)
    rows, summary = nonadditivity(singles, pairs)
    show(summary)
    for u in units:
        singles[(u[0], 1)] = m.kl({u: 1})

    # the study units as a sensitivity table, to solve with and without pair terms
    shape = {n: tuple(m.original[n].shape) for u in units for n in u}
    infos, entries = [], {}
    for u in units:
        out_f = sum(shape[n][0] for n in u)
        info = LayerInfo(
            u[0], int(u[0].split(".")[2]), u[0].split(".", 3)[3], out_f, shape[u[0]][1]
        )
        infos.append(info)
        for s, spec in enumerate(menu):
            bits = sum(
                round(spec.bits_per_weight(*shape[n]) * shape[n][0] * shape[n][1]) for n in u
            )
            entries[(u[0], s)] = Entry(u[0], s, bits, singles[(u[0], s)], 0.0, None)
    table = SensitivityTable(
        {"source": handle.source, "fingerprint": handle.fingerprint}, menu, tuple(infos), entries
    )
    terms = pair_terms(singles, pairs)
    additive = build_problem(table, "kl", fuse=False)
    paired = build_problem(table, "kl", fuse=False, pairs=terms)

    plans: dict[tuple, dict] = {}

    def record(choice: dict[str, int], how: str) -> dict:
        key = tuple(choice[u[0]] for u in units)
        if key not in plans:
            realised = m.kl({u: choice[u[0]] for u in units})
            plans[key] = {
                "choice": list(key),
                "how": [],
                "bits_per_weight": sum(additive.bits[(n, s)] for n, s in choice.items())
                / additive.n_weights,
                "realised_kl": realised,
                "predicted_additive": additive.predicted(choice),
                "predicted_pairwise": paired.predicted(choice),
            }
        plans[key]["how"].append(how)
        return plans[key]

    rng = random.Random(0)
    for k in range(args.random_plans):
        record({u[0]: rng.choice((0, 1)) for u in units}, f"random {k}")
    record({u[0]: 0 for u in units}, "uniform W3")
    budgets = []
    for b in (float(x) for x in args.budgets.split(",")):
        a = record(solve_exact(additive, AvgBits(b)).choice, f"exact additive {b:g}")
        p = record(solve_exact(paired, AvgBits(b)).choice, f"exact pairwise {b:g}")
        budgets.append(
            {
                "budget": b,
                "additive_plan_kl": a["realised_kl"],
                "pairwise_plan_kl": p["realised_kl"],
            }
        )
    quantized = [p for p in plans.values() if any(c == 0 for c in p["choice"])]
    err_add = [log_error(p["realised_kl"], p["predicted_additive"]) for p in quantized]
    err_pair = [log_error(p["realised_kl"], p["predicted_pairwise"]) for p in quantized]
    result = {
        "protocol": {
            "model": "smollm2-135m",
            "units": [list(u) for u in units],
            "menu": [s.describe() for s in menu],
            "text": "wikitext-2-raw/wiki.test.raw",
            "windows": args.windows,
            "ctx": args.ctx,
            "kl": "mean per token, float32, against the unquantized model on the same windows",
            "w8_pair_terms": "taken as zero (not measured)",
        },
        "nonadditivity": summary,
        "pairs": [
            {
                "a": r.a,
                "b": r.b,
                "kind": r.kind,
                "single_a": r.single_a,
                "single_b": r.single_b,
                "together": r.together,
                "ratio": r.ratio,
            }
            for r in rows
        ],
        "singles": {f"{n}@{menu[s].describe()}": v for (n, s), v in singles.items()},
        "plans": list(plans.values()),
        "budgets": budgets,
        "prediction": {
            "plans": len(quantized),
            "median_abs_log_error_additive": statistics.median(err_add),
            "median_abs_log_error_pairwise": statistics.median(err_pair),
        },
        "forward_passes": m.passes,
        "wall_s": time.perf_counter() - t0,
    }
    print(result["prediction"], budgets)
    write_result(RESULTS / "interactions.json", result)


if __name__ == "__main__":
    main()
