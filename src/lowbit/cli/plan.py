"""``lowbit plan``: the plan of least predicted loss within a budget."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from lowbit.cli.menu import DeployTarget, Fuse, Metric, TablePath
from lowbit.cli.options import Model, Overwrite


class Method(str, Enum):
    exact = "exact"
    llamacpp = "llamacpp"


def plan(
    model: Model,
    table: TablePath,
    output: Annotated[Path, typer.Option("--output", "-o", help="Plan to write (.yaml/.json).")],
    avg_bits: Annotated[
        float | None, typer.Option(help="Average bits per weight over the linear layers.")
    ] = None,
    max_bytes: Annotated[
        str | None, typer.Option(help="Stored size of the whole model, e.g. 60MB.")
    ] = None,
    method: Annotated[
        Method, typer.Option(help="exact (integer program) or llamacpp (heuristic mix).")
    ] = Method.exact,
    metric: Metric = "kl",
    fuse: Fuse = True,
    target: DeployTarget = "any",
    pin: Annotated[
        list[str], typer.Option(help="LAYER=SPEC: fix a layer (or re:pattern) to a menu spec.")
    ] = [],
    overwrite: Overwrite = False,
) -> None:
    """Choose one spec of the table's menu per layer, minimising the summed sensitivity.

    Example: lowbit plan smollm2-135m --table sens.json --avg-bits 3.25 -o plan.yaml
    """
    from lowbit.api import AvgBits, MaxBytes
    from lowbit.cli.menu import parse_pins, parse_size
    from lowbit.errors import ConfigError
    from lowbit.workflows import plan_job

    if (avg_bits is None) == (max_bytes is None):
        raise ConfigError("give exactly one budget: --avg-bits or --max-bytes")
    budget = AvgBits(avg_bits) if avg_bits is not None else MaxBytes(parse_size(max_bytes or ""))
    plan_job(
        model,
        table,
        budget,
        output,
        method=method.value,
        metric=metric,
        fuse=fuse,
        pins=parse_pins(pin),
        overwrite=overwrite,
        target=target,
    )
