"""Where the allocation's losses come from, as typed configurations dispatched to registered
handlers: :class:`SingleLayer` (the sensitivity table's single-layer values, summed) or
:class:`InContext` (measured inside the quantized model, iterated:
:mod:`lowbit.allocation.iterate` on :mod:`lowbit.sensitivity.incontext`).

Methods: ``exact`` (the MILP; iterated in context), ``greedy`` (ExLlamaV3-style; in context on
the measurements in the cheapest plan, as ExLlamaV3 does), ``llamacpp`` (the heuristic mix: it
reads no sensitivity, so it takes the single-layer source only). Options a method would ignore
are refused (:func:`check_method`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from lowbit.errors import ArtefactError, ConfigError
from lowbit.sensitivity.incontext import ContextConfig

METHODS = ("exact", "greedy", "llamacpp")


@dataclass(frozen=True)
class SingleLayer:
    """The table's single-layer measurements, assumed to add up."""

    in_context: ClassVar[bool] = False
    held_out_windows: ClassVar[int] = 0  # measures nothing on held-out text


@dataclass(frozen=True)
class InContext:
    """Measured in context from the ``start`` plan (a rule of
    :data:`lowbit.allocation.iterate.STARTS`); ``rounds`` allocations at most, each followed by
    re-measuring ``boundary`` units in the new plan. ``select_windows``: the windows after the
    probe's (calibration or, with ``probe.held_out``, held-out ones; cut to its length) on which
    the start plan and the rounds' plans are scored to choose among them; 0: chosen by the
    probe's own KL."""

    rounds: int = 3
    boundary: int = 16
    probe: ContextConfig = field(default_factory=ContextConfig)
    start: str = "uniform"
    select_windows: int = 0
    in_context: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.iterate_config()  # validates
        if self.select_windows < 0:
            raise ConfigError(
                f"in-context selection windows must be 0 (none) or more, got {self.select_windows}"
            )

    def iterate_config(self) -> Any:
        from lowbit.allocation.iterate import IterateConfig

        return IterateConfig(self.rounds, self.boundary, self.start)

    @property
    def held_out_windows(self) -> int:
        """Held-out windows to draw beside the calibration ones: the probe's and the
        selection's, when the probe is held out; else none."""
        return self.probe.probe_windows + self.select_windows if self.probe.held_out else 0


Sensitivity = SingleLayer | InContext
SINGLE_LAYER = SingleLayer()


@dataclass
class Inputs:
    """What an allocation may need beside the table: the model, calibration windows, runtime."""

    handle: Any = None
    windows: Any = None
    runtime: Any = None
    sessions: dict[Any, Any] = field(default_factory=dict)  # in-context probes, reused


@dataclass
class Allocated:
    allocation: Any
    plan: Any
    record: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[Any, Any, Any, str, dict[str, Any], Inputs], Allocated]
HANDLERS: dict[type, Handler] = {}


def register(config_type: type) -> Callable[[Handler], Handler]:
    def add(fn: Handler) -> Handler:
        if config_type in HANDLERS:
            raise ConfigError(
                f"an allocation source for {config_type.__name__} is registered twice"
            )
        HANDLERS[config_type] = fn
        return fn

    return add


def allocate_with(
    sensitivity: Sensitivity,
    table: Any,
    budget: Any,
    method: str,
    options: dict[str, Any],
    inputs: Inputs | None = None,
) -> Allocated:
    """(allocation, plan, record) of ``method`` on ``sensitivity``'s losses; ``options``:
    metric, fuse, pins, constraints (as :func:`lowbit.api.allocate` takes them)."""
    if method not in METHODS:
        raise ConfigError(f"unknown allocation method {method!r}; use one of {', '.join(METHODS)}")
    handler = HANDLERS.get(type(sensitivity))
    if handler is None:
        raise ConfigError(f"no allocation source is registered for {type(sensitivity).__name__}")
    return handler(sensitivity, table, budget, method, options, inputs or Inputs())


@register(SingleLayer)
def _single_layer(
    cfg: SingleLayer, table: Any, budget: Any, method: str, options: dict[str, Any], inputs: Inputs
) -> Allocated:
    from lowbit import api

    alloc, plan = api.allocate(table, budget, method=method, **options)
    return Allocated(alloc, plan, {"sensitivity": "single-layer"})


