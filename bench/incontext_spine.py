"""In-context allocation with GPTQ on the spine's protocol (issue 16's numbers to reach):
calibration 128 × 512 windows of wiki.valid.tokens (seed 0), evaluation WikiText-2 raw test
40 × 512, GPTQ (sym, fp16 scales, the extreme grid) as the quantizer.

Steps (outputs under bench/results/incontext/spine/, the result file
bench/results/incontext/spine-gptq.json, rewritten after every step so a stopped run keeps
what it measured):
(1) the proxies-only GPTQ table of the menu (``--menu g64``: INT2/3/4 g64; ``groups``: also
    INT3 g128 and INT4 g128, the uniform baselines' formats) (`lowbit sensitivity --proxies-only`,
    which records the calibration windows' hash the in-context probe checks);
(2) in this process, through lowbit's own workflow functions (as `lowbit plan --sensitivity
    in-context` runs them, but with one probe session, so the GPTQ weights of every unit × spec
    are computed once for all budgets): the in-context iterated exact plan at each budget from
    the ``--start`` plan (default ``additive``: the exact plan on the table's Fisher proxy),
    with its rounds, measured KL on the probe tokens and cost; the additive plan itself (the
    same exact solver on the Fisher proxy, single-layer) beside it;
(3) each plan quantized by `lowbit quantize --plan` (GPTQ, true-sequential, the same
    calibration windows) and evaluated by `lowbit eval` (KL against the fp32 model, 40 × 512),
    with uniform GPTQ W4 g128 (the 4.0-bit target's baseline) and W3 g64 (the 3.25-bit one).

Usage: .venv/bin/python bench/incontext_spine.py [--budgets 4.0 3.25] [--probe-windows 4]
       [--probe-ctx 128] [--start additive] [--steps 1,2,3] [--only NAME ...] [--smoke]
       [--menu g64|groups] (groups: written to spine-groups/ and spine-gptq-groups.json)
       [--probe-held-out] (the probe's windows outside the calibration's; result *-heldout.json)
       [--select-windows K] (choose the plan on K windows after the probe's; *-selectK.json)
       (a probe other than 4 x 128 tokens: *-probeNxC.json, plans named '... probeNxC B')
       .venv/bin/python bench/incontext_spine.py --markdown bench/results/incontext/spine-gptq.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from common import RESULTS, ROOT, write_result

from allocation import run as run_command

OUT = RESULTS / "incontext" / "spine"
RESULT = RESULTS / "incontext" / "spine-gptq.json"
WINDOWS = {"calib": 128, "eval": 40}  # --smoke: 4 and 2 (a check of the script, not figures)
LOWBIT = [sys.executable, "-m", "lowbit.cli.main"]
UNIFORM = {"uniform GPTQ W4 g128": ("4", "128"), "uniform GPTQ W3 g64": ("3", "64")}
# --menu: the specs of the table (bits, group); "g64" the first run's, "groups" adds group 128
# at 3 and 4 bits, the uniform baselines' own formats
MENUS = {
    "g64": ((2, 64), (3, 64), (4, 64)),
    "groups": ((2, 64), (3, 64), (3, 128), (4, 64), (4, 128)),
}


def texts() -> tuple[str, str]:
    from lowbit.evaluation.text import data_dir

    data = data_dir()
    return (str(data / "wikitext-2" / "wiki.valid.tokens"),
            str(data / "wikitext-2-raw" / "wiki.test.raw"))  # fmt: skip


def calib_options(valid: str) -> list[str]:
    n = str(WINDOWS["calib"])
    return ["--calib-text", valid, "--calib-windows", n, "--ctx", "512", "--seed", "0"]


def table_step(valid: str, table: Path, menu: str) -> dict:
    specs = [{"format": {"type": "int", "bits": b, "symmetric": True},
              "granularity": {"type": "group", "size": g}, "algorithm": {"name": "gptq"}}
             for b, g in MENUS[menu]]  # fmt: skip
    menu_file = OUT / f"menu-{menu}.json"
    menu_file.write_text(json.dumps(specs))
    cmd = [*LOWBIT, "sensitivity", "smollm2-135m", *calib_options(valid), "--menu",
           str(menu_file), "--proxies-only", "--probe-ctx", "64", "-o", str(table),
           "--overwrite"]  # fmt: skip
    return {"command": "lowbit " + " ".join(cmd[3:]), **run_command(cmd)}


def plans_step(valid: str, table: Path, args: argparse.Namespace) -> dict:
    """The in-context and additive plans at each budget, written to OUT/plan-*.yaml."""
    from lowbit import api
    from lowbit.sensitivity.incontext import ContextConfig
    from lowbit.workflows.allocation import target_constraints
    from lowbit.workflows.incontext import SINGLE_LAYER, InContext, Inputs, allocate_with
    from lowbit.workflows.spine import DEFAULT_EXECUTION, text_windows

    handle = api.load("smollm2-135m")
    tab = api.load_table(table, handle)
    limits = target_constraints(tab, "any", handle)
    probe = ContextConfig(args.probe_windows, args.probe_ctx, held_out=args.probe_held_out)
    cfg = InContext(args.rounds, args.boundary, probe, args.start, args.select_windows)
    calib = api.TextConfig(valid, 512, WINDOWS["calib"], 0, "auto")
    windows = text_windows(handle, calib, calibration=True, held_out=cfg.held_out_windows)
    label = "in-context held-out" if args.probe_held_out else "in-context"
    label += f" select{args.select_windows}" if args.select_windows else ""
    label += f" {probe_size(args)}" if probe_size(args) else ""
    inputs = Inputs(handle, windows, api.runtime(DEFAULT_EXECUTION.runtime))
    options = {"metric": "fisher", "fuse": True, "constraints": limits}
    out: dict = {}
    for b in args.budgets:
        for name, source in ((f"{label} {b:g}", cfg), (f"additive {b:g}", SINGLE_LAYER)):
            t0 = time.perf_counter()
            done = allocate_with(source, tab, api.AvgBits(b), "exact", options, inputs)
            path = OUT / f"plan-{name.replace(' ', '-')}.yaml"
            path.write_text(done.plan.dumps("yaml"))
            n = sum(x.numel for x in tab.layers)
            out[name] = {"plan": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
                         "bits_per_weight_linear": done.allocation.bits / n,
                         "predicted_loss": done.allocation.loss, "wall_s": time.perf_counter() - t0,
                         "record": done.record}  # fmt: skip
            print(name, json.dumps({k: v for k, v in out[name].items() if k != "record"}),
                  flush=True)  # fmt: skip
    return out


def measure(name: str, quantize: list[str], valid: str, test: str) -> dict:
    """Quantize (GPTQ on the spine's calibration) and evaluate (40 × 512) one model."""
    d = OUT / name.replace(" ", "-")
    q = [*LOWBIT, "quantize", "smollm2-135m", *quantize, *calib_options(valid), "-o", str(d),
         "--overwrite"]  # fmt: skip
    entry = {"quantize": {"command": "lowbit " + " ".join(q[3:]), **run_command(q)}}
    result = OUT / f"{name.replace(' ', '-')}.eval.json"
    e = [*LOWBIT, "eval", str(d), "--eval-text", test, "--windows", str(WINDOWS["eval"]),
         "--ctx", "512", "-o", str(result), "--overwrite"]  # fmt: skip
    entry["eval"] = {"command": "lowbit " + " ".join(e[3:]), **run_command(e)}
    res = json.loads(result.read_text())["results"]["model"]
    entry |= {k: res[k] for k in ("perplexity", "kl", "top1_agreement", "bits_per_weight")
              if k in res}  # fmt: skip
    return entry


def probe_size(args: argparse.Namespace) -> str:
    """The probe's size in result and plan names ("probe8x128"), or "" for the 4 x 128 tokens
    every committed result before stop 35 used (their names carry no size)."""
    return "" if (args.probe_windows, args.probe_ctx) == (4, 128) else (
        f"probe{args.probe_windows}x{args.probe_ctx}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", default="1,2,3")
    parser.add_argument("--budgets", type=float, nargs="+", default=[4.0, 3.25])
    parser.add_argument("--probe-windows", type=int, default=4)
    parser.add_argument("--probe-ctx", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--boundary", type=int, default=16)
    parser.add_argument("--start", default="additive")
    parser.add_argument("--only", nargs="+", help="step 3: these models only")
    parser.add_argument("--smoke", action="store_true", help="4 + 2 windows, under /tmp")
    parser.add_argument("--menu", choices=list(MENUS), default="g64")
    parser.add_argument("--select-windows", type=int, default=0,
                        help="choose among the start and the rounds on these windows after "
                        "the probe's (plans named '... selectK B')")  # fmt: skip
    parser.add_argument("--probe-held-out", action="store_true",
                        help="probe windows outside the calibration windows; written to "
                        "*-heldout.json, plans named 'in-context held-out B'")  # fmt: skip
    parser.add_argument("--markdown", type=Path, help="print the tables of a result file, only")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(args.markdown))
        return
    global OUT, RESULT
    if args.menu != "g64":  # the first run's files keep their names
        OUT, RESULT = (
            OUT.with_name(f"spine-{args.menu}"),
            RESULT.with_stem(f"spine-gptq-{args.menu}"),
        )
    if args.probe_held_out:  # the table stays the menu's (in OUT)
        RESULT = RESULT.with_stem(f"{RESULT.stem}-heldout")
    if args.select_windows:
        RESULT = RESULT.with_stem(f"{RESULT.stem}-select{args.select_windows}")
    if probe_size(args):
        RESULT = RESULT.with_stem(f"{RESULT.stem}-{probe_size(args)}")
    if args.smoke:
        OUT, RESULT = Path("/tmp/incontext_spine_smoke"), Path("/tmp/incontext_spine_smoke.json")
        WINDOWS.update(calib=4, eval=2)
    steps = {int(s) for s in args.steps.split(",")}
    valid, test = texts()
    OUT.mkdir(parents=True, exist_ok=True)
    table = OUT / ("sens-gptq-234-spine.json" if args.menu == "g64" else f"sens-{args.menu}.json")
    record: dict = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    record.pop("provenance", None)
    record["protocol"] = (
        f"GPTQ, calibration {WINDOWS['calib']} x 512 wiki.valid.tokens seed 0, eval WikiText-2 "
        f"raw test {WINDOWS['eval']} x 512; menu (bits, group) {MENUS[args.menu]}"
    )
    if 1 in steps:
        record["table"] = table_step(valid, table, args.menu)
        write_result(RESULT, record)
    if 2 in steps:
        record["plans"] = plans_step(valid, table, args)
        record["allocation"] = (
            f"in context from the {args.start!r} start (metric of additive plans: the Fisher "
            f"proxy), probe {args.probe_windows} x {args.probe_ctx} "
            f"({'held-out' if args.probe_held_out else 'calibration'} windows), "
            f"rounds {args.rounds}, boundary {args.boundary}, selection windows "
            f"{args.select_windows}; wall_s of the first plan includes "
            "building the probe session (GPTQ weights of every unit x spec), later plans reuse "
            "it: compare cost"
        )
        write_result(RESULT, record)
    if 3 in steps:
        models = {n: ["--bits", b, "--group-size", g, "--algorithm", "gptq"]
                  for n, (b, g) in UNIFORM.items()}  # fmt: skip
        for name, p in record.get("plans", {}).items():
            models[name] = ["--plan", str(ROOT / p["plan"])]
        record.setdefault("models", {})
        for name in sorted(models, key=_order):
            if args.only and name not in args.only:
                continue
            record["models"][name] = measure(name, models[name], valid, test)
            write_result(RESULT, record)
            print(name, json.dumps(record["models"][name]), flush=True)
    write_result(RESULT, record)


def markdown(path: Path) -> str:
    """BENCHMARKS.md's tables from the result file ``path``."""
    record = json.loads(path.read_text())
    plans, models = record.get("plans", {}), record.get("models", {})
    bits = {"uniform GPTQ W4 g128": 4.125, "uniform GPTQ W3 g64": 3.25}
    bits |= {n: p["bits_per_weight_linear"] for n, p in plans.items()}
    base = {4.0: "uniform GPTQ W4 g128", 3.25: "uniform GPTQ W3 g64"}
    out = ["| model | bits/w (linear) | perplexity | KL mean | top-1 | KL / uniform baseline |",
           "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name in sorted(models, key=_order):
        m = models[name]
        budget = next((b for b in base if name.endswith(f" {b:g}")), None)
        ref = models.get(base.get(budget, ""), {}).get("kl", {}).get("mean")
        ratio = f"{m['kl']['mean'] / ref:.3f}×" if ref and budget else "–"
        kl, top1 = m["kl"]["mean"], 100 * m["top1_agreement"]
        out.append(f"| {name} | {bits[name]:.3f} | {m['perplexity']:.2f} | {kl:.4f} | "
                   f"{top1:.2f}% | {ratio} |")  # fmt: skip
    out += ["", "| in-context plan | start plan's probe KL | rounds' probe KL (predicted → "
            "measured) | best | decoder passes | measure s | wall s |",
            "|---|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    for name, p in plans.items():
        r = p["record"]
        if "rounds" not in r:
            continue
        rounds = "; ".join(f"{x['predicted_kl']:.4f} → {x['measured_kl']:.4f}" for x in r["rounds"])
        out.append(f"| {name} | {r['start_plan_kl']:.4f} | {rounds} | {r['best_round']} | "
                   f"{r['cost']['decoder_passes']:.1f} | {r['cost']['measure_s']:.0f} | "
                   f"{p['wall_s']:.0f} |")  # fmt: skip
    selected = {n: p["record"]["selection"] for n, p in plans.items() if "selection" in p["record"]}
    if selected:
        out += ["", "| in-context plan | selection windows × tokens | KL there by round (0: the "
                "start) | chosen | test KL | ln(test / selection KL) |",
                "|---|---:|---|---:|---:|---:|"]  # fmt: skip
    for name, s in selected.items():
        by_round = {int(k): v for k, v in s["kl_by_round"].items()}
        best = plans[name]["record"]["best_round"]
        test = models.get(name, {}).get("kl", {}).get("mean")
        known = test is not None
        err = f"{math.log(test / by_round[best]):.3f}" if known else "–"
        out.append(f"| {name} | {s['windows']} × {s['tokens'] // s['windows']} | "
                   + "; ".join(f"{k}: {v:.4f}" for k, v in sorted(by_round.items()))
                   + f" | {best} | {f'{test:.4f}' if known else '–'} | {err} |")  # fmt: skip
    return "\n".join(out)


def _order(name: str) -> tuple[int, str]:
    """The headline first: in-context 4, its baseline, in-context 3.25, then the rest."""
    first = ["in-context 4", "in-context held-out 4", "uniform GPTQ W4 g128", "in-context 3.25",
             "in-context held-out 3.25", "uniform GPTQ W3 g64"]  # fmt: skip
    if name not in first and name.startswith("in-context"):  # "... select8 probe8x128 3.25"
        budget = name.rsplit(" ", 1)[1]
        return (first.index(f"in-context held-out {budget}") if budget in ("4", "3.25")
                else len(first), name)  # fmt: skip
    return (first.index(name) if name in first else len(first), name)


if __name__ == "__main__":
    main()
