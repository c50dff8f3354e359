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
ProbeHeldOut = Annotated[
    bool,
    typer.Option(
        "--probe-held-out/--probe-in-calibration",
        help="Draw the probe's windows (in context also the selection's) from the calibration "
        "text where they overlap no calibration window, so GPTQ's candidates are not scored on "
        "the text they were fitted on (default: the first calibration windows).",
    ),
]
SelectWindows = Annotated[
    int,
    typer.Option(
        help="In context: calibration windows after the probe's on which the start plan and "
        "each round's plan are scored to choose the result (0: by the probe's own KL)."
    ),
]


def _single_layer(**options: Any) -> Any:
    """The single-layer source; an in-context option given with it (a value other than its
    default) would be ignored, so it is refused."""
    from lowbit.errors import ConfigError
    from lowbit.workflows.incontext import InContext, SingleLayer, options_given

    default = InContext()
    defaults = {**vars(default), **vars(default.probe), "probe_held_out": default.probe.held_out}
    given = options_given(options, defaults)
    if given:
        raise ConfigError(
            f"{', '.join(given)}: in-context options, which --sensitivity single-layer would "
            "ignore; add --sensitivity in-context, or drop them"
        )
    return SingleLayer()


def _in_context(
    rounds: int,
    boundary: int,
    probe_windows: int,
    probe_ctx: int,
    start: str,
    select_windows: int,
    probe_held_out: bool,
) -> Any:
    from lowbit.sensitivity.incontext import ContextConfig
    from lowbit.workflows.incontext import InContext

    probe = ContextConfig(probe_windows, probe_ctx, held_out=probe_held_out)
    return InContext(rounds, boundary, probe, start, select_windows)


SOURCES: dict[Source, Callable[..., Any]] = {
    Source.single_layer: _single_layer,
    Source.in_context: _in_context,
}


def sensitivity_config(
    source: Source,
    rounds: int,
    boundary: int,
    probe_windows: int,
    probe_ctx: int,
    start: str,
    select_windows: int,
    probe_held_out: bool = False,
) -> Any:
    """The validated configuration of ``source`` from a command's in-context options (refused
    with a single-layer source unless at their defaults, which are :class:`InContext`'s)."""
    return SOURCES[source](
        rounds=rounds,
        boundary=boundary,
        probe_windows=probe_windows,
        probe_ctx=probe_ctx,
        start=start,
        select_windows=select_windows,
        probe_held_out=probe_held_out,
    )
