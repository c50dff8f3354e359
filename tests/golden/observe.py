"""What CPU fp32 runs of lowbit produce on the tiny Llama model, observed through the CLI only,
so that the same observation runs on any lowbit version (the golden file was written by the
commit before the execution core, ``c3dc85e``; ``python -m tests.golden.observe OUT.json``).

Observed: the sha256 of every packed code, scale and zero-point tensor of GPTQ (true-sequential
and two-pass), AWQ and RTN quantizations, the tensors AWQ rescaled, the evaluation figures of
the GPTQ model against its reference, and every entry of a sensitivity table. Floats are kept
as ``float.hex`` so that equality is bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

QUANTIZE = {
    "gptq_w4g48": ["--bits", "4", "--group-size", "48", "--algorithm", "gptq"],
    "gptq_w4g48_two_pass": [
        *("--bits", "4", "--group-size", "48", "--algorithm", "gptq"),
        *("--propagation", "two-pass"),
    ],
    "gptq_w3_channel_group_order": [
        *("--bits", "3", "--granularity", "channel", "--algorithm", "gptq"),
        *("--act-order", "group"),
    ],
    "awq_w4g32": ["--bits", "4", "--group-size", "32", "--algorithm", "awq"],
    "rtn_w3g16": ["--bits", "3", "--group-size", "16", "--algorithm", "rtn", "--asymmetric"],
}
_SUFFIXES = (".qcodes", ".qscale", ".qzero", ".qperm")


def lowbit(*args: str, cwd: Path) -> None:
    """One command, in this process when ``LOWBIT_GOLDEN_INPROCESS`` is set (the test: no
    interpreter start per command), else as a subprocess (how the golden file was made)."""
    if os.environ.get("LOWBIT_GOLDEN_INPROCESS"):
        from lowbit.cli.main import app

        app(list(args), standalone_mode=False)
        return
    run = subprocess.run(
        [sys.executable, "-m", "lowbit.cli.main", *args], cwd=cwd, capture_output=True, text=True
    )
    if run.returncode != 0:
        raise RuntimeError(f"lowbit {' '.join(args)} failed:\n{run.stderr[-3000:]}")


def texts(root: Path) -> tuple[Path, Path]:
    from lowbit.evaluation.text import BuiltinText, load_text

    ev, ca = root / "eval.txt", root / "calib.txt"
    ev.write_text(load_text(BuiltinText("python-docs", "eval"))[:30_000])
    ca.write_text(load_text(BuiltinText("python-docs", "calib"))[:30_000])
    return ev, ca


def tensor_hashes(directory: Path) -> dict[str, str]:
    """sha256 of the packed tensors (and smoothed norms) in every safetensors file."""
    from safetensors import safe_open

    out = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as reader:
            for key in reader.keys():
                if key.endswith(_SUFFIXES) or "layernorm" in key:
                    t = reader.get_tensor(key).contiguous()
                    out[key] = hashlib.sha256(
                        t.view(-1).view(t.dtype).numpy().tobytes()
                    ).hexdigest()
    return out


def _hex(value: object) -> object:
    if isinstance(value, float):
        return value.hex()
    if isinstance(value, dict):
        return {k: _hex(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_hex(v) for v in value]
    return value


def observe(model: Path, root: Path) -> dict[str, object]:
    ev, ca = texts(root)
    calib = ["--calib-text", str(ca), "--calib-windows", "8", "--ctx", "64"]
    seen: dict[str, object] = {}
    for name, options in QUANTIZE.items():
        out = root / name
        calibrates = "rtn" not in options  # RTN refuses calibration options it would ignore
        lowbit(
            "quantize",
            str(model),
            "-o",
            str(out),
            *options,
            *(calib if calibrates else []),
            cwd=root,
        )
        seen[f"quantize/{name}"] = tensor_hashes(out)
    result = root / "eval.json"
    lowbit(
        *("eval", str(root / "gptq_w4g48"), "--eval-text", str(ev)),
        *("--ctx", "64", "--windows", "6", "-o", str(result)),
        cwd=root,
    )
    figures = json.loads(result.read_text())["results"]
    seen["eval/gptq_w4g48"] = _hex(
        {
            name: {k: r[k] for k in ("perplexity", "nll", "kl", "top1_agreement", "delta_p")}
            for name, r in figures.items()
        }
    )
    table = root / "sens.json"
    lowbit(
        *("sensitivity", str(model), "-o", str(table), "--bits", "3", "--bits", "4"),
        *("--group-size", "32", *calib, "--probe-windows", "2", "--probe-ctx", "32"),
        cwd=root,
    )
    entries = json.loads(table.read_text())["entries"]
    seen["sensitivity"] = _hex(
        sorted(
            (
                [e["layer"], e["spec"], e["bits"], e["kl"], e["hessian"], e["fisher"]]
                for e in entries
            ),
            key=lambda e: (e[0], e[1]),
        )
    )
    return seen


if __name__ == "__main__":  # python -m tests.golden.observe OUT.json (from the repo root)
    import tempfile

    from tests.helpers.tiny import make_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = make_tiny_model(root / "models", "llama")
        Path(sys.argv[1]).write_text(json.dumps(observe(model, root), indent=1, sort_keys=True))
