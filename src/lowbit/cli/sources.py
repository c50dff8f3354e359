"""The ``--sensitivity`` options of ``lowbit plan`` and ``lowbit pareto``: where the
allocation's losses come from, as the typed configuration of
:mod:`lowbit.workflows.incontext`."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any

import typer


class Source(str, Enum):
    single_layer = "single-layer"
    in_context = "in-context"


SensitivityOption = Annotated[
    Source,
    typer.Option(
        "--sensitivity",
        help="single-layer (the table's values, summed) or in-context (measured inside the "
        "quantized model from the --start plan, then iterated).",
    ),
]
StartPlan = Annotated[
    str,
    typer.Option(
        "--start",
        help="In context: the plan measured first: uniform (the costliest uniform plan within "
        "the budget), additive (the exact plan on the table's --metric values, then corrected "
        "in context) or cheapest (every layer at the menu's cheapest spec).",
    ),
]
Rounds = Annotated[int, typer.Option(help="In context: allocations at most.")]
Boundary = Annotated[
    int, typer.Option(help="In context: units re-measured around the decision boundary per round.")
]
ProbeWindows = Annotated[int, typer.Option(help="In context: calibration windows the KL uses.")]
ProbeCtx = Annotated[int, typer.Option(help="In context: tokens of each probe window.")]
SelectWindows = Annotated[
    int,
    typer.Option(
        help="In context: calibration windows after the probe's on which the start plan and "
        "each round's plan are scored to choose the result (0: by the probe's own KL)."
    ),
]


def _single_layer(**_: Any) -> Any:
    from lowbit.workflows.incontext import SingleLayer

    return SingleLayer()


def _in_context(
    rounds: int, boundary: int, probe_windows: int, probe_ctx: int, start: str, select_windows: int
) -> Any:
    from lowbit.sensitivity.incontext import ContextConfig
    from lowbit.workflows.incontext import InContext

    probe = ContextConfig(probe_windows, probe_ctx)
    return InContext(rounds, boundary, probe, start, select_windows)


SOURCES: dict[Source, Callable[..., Any]] = {
    Source.single_layer: _single_layer,
    Source.in_context: _in_context,
}


def sensitivity_config(source: Source, **options: Any) -> Any:
    """The validated configuration of ``source`` from the command's in-context options (rounds,
    boundary, probe_windows, probe_ctx, start, select_windows; a single-layer source ignores
    them)."""
    return SOURCES[source](**options)
