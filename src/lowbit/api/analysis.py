"""The API's sensitivity and allocation functions (re-exported by :mod:`lowbit.api`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lowbit.errors import ConfigError
from lowbit.plan import LayerSpec, Plan

if TYPE_CHECKING:
    from lowbit.allocation import Budget
    from lowbit.allocation.problem import PairKey
    from lowbit.allocation.solve import Allocation
    from lowbit.api.core import Windows
    from lowbit.export.targets import Constraints
    from lowbit.models.sources import ModelHandle
    from lowbit.runtime import Runtime
    from lowbit.sensitivity import Entry, SensitivityTable
    from lowbit.sensitivity.probe import ProbeConfig


def sensitivity(
    handle: ModelHandle,
    menu: tuple[LayerSpec, ...],
    calib: Windows,
    probe: ProbeConfig | None = None,
    *,
    rt: Runtime | None = None,
    done: dict[tuple[str, int], Entry] | None = None,
    on_block: Callable[[int, list[Entry]], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SensitivityTable:
    """Sensitivity table of every linear layer of ``handle`` to each spec of ``menu``, on
    ``rt`` (default: :func:`runtime`) one block at a time."""
    from lowbit.api.core import runtime
    from lowbit.sensitivity.probe import ProbeConfig, measure

    return measure(
        handle,
        menu,
        calib.ids,
        probe or ProbeConfig(),
        runtime=rt or runtime(),
        done=done,
        on_block=on_block,
        progress=progress,
        bos=calib.bos,
        held_out=calib.held_out,
    )


def load_table(path: Path, handle: ModelHandle | None = None) -> SensitivityTable:
    """A saved sensitivity table; with ``handle``, checked to be of that model."""
    from lowbit.sensitivity import SensitivityTable

    table = SensitivityTable.load(path)
    if handle is not None:
        table.check_model(handle.fingerprint, handle.source)
    return table


def allocate(
    table: SensitivityTable,
    budget: Budget,
    *,
    method: str = "exact",
    metric: str = "kl",
    fuse: bool = True,
    pins: dict[str, int] | None = None,
    constraints: Constraints | None = None,
    pairs: dict[PairKey, float] | None = None,
) -> tuple[Allocation, Plan]:
    """(allocation, plan) for ``budget`` (AvgBits or MaxBytes): ``exact`` (MILP on ``metric``,
    with measured ``pairs`` terms when given), ``greedy`` (ExLlamaV3-style: the best loss per
    extra bit first) or ``llamacpp`` (the llama.cpp-style mix that spends the most within the
    budget); ``constraints``: a deployment target's (ties and allowed specs,
    :func:`lowbit.export.targets.constraints`)."""
    from lowbit.allocation import build_problem, solve_exact
    from lowbit.allocation.greedy import greedy
    from lowbit.allocation.heuristic import llamacpp_for_budget
    from lowbit.allocation.to_plan import to_plan
    from lowbit.export.targets import Constraints

    c = constraints or Constraints("any")
    ties = [*c.ties, *(table.fused if c.fuse else ())]

    def problem(loose: bool = False):
        if loose:  # the llama.cpp mix picks per tensor; fused groups tie through ``ties``
            return build_problem(table, metric, fuse=False, ties=ties, allowed=c.allowed)
        return build_problem(
            table,
            metric,
            fuse=fuse or c.fuse,
            pins=pins,
            ties=c.ties,
            allowed=c.allowed,
            pairs=pairs,
        )

    solvers = {
        "exact": lambda: solve_exact(problem(), budget),
        "greedy": lambda: greedy(problem(), budget),
        "llamacpp": lambda: llamacpp_for_budget(table, problem(loose=True), budget),
    }
    if method not in solvers:
        raise ConfigError(f"unknown allocation method {method!r}; use {', '.join(solvers)}")
    alloc = solvers[method]()
    return alloc, to_plan(table, alloc)