@register(InContext)
def _in_context(
    cfg: InContext, table: Any, budget: Any, method: str, options: dict[str, Any], inputs: Inputs
) -> Allocated:
    from lowbit.allocation import build_problem
    from lowbit.allocation.iterate import STARTS, check_reachable
    from lowbit.allocation.to_plan import to_plan
    from lowbit.report.console import progress_bar

    check_method(cfg, method)
    check_calibration(table, inputs.windows)
    fuse, pins, c = options.get("fuse", True), options.get("pins"), options.get("constraints")
    limits = {} if c is None else {"fuse": fuse or c.fuse, "ties": c.ties, "allowed": c.allowed}
    # units and bits (the losses are measured), and the table's losses of the user's metric
    # for a start rule that solves on them; a deployment target's ties and menu hold
    reads = method == "exact" and STARTS.get(cfg.start).reads_losses
    metric = options.get("metric", "kl") if reads else "hessian"
    problem = build_problem(table, metric, **{"fuse": fuse, "pins": pins, **limits})
    check_reachable(problem, budget)
    _check_selection(cfg, metric if reads else None, table, inputs)
    t0 = time.perf_counter()
    probe = _session(cfg, table, problem, inputs)
    selector = _selector(cfg, probe, inputs) if method == "exact" else None
    record: dict[str, Any] = {
        "sensitivity": "in-context",
        "probe": vars(cfg.probe),
        "probe_text": _probe_text_info(cfg, inputs),
    }
    if reads:
        record["start_metric"] = metric
    before = probe.stats()
    with progress_bar(f"in-context {method}: blocks measured", None) as update:
        probe.progress = update
        try:
            alloc = _run(cfg, problem, budget, method, (probe, selector), record)
        finally:
            probe.progress = None
    # this allocation's own cost (what earlier ones measured in the same session is reused)
    # beside the session's running totals in record["stats"]
    record["cost"] = {k: v - before[k] for k, v in probe.stats().items()}
    record["wall_s"] = time.perf_counter() - t0
    return Allocated(alloc, to_plan(table, alloc), record)


def _run(
    cfg: InContext, problem: Any, budget: Any, method: str, probes: Any, record: dict[str, Any]
) -> Any:
    """The greedy on the measurements in the cheapest plan, or the iterated exact plan
    (``probes``: the in-context probe, and the selection windows' scorer or None)."""
    from lowbit.allocation.greedy import cheapest, greedy
    from lowbit.allocation.iterate import curves_problem, iterate

    probe, selector = probes
    if method == "greedy":
        start = tuple(cheapest(problem))
        curves = probe.curves(start, list(range(len(problem.units))))
        alloc = greedy(curves_problem(problem, curves, probe.kl(start)), budget)
        record |= {"rounds": [], "stats": probe.stats()}
    else:
        result = iterate(problem, budget, probe, cfg.iterate_config(), selector=selector)
        alloc = result.best
        if result.selection is not None:
            record["selection"] = {
                "windows": cfg.select_windows,
                "tokens": cfg.select_windows * cfg.probe.probe_ctx,
                "kl_by_round": {str(k): v for k, v in result.selection.items()},
            }
        record |= {
            "stopped": result.stopped,
            "start": result.start,
            "start_plan_kl": result.base_kl,
            "best_round": int(alloc.info["round"]),
            "rounds": [
                {
                    "round": r.index,
                    "predicted_kl": r.predicted_kl,
                    "measured_kl": r.measured_kl,
                    "units_measured_before": r.remeasured,
                    **r.stats,
                }
                for r in result.rounds
            ],
            "stats": probe.stats(),
        }
    return alloc


ITERATION_OPTIONS = ("rounds", "boundary", "start", "select_windows")


def greedy_config(cfg: InContext) -> InContext:
    """``cfg`` as the greedy reads it: its probe, and no option of the iterated plan."""
    return InContext(probe=cfg.probe)


def check_method(cfg: Sensitivity, method: str) -> None:
    """Refuse options that ``method`` would ignore: the llama.cpp-style mix reads no
    sensitivity, so an in-context source is refused; the greedy allocates once, on the
    measurements in the cheapest plan, so an option of the iterated exact plan is refused."""
    if not cfg.in_context:
        return
    if method == "llamacpp":
        raise ConfigError(
            "--sensitivity in-context with --method llamacpp: the llama.cpp-style mix is fixed "
            "by rule and reads no sensitivity; drop --sensitivity in-context, or use --method "
            "exact or greedy"
        )
    if method != "greedy":
        return
    default = greedy_config(cfg)
    given = options_given({n: getattr(cfg, n) for n in ITERATION_OPTIONS}, vars(default))
    if given:
        raise ConfigError(
            f"{', '.join(given)}: options of the iterated exact plan, which the greedy would "
            "ignore (it allocates once, on the measurements in the cheapest plan); drop them, "
            "or use --method exact"
        )


def options_given(values: dict[str, Any], defaults: dict[str, Any]) -> list[str]:
    """``--name value`` (a flag set: ``--name``) for each of ``values`` other than its default
    (names as the command line spells them)."""
    return [
        f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
        for k, v in values.items()
        if v != defaults.get(k, v)
    ]


def _session(cfg: InContext, table: Any, problem: Any, inputs: Inputs) -> Any:
    """The in-context probe of this table and problem (made once per ``inputs``)."""
    from lowbit.sensitivity.incontext import ContextProbe

    key = hash((cfg.probe, tuple(u.layers for u in problem.units)))
    if key not in inputs.sessions:
        if inputs.handle is None or inputs.windows is None or inputs.runtime is None:
            raise ConfigError("in-context sensitivity needs the model and calibration windows")
        inputs.sessions[key] = ContextProbe(
            inputs.handle,
            tuple(table.menu),
            table.layers,
            [u.layers for u in problem.units],
            inputs.windows.ids,
            cfg.probe,
            inputs.runtime,
            inputs.windows.bos,
            inputs.windows.held_out,
        )
    return inputs.sessions[key]


