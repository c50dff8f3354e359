"""A sensitivity table measured in shards of blocks, each a trial of a sweep (``lowbit
sensitivity --ray``): which blocks each shard probes, its trial's configuration, and the merge
of the partial tables into one.

Probing block i runs each candidate through blocks i+1 … N−1, so its cost grows as N − i;
every shard also pays one sweep of the original blocks and the Fisher backward down to its
lowest block. Blocks go, costliest first, to the shard with the least work so far (longest
processing time first), so the shards finish close together."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any, Protocol

from lowbit import api
from lowbit.errors import ArtefactError, ConfigError
from lowbit.plan import LayerSpec
from lowbit.workflows.points import runtime_json, text_json
from lowbit.workflows.spine import Execution


class Runner(Protocol):
    """Runs (name, configuration) trials; {name: the trial's result (a partial table)}."""

    shards: int

    def __call__(self, named: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]: ...


def block_shards(n_blocks: int, shards: int) -> list[tuple[int, ...]]:
    """The blocks 0 … n_blocks−1 in at most ``shards`` shards of balanced probing cost (block i
    costs n_blocks − i), each sorted; no shard is empty."""
    if shards < 1:
        raise ConfigError(f"sensitivity shards must be at least 1, got {shards}")
    bins: list[list[int]] = [[] for _ in range(min(shards, n_blocks))]
    load = [0] * len(bins)
    for i in range(n_blocks):  # block 0 is the costliest
        k = min(range(len(bins)), key=lambda b: (load[b], b))
        bins[k].append(i)
        load[k] += n_blocks - i
    return [tuple(sorted(b)) for b in bins]


def shard_configs(
    model: str,
    n_blocks: int,
    menu: tuple[LayerSpec, ...],
    calib: api.TextConfig,
    probe: Any,
    execution: Execution,
    shards: int,
    threads: int,
) -> list[tuple[str, dict[str, Any]]]:
    """One trial configuration per shard (plain JSON); the probe's own ``blocks`` is refused,
    the shards choose them. ``threads``: torch's CPU thread count every shard runs with (the
    driver's): GPTQ's solves round differently at another count (issue 17), so it is part of
    the configuration, not left to the worker (Ray gives a task one thread per CPU slot)."""
    if threads < 1:
        raise ConfigError(f"sensitivity shards need at least 1 thread, got {threads}")
    if probe.blocks is not None:
        raise ConfigError("a sensitivity run on Ray shards the blocks itself; give no blocks")
    base = {
        "kind": "sensitivity shard",
        "model": model,
        "menu": [s.to_dict() for s in menu],
        "calibration": text_json(calib),
        "runtime": runtime_json(execution),
        "threads": threads,
    }
    return [
        (
            f"sensitivity blocks {','.join(map(str, b))}",
            {**base, "probe": {**asdict(probe), "blocks": list(b)}},
        )
        for b in block_shards(n_blocks, shards)
    ]


def merge_shards(parts: list[dict[str, Any]]) -> Any:
    """One table from the shards' partial tables (same model, menu, layers and probe data;
    disjoint blocks); timings summed over the shards (worker seconds)."""
    from lowbit.sensitivity import SensitivityTable

    tables = [SensitivityTable.from_dict(p, "sensitivity shard") for p in parts]
    first = tables[0]
    entries = dict(first.entries)
    for t in tables[1:]:
        same = (t.model, t.layers, t.probe, [s.to_dict() for s in t.menu])
        if same != (first.model, first.layers, first.probe, [s.to_dict() for s in first.menu]):
            raise ArtefactError("sensitivity shards differ in model, menu, layers or probe data")
        if set(entries) & set(t.entries):
            raise ArtefactError("sensitivity shards overlap: a layer was measured twice")
        entries.update(t.entries)
    # in the single process's order: blocks last first, each block's entries as measured
    block = {x.name: x.block for x in first.layers}
    ordered = dict(sorted(entries.items(), key=lambda kv: -block[kv[0][0]]))  # a stable sort
    timings = {k: sum(t.timings.get(k, 0.0) for t in tables) for t in tables for k in t.timings}
    merged = replace(first, entries=ordered, timings=timings)
    if not merged.is_complete():
        raise ArtefactError("the sensitivity shards do not cover every layer and spec")
    return merged
