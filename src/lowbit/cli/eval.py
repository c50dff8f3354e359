"""``lowbit eval``: perplexity, and KL divergence and agreement against a reference."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lowbit.cli.options import AllowPickle, Ctx, EvalText, EvalWindows, Overwrite


def evaluate(
    model: Annotated[
        str, typer.Argument(help="A model source or a directory saved by `lowbit quantize`.")
    ],
    reference: Annotated[
        str | None,
        typer.Option(
            help="Reference model for KL divergence "
            "(default for a saved quantized model: the "
            "model it came from)."
        ),
    ] = None,
    eval_text: EvalText = "builtin:python-docs",
    ctx: Ctx = 512,
    windows: EvalWindows = 40,
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("lowbit-eval.json"),
    overwrite: Overwrite = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Evaluate MODEL on a text: perplexity; KL divergence, top-1 agreement and Δp against
    the reference.

    Example: lowbit eval smol-w4 --eval-text ../shared/data/wikitext-2-raw/wiki.test.raw
    """
    from lowbit.api import TextConfig
    from lowbit.workflows import eval_job

    eval_job(
        model,
        TextConfig(eval_text, ctx, windows),
        output,
        reference=reference,
        overwrite=overwrite,
        allow_pickle=allow_pickle,
    )