DRAW_HELD_OUT = (
    "draw them beside the calibration windows: lowbit.api.text_windows(handle, calib, "
    "calibration=True, held_out=config.held_out_windows)"
)


def _probe_text(cfg: InContext, inputs: Inputs) -> tuple[torch.Tensor | None, str]:
    """The windows the probe's and the selection's are cut from, and what they are."""
    if cfg.probe.held_out:
        held = None if inputs.windows is None else inputs.windows.held_out
        if held is None:
            raise ConfigError(
                f"in-context probe on held-out windows, but none were drawn; {DRAW_HELD_OUT}"
            )
        return held, "held-out"
    return (None if inputs.windows is None else inputs.windows.ids), "calibration"


def _probe_text_info(cfg: InContext, inputs: Inputs) -> str:
    """Where the probe's windows come from, in words."""
    if not cfg.probe.held_out:
        return "the first calibration windows"
    held = inputs.windows.info.get("held_out", {})
    return f"held-out windows: {held.get('selection', 'drawn outside the calibration windows')}"


def _check_selection(cfg: InContext, metric: str | None, table: Any, inputs: Inputs) -> None:
    """Selection windows must fit after the probe's, and be held out from what the start plan
    was fitted on (``metric``: the table's values it solves on, or None): the table was
    measured on the calibration windows (the Hessian proxy reads all of them), so calibration
    selection windows are refused with such a start; held-out ones are not, unless the table's
    KL was measured on held-out windows that the selection's would overlap."""
    if not cfg.select_windows:
        return
    reads_losses = metric is not None
    table_held = (
        int(table.probe.get("probe_windows", 0)) if table.probe.get("probe_held_out") else 0
    )
    if metric == "kl" and cfg.probe.held_out and cfg.probe.probe_windows < table_held:
        raise ConfigError(
            f"--select-windows with --start {cfg.start} --metric kl: the table's KL was measured "
            f"on the first {table_held} held-out windows, and the selection's begin after the "
            f"{cfg.probe.probe_windows} probe windows, so they overlap what the start plan was "
            f"fitted on; give --probe-windows {table_held} or more, or another --metric"
        )
    if reads_losses and not cfg.probe.held_out:
        raise ConfigError(
            f"--select-windows with --start {cfg.start}: the start plan solves on the table's "
            "values, measured on these calibration windows, so no window is held out from it; "
            "use --start uniform or cheapest with --select-windows, add --probe-held-out, or "
            "give no selection windows"
        )
    text, what = _probe_text(cfg, inputs)
    n_windows = 0 if text is None else int(text.shape[0])
    first, n = cfg.probe.probe_windows, cfg.select_windows
    if first + n > n_windows:
        fix = (
            DRAW_HELD_OUT.replace("draw them", "draw more")
            if cfg.probe.held_out
            else f"give --calib-windows {first + n} or more (and a sensitivity table measured "
            "on them)"
        )
        raise ConfigError(
            f"in-context selection: {n} windows after the {first} probe windows do not fit in "
            f"the {n_windows} {what} windows; {fix}, or fewer --select-windows"
        )


def _selector(cfg: InContext, probe: Any, inputs: Inputs) -> Any:
    """The probe scoring plans on the ``select_windows`` calibration windows after its own
    (made once per ``inputs``), or None when no selection windows are asked for."""
    if not cfg.select_windows:
        return None
    ids, _ = _probe_text(cfg, inputs)
    first, n = cfg.probe.probe_windows, cfg.select_windows
    key = ("select", id(probe), first, n)
    if key not in inputs.sessions:
        chosen = ids[first : first + n, : cfg.probe.probe_ctx]
        inputs.sessions[key] = probe.on_windows(chosen, inputs.windows.bos)
    return inputs.sessions[key]


def windows_sha256(ids: torch.Tensor) -> str:
    """Which calibration windows: SHA-256 of their token ids (first 16 hex digits)."""
    return hashlib.sha256(ids.to(torch.int64).cpu().numpy().tobytes()).hexdigest()[:16]


def check_calibration(table: Any, windows: Any) -> None:
    """The table must come from the calibration windows the in-context probe uses."""
    if windows is None:
        raise ConfigError("in-context sensitivity needs calibration windows")
    have = windows_sha256(windows.ids)
    recorded = table.probe.get("calibration_sha256")
    if recorded is None:
        raise ArtefactError(
            "the sensitivity table records no calibration hash (it was measured by an older "
            f"lowbit); measure it again with the calibration windows given here ({have})"
        )
    if recorded != have:
        raise ArtefactError(
            f"the sensitivity table was measured on calibration windows {recorded}, not on the "
            f"ones given here ({have}); give the same --calib-text, --calib-windows, --ctx and "
            "--seed as the table, or measure the table on these"
        )
