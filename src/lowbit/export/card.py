"""The model card (README.md) written beside every export: what the plan is, how it was made,
what it measured, and how to load it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from lowbit import __version__
from lowbit.export.common import KEPT, ExportInput, ExportReport

_LOAD = {
    "compressed-tensors": (
        "```python\nfrom transformers import AutoModelForCausalLM  # needs compressed-tensors\n"
        'model = AutoModelForCausalLM.from_pretrained("{path}")\n```\n\n'
        "or serve it: `vllm serve {path}`"
    ),
    "gguf": "`llama-cli -m {path}` or `from_pretrained(dir, gguf_file=name)` in transformers",
}


def card_text(inp: ExportInput, report: ExportReport) -> str:
    qm = inp.qm
    counts = Counter(report.layers.values())
    rows = "\n".join(f"| {scheme} | {n} |" for scheme, n in counts.most_common())
    lines = [
        f"# {Path(str(report.path)).name}",
        "",
        f"Quantized with lowbit {__version__} from `{qm.handle.source}` "
        f"(fingerprint `{qm.handle.fingerprint}`), exported as {report.target}.",
        "",
        "## Plan",
        "",
        "| scheme | layers |",
        "|---|---|",
        rows,
        "",
        f"Predicted size of the plan: {report.predicted_bytes / 1e6:.2f} MB. "
        f"Largest difference between the stored and the evaluated weights: "
        f"{report.max_weight_error:.3g} in the quantized layers, {report.kept_max_error:.3g} in "
        "the tensors kept in full precision (0 means bit-exact).",
        "",
        "```json",
        qm.plan.dumps(),
        "```",
        "",
        "## Evaluation",
        "",
        *_figures(inp.figures),
        "",
        "## Loading",
        "",
        _LOAD[report.target].format(path=report.path),
    ]
    if report.notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in report.notes)]
    if KEPT in counts:
        lines += ["", f"{counts[KEPT]} linear layer(s) are {KEPT}."]
    return "\n".join(lines) + "\n"


def _figures(figures: dict[str, Any] | None) -> list[str]:
    if not figures:
        return ["Not evaluated at export time; run `lowbit eval` on this export."]
    rows = [f"| {k} | {_fmt(v)} |" for k, v in figures.items() if not isinstance(v, dict | list)]
    return ["| metric | value |", "|---|---|", *rows]


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_card(directory: Path, inp: ExportInput, report: ExportReport) -> None:
    (Path(directory) / "README.md").write_text(card_text(inp, report))
