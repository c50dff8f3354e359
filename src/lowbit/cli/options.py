"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Model = Annotated[
    str,
    typer.Argument(
        help="A Hugging Face model directory, a .gguf file, or a built-in name (smollm2-135m)."
    ),
]
EvalText = Annotated[
    str,
    typer.Option(
        "--eval-text",
        help="Evaluation text: a file, "
        "builtin:python-docs, or a hub dataset NAME:CONFIG:SPLIT "
        "(e.g. wikitext:wikitext-2-raw-v1:test).",
    ),
]
CalibText = Annotated[
    str,
    typer.Option(
        "--calib-text", help="Calibration text (same forms); must differ from the evaluation text."
    ),
]
Ctx = Annotated[int, typer.Option("--ctx", help="Tokens per window.")]
EvalWindows = Annotated[int, typer.Option("--windows", help="Evaluate the first N windows.")]
CalibWindows = Annotated[int, typer.Option("--calib-windows", help="Calibration windows.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the calibration window draw.")]
Output = Annotated[Path, typer.Option("--output", "-o", help="Where to write the result.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
AllowPickle = Annotated[
    bool,
    typer.Option(
        "--allow-pickle", help="Allow loading .bin (pickled) weights: only for files you trust."
    ),
]
Tasks = Annotated[
    str | None,
    typer.Option(
        "--tasks",
        help="Comma-separated tasks: lambada_openai, hellaswag, piqa, winogrande, arc_easy, "
        "arc_challenge, mmlu (or mmlu_stem, mmlu_<subject>, ...), read from local files when "
        "the data directory has them; any other lm-evaluation-harness task name (hub).",
    ),
]
Limit = Annotated[
    int | None, typer.Option("--limit", help="Evaluate the first N items of each task.")
]
TaskSourceOption = Annotated[
    str,
    typer.Option(
        "--task-source",
        help="auto (local files when present, else the hub), local or hub.",
    ),
]
BatchSize = Annotated[
    int, typer.Option("--batch-size", help="Log-likelihood requests per forward pass.")
]
