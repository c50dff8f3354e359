"""The catalogue of bad inputs (issue 18): each case is a command line a new user could type,
the inputs it needs (made by a setup function) and the fragments its error must contain (the
input it names, then the fix it suggests). ``tests/cli/test_bad_inputs.py`` runs every case
and checks the four promises: the message, a non-zero exit (2 for usage), no traceback and
nothing written.

Placeholders in arguments and fragments: ``{model}`` the tiny Llama, ``{other}`` a tiny Qwen3
(another model), ``{saved}`` a quantized copy of the tiny Llama, ``{table}`` a sensitivity
table of the tiny Llama, ``{ev}``/``{ca}`` an evaluation and a calibration text, ``{in}`` the
folder of the inputs made by the setups (``{in}/NAME``), and ``OUT`` the output path that must
not exist afterwards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tests.helpers.bad_input_setups import (
    RTN_W8,
    Setup,
    config,
    garble,
    model_copy,
    no_weights,
    plan,
    plan_doc,
    poison,
    truncate,
    with_format,
    write,
)

OUT = "out"
FAST = ("--calib-windows", "2", "--ctx", "32")
EVAL = ("--windows", "2", "--ctx", "32")


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    expect: tuple[str, ...]  # every fragment must be in the error message
    code: int = 2
    setup: Setup | None = None
    outputs: tuple[str, ...] = field(default=(OUT,))  # must not exist afterwards


Q = ("quantize", "{model}", "-o", OUT, "--algorithm", "rtn")
QP = ("quantize", "{model}", "-o", OUT, *FAST, "--plan")
E = ("eval", "{model}", "-o", OUT, *EVAL)
S = ("sensitivity", "{model}", "-o", OUT, "--calib-text", "{ca}", *FAST, "--menu")
P = ("plan", "{model}", "--table", "{table}", "-o", OUT)

CASES: tuple[Case, ...] = (
    # model sources
    Case("missing-model", ("quantize", "{in}/nope", "-o", OUT), ("{in}/nope", "not found")),
    Case(
        "empty-model-dir",
        ("quantize", "{in}/empty", "-o", OUT),
        ("{in}/empty", "config.json"),
        setup=lambda i, m: (i / "empty").mkdir(),
    ),
    Case(
        "truncated-weights",
        ("eval", "{in}/trunc", "-o", OUT, *EVAL),
        ("model.safetensors", "truncated"),
        setup=model_copy("trunc", truncate),
    ),
    Case(
        "corrupted-weights",
        ("quantize", "{in}/garbled", "-o", OUT, "--algorithm", "rtn"),
        ("model.safetensors", "safetensors"),
        setup=model_copy("garbled", garble),
    ),
    Case(
        "no-weight-files",
        ("quantize", "{in}/noweights", "-o", OUT, "--algorithm", "rtn"),
        ("{in}/noweights", "safetensors"),
        setup=model_copy("noweights", no_weights),
    ),
    Case(
        "invalid-config-json",
        ("quantize", "{in}/badcfg", "-o", OUT, "--algorithm", "rtn"),
        ("config.json", "JSON"),
        setup=model_copy("badcfg", config(lambda c: "{not json")),
    ),
    Case(
        "unsupported-architecture",
        ("quantize", "{in}/alien", "-o", OUT, "--algorithm", "rtn"),
        ("alien_lm", "lowbit ls architectures"),
        setup=model_copy("alien", config(lambda c: {**c, "model_type": "alien_lm"})),
    ),
    Case(
        "inspect-bad-config",
        ("inspect", "{in}/cfg.json"),
        ("{in}/cfg.json", "config.json"),
        setup=write("cfg.json", "[1, 2"),
        outputs=(),
    ),
    Case(
        "perf-bad-config",
        ("perf", "{in}/cfg.json", "-o", OUT),
        ("{in}/cfg.json", "JSON"),
        setup=write("cfg.json", "{oops"),
    ),
    # numbers out of range
    Case("bits-too-many", (*Q, "--bits", "9"), ("9", "from 2 to 8")),
    Case("bits-too-few", (*Q, "--bits", "1"), ("1", "from 2 to 8")),
    Case("group-size-zero", (*Q, "--group-size", "0"), ("group size", "0")),
    Case("group-size-negative", (*Q, "--group-size", "-4"), ("group size", "-4")),
    Case("ctx-too-long", (*E[:-2], "--ctx", "4096"), ("4096", "--ctx 256")),
    Case("ctx-too-short", (*E[:-2], "--ctx", "1"), ("ctx", "at least 2")),
    Case("windows-zero", ("eval", "{model}", "-o", OUT, "--windows", "0"), ("windows", "positive")),
    Case(
        "calib-windows-zero",
        ("quantize", "{model}", "-o", OUT, "--calib-windows", "0"),
        ("windows", "positive"),
    ),
    Case("damp-negative", ("quantize", "{model}", "-o", OUT, "--damp", "-1"), ("damp", "-1")),
    # options the run would ignore (found as a new user: they used to be accepted silently)
    Case(
        "rtn-with-calibration-options",
        (*Q, "--calib-windows", "4", "--seed", "1"),
        ("--calib-windows, --seed", "needs no calibration", "--algorithm gptq"),
    ),
    Case(
        "rtn-with-gptq-options",
        (*Q, "--damp", "0.1", "--act-order", "off"),
        ("--act-order, --damp", "--algorithm rtn would ignore", "use --algorithm gptq"),
    ),
    Case(
        "fixed-width-format-with-bits",
        (*Q, "--format", "nf4", "--bits", "3"),
        ("--bits", "--format nf4 has its own code width", "--format int or lut"),
    ),
    Case(
        "channel-scales-with-group-size",
        (*Q, "--granularity", "channel", "--group-size", "32"),
        ("--group-size", "--granularity channel has no groups", "--granularity group"),
    ),
    Case(
        "int-choice-with-another-format",
        (*Q, "--format", "nf4", "--asymmetric"),
        ("--symmetric/--asymmetric", "only --format int", "use --format int"),
    ),
    Case(
        "rtn-plan-with-calibration-options",
        (*QP, "{in}/p.json"),
        ("--calib-windows, --ctx", "needs no calibration", "give the plan's specs an algorithm"),
        setup=plan("p.json", plan_doc()),
    ),
    Case(
        "plan-with-spec-options",
        ("quantize", "{model}", "-o", OUT, "--plan", "{in}/p.json", "--bits", "3"),
        ("--bits with --plan {in}/p.json", "write them into the plan"),
        setup=plan("p.json", {"lowbit_plan_version": 1, "default": RTN_W8}),
    ),
    Case(
        "tp-does-not-divide",
        ("perf", "{model}", "--tp", "3", "-o", OUT),
        ("3", "does not divide the 4 attention heads"),
    ),
    Case(
        "pp-more-than-layers",
        ("perf", "{model}", "--pp", "5", "-o", OUT),
        ("5", "2 layers"),
    ),
    # texts
    Case(
        "empty-text",
        (*E, "--eval-text", "{in}/empty.txt"),
        ("{in}/empty.txt", "empty"),
        setup=write("empty.txt", ""),
    ),
    Case(
        "tiny-text",
        (*E, "--eval-text", "{in}/tiny.txt"),
        ("{in}/tiny.txt", "shorter than one window"),
        setup=write("tiny.txt", "too short"),
    ),
    Case(
        "binary-text",
        (*E, "--eval-text", "{in}/blob.bin"),
        ("{in}/blob.bin", "binary"),
        setup=write("blob.bin", bytes(range(256)) * 64),
    ),
    Case(
        "non-utf8-text",
        (*E, "--eval-text", "{in}/latin1.txt"),
        ("{in}/latin1.txt", "not UTF-8"),
        setup=write("latin1.txt", "café ".encode("latin-1") * 2000),
    ),
    Case(
        "missing-text",
        (*E, "--eval-text", "{in}/gone.txt"),
        ("{in}/gone.txt", "neither an existing file"),
    ),
    Case(
        "calibrate-on-eval-text",
        ("run", "{model}", "--eval-text", "{ev}", "--calib-text", "{ev}", *EVAL, "-o", OUT),
        ("is the evaluation text", "calibrate on another text"),
    ),
    # outputs
    Case(
        "existing-output-dir",
        (*Q[:2], "-o", "{in}/done", *Q[4:]),
        ("{in}/done", "--overwrite"),
        setup=lambda i, m: (i / "done").mkdir(),
    ),
    Case(
        "existing-result-file",
        (*E[:2], "-o", "{in}/e.json", *EVAL),
        ("{in}/e.json", "--overwrite"),
        setup=write("e.json", "{}"),
    ),
    Case(
        "output-under-a-file",
        (*Q[:2], "-o", "{in}/afile/q", *Q[4:]),
        ("{in}/afile", "not a directory"),
        setup=write("afile", "x"),
    ),
    Case(
        "unwritable-output",
        (*E[:2], "-o", "/proc/lowbit-e.json", *EVAL),
        ("/proc", "not writable"),
    ),
    Case(
        "unwritable-quantize-output",
        (*Q[:2], "-o", "/proc/lowbit-q", *Q[4:]),
        ("/proc", "not writable"),
    ),
    Case(
        "unwritable-plan-output",
        (*P[:4], "-o", "/proc/plan.yaml", "--avg-bits", "4"),
        ("/proc", "not writable"),
    ),
    # plan files
    Case(
        "plan-unknown-key",
        (*QP, "{in}/p.json"),
        ("{in}/p.json", "line 17", "defualt", "did you mean 'default'"),
        setup=plan("p.json", plan_doc(defualt=None)),
    ),
    Case(
        "plan-unknown-format-field",
        (*QP, "{in}/p.json"),
        ("{in}/p.json", "symetric", "symmetric"),
        setup=plan("p.json", with_format(bits=4, symetric=False)),
    ),
    Case(
        "plan-symmetric-no",
        (*QP, "{in}/p.yaml"),
        ("{in}/p.yaml", "line 6", "symmetric", "true or false"),
        setup=plan(
            "p.yaml",
            "lowbit_plan_version: 1\ndefault:\n  format:\n    type: int\n    bits: 4\n"
            "    symmetric: 'no'\n  granularity: {type: group, size: 32}\n"
            "  algorithm: {name: rtn}\nrules: []\n",
        ),
    ),
    Case(
        "plan-group-size-text",
        (*QP, "{in}/p.json"),
        ("{in}/p.json", "size", "integer"),
        setup=plan(
            "p.json",
            plan_doc({**RTN_W8, "granularity": {"type": "group", "size": "abc"}}),
        ),
    ),
    Case(
        "plan-bits-text",
        (*QP, "{in}/p.json"),
        ("{in}/p.json", "bits", "integer"),
        setup=plan("p.json", with_format(bits="four")),
    ),
    Case(
        "plan-rules-match-nothing",
        (*QP, "{in}/p.json"),
        ("{in}/p.json", "re:.*attention.*", "matches no layer"),
        setup=plan(
            "p.json",
            {
                "lowbit_plan_version": 1,
                "default": None,
                "rules": [{"target": "re:.*attention.*", "spec": {**RTN_W8}}],
            },
        ),
    ),
    Case(
        "plan-quantizes-nothing",
        (*QP, "{in}/p.json"),
        ("{in}/p.json", "quantizes nothing", "give a default spec"),
        setup=plan("p.json", {"lowbit_plan_version": 1, "default": None, "rules": []}),
    ),
    Case(
        "plan-unknown-exact-layer",  # an RTN plan: no calibration options (they are refused)
        ("quantize", "{model}", "-o", OUT, "--plan", "{in}/p.json"),
        ("model.layers.0.self_attn.q_prj", "did you mean"),
        setup=plan(
            "p.json", plan_doc(rules=[{"target": "model.layers.0.self_attn.q_prj", "spec": None}])
        ),
    ),
    Case(
        "plan-future-version",
        (*QP, "{in}/p.json"),
        ("{in}/p.json", "99", "upgrade lowbit"),
        setup=plan("p.json", {**plan_doc(), "lowbit_plan_version": 99}),
    ),
    Case(
        "plan-not-yaml",
        (*QP, "{in}/p.yaml"),
        ("{in}/p.yaml", "not valid JSON/YAML"),
        setup=plan("p.yaml", "default: [1\n"),
    ),
    Case(
        "plan-rule-not-mapping",
        (*QP, "{in}/p.json"),
        ("{in}/p.json", "rules[0]", "mapping"),
        setup=plan("p.json", plan_doc(rules=["re:.*"])),
    ),
    Case("plan-file-missing", (*QP, "{in}/none.yaml"), ("{in}/none.yaml", "does not exist")),
    # menus
    Case(
        "menu-invalid-json",
        (*S, "{in}/menu.json"),
        ("{in}/menu.json", "not valid JSON/YAML"),
        setup=write("menu.json", "[{"),
    ),
    Case(
        "menu-not-a-list",
        (*S, "{in}/menu.json"),
        ("{in}/menu.json", "list of layer specs"),
        setup=write("menu.json", json.dumps(RTN_W8)),
    ),
    Case(
        "menu-wrong-type",
        (*S, "{in}/menu.yaml"),
        ("{in}/menu.yaml", "[0].format.bits", "integer"),
        setup=write(
            "menu.yaml", "- format: {type: int, bits: 4.5}\n  granularity: {type: tensor}\n"
        ),
    ),
    # budgets and tables
    Case(
        "budget-infeasible",
        (*P, "--avg-bits", "1.0"),
        ("1.0000 bits per weight", "the smallest achievable is"),
    ),
    Case(
        "budget-too-small-bytes",
        (*P, "--max-bytes", "1KB"),
        ("1,000 bytes", "the smallest achievable is"),
    ),
    Case(
        "budget-both", (*P, "--avg-bits", "4", "--max-bytes", "1MB"), ("--avg-bits", "exactly one")
    ),
    Case("budget-not-a-size", (*P, "--max-bytes", "lots"), ("lots", "60MB")),
    Case(
        "table-of-another-model",
        ("plan", "{other}", "--table", "{table}", "-o", OUT, "--avg-bits", "4"),
        ("{other}", "measure this model with lowbit sensitivity"),
    ),
    Case(
        "pareto-workers-without-ray",
        ("pareto", "{model}", "--table", "{table}", "-o", OUT, "--workers", "2"),
        ("--workers and --address go with --ray",),
    ),
    Case(
        "sensitivity-address-without-ray",
        (*S[:-1], "--bits", "4", "--address", "127.0.0.1:1"),
        ("--workers and --address go with --ray",),
    ),
    Case(
        "sensitivity-held-out-probe-measuring-nothing",
        (*S[:-1], "--bits", "4", "--proxies-only", "--probe-held-out"),
        ("held-out probe windows with --proxies-only", "drop --probe-held-out or --proxies-only"),
    ),
    Case(
        "sensitivity-held-out-windows-that-do-not-fit",
        (*S[:-1], "--bits", "4", "--probe-held-out", "--probe-windows", "400"),
        ("found", "of 400 held-out windows of 32", "outside the 2 calibration windows"),
    ),
    Case(
        "pareto-ray-no-workers",
        ("pareto", "{model}", "--table", "{table}", "-o", OUT, "--ray", "--workers", "0"),
        ("--workers must be at least 1", "got 0"),
    ),
    Case(
        "table-not-json",
        ("plan", "{model}", "--table", "{in}/t.json", "-o", OUT, "--avg-bits", "4"),
        ("{in}/t.json", "JSON"),
        setup=write("t.json", "garbage"),
    ),
    Case(
        "eval-result-of-another-model",
        (
            "export",
            "{saved}",
            "--to",
            "compressed-tensors",
            "-o",
            OUT,
            "--eval-result",
            "{in}/r.json",
        ),
        ("{in}/r.json", "another model"),
        setup=write("r.json", json.dumps({"model": {"fingerprint": "0" * 16}, "results": {}})),
    ),
    # unknown names
    Case(
        "unknown-hardware",
        ("perf", "{model}", "--hw", "h100-sxn", "-o", OUT),
        ("h100-sxn", "did you mean 'h100-sxm'"),
    ),
    Case(
        "unknown-task",
        (*E, "--tasks", "hellaswagg", "--task-source", "local"),
        ("hellaswagg", "did you mean 'hellaswag'"),
    ),
    Case("unknown-format", (*Q, "--format", "int5"), ("int5", "did you mean 'int'")),
    Case("unknown-algorithm", (*Q[:4], "--algorithm", "gptqq"), ("gptqq", "did you mean 'gptq'")),
    Case(
        "unknown-act-order",
        ("quantize", "{model}", "-o", OUT, "--act-order", "desc"),
        ("desc", "static"),
    ),
    Case("unknown-clipping", (*Q, "--clipping", "median"), ("median", "minmax")),
    Case("unknown-bos", (*E, "--bos", "sometimes"), ("sometimes", "auto")),
    Case("unknown-device", (*E, "--device", "tpu"), ("tpu", "cuda")),
    Case("unknown-metric", (*P, "--avg-bits", "4", "--metric", "mse"), ("mse", "kl")),
    Case(
        "unknown-export-target", ("export", "{saved}", "--to", "onnx", "-o", OUT), ("onnx", "gguf")
    ),
    Case(
        "compare-nothing",
        ("compare", "{model}", "{saved}", "-o", OUT),
        ("nothing to compare on", "--tasks, --eval-text"),
    ),
    Case(
        "compare-unknown-task",
        ("compare", "{model}", "{saved}", "--tasks", "piqaa", "--task-source", "local", "-o", OUT),
        ("piqaa", "did you mean 'piqa'"),
    ),
    Case("ls-unknown", ("ls", "colours"), ("colours", "formats"), outputs=()),
    Case(
        "pareto-table-of-another-model",
        ("pareto", "{other}", "--table", "{table}", "-o", OUT),
        ("{other}", "measure this model with lowbit sensitivity"),
    ),
    # non-finite weights
    Case(
        "nan-weight-eval",
        ("eval", "{in}/nan", "-o", OUT, *EVAL),
        ("model.layers.1.mlp.down_proj.weight", "NaN"),
        setup=model_copy("nan", poison(float("nan"))),
    ),
    Case(
        "inf-weight-quantize",
        ("quantize", "{in}/inf", "-o", OUT, *FAST),
        ("model.layers.1.mlp.down_proj.weight", "Inf"),
        setup=model_copy("inf", poison(float("inf"))),
    ),
)
