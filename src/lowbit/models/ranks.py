"""Calibration across torch.distributed ranks: the parts of block-by-block quantization that
change when the calibration windows are split over several processes.

- statistics: each rank accumulates Σ xᵀx over its own windows (fp32 products per chunk of
  windows, summed in fp64); the sums and token counts are all-reduced in fp64 before a group is
  solved, so every rank holds the Hessian of all windows, the same fp32 matrix as one process
  whenever the ranks' chunks are the single process's chunks (each rank's share a multiple of
  the chunk size): the sums then differ only by the order of fp64 additions;
- solves: each linear of a group is solved on one owner rank, the least loaded so far by the
  solve's cost (out × in² multiply-adds for GPTQ), and its result broadcast, so every rank
  continues with the same quantized weights and the next group and block see them;
- agreement: before any work the ranks compare the model, the plan and the windows.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from lowbit.algorithms import HessianAccumulator
from lowbit.errors import ConfigError
from lowbit.plan import LayerSpec, Plan
from lowbit.runtime import HOST
from lowbit.runtime.distributed import World, owners

Solve = Callable[[str, torch.Tensor, LayerSpec, bool, dict], Any]  # -> Outcome
Apply = Callable[[str, nn.Module, LayerSpec, Any, float], None]


def check_job(world: World, fingerprint: str, plan: Plan, calibration: torch.Tensor) -> None:
    """Refuse ranks that disagree on the model, the plan or the calibration windows, and plans
    whose statistics are not yet reduced across ranks."""
    if not world.distributed:
        return
    specs = [plan.default, *(rule.spec for rule in plan.rules)]
    if plan.smoothquant is not None or any(s and s.algorithm.name == "awq" for s in specs):
        raise ConfigError(
            "AWQ and SmoothQuant search scales on each rank's own windows; run them in one "
            "process (without torchrun)"
        )
    ids = calibration.detach().to(HOST).contiguous()
    digest = hashlib.sha256(ids.numpy().tobytes()).hexdigest()[:16]
    plan_text = json.dumps(plan.to_dict(), sort_keys=True)
    world.check_agree({
        "model": fingerprint,
        "plan": hashlib.sha256(plan_text.encode()).hexdigest()[:16],
        "calibration windows": f"{tuple(calibration.shape)} {digest}",
    })  # fmt: skip


def reduce_statistics(world: World, acc: HessianAccumulator) -> float:
    """Sum ``acc``'s Σ xᵀx and token count over the ranks (in place); the seconds it took."""
    t0 = time.perf_counter()
    world.all_reduce_(acc.sum)
    acc.count = world.sum_int(acc.count, acc.sum.device)
    return time.perf_counter() - t0


def solve_cost(W: torch.Tensor) -> float:
    out_features, in_features = W.shape
    return float(out_features) * float(in_features) ** 2


def solve_group(
    world: World,
    group: Sequence[tuple[str, nn.Module]],
    specs: dict[str, LayerSpec | None],
    no_clip: set[str],
    loads: list[float],
    solve: Solve,
    apply: Apply,
) -> float:
    """Solve each quantized linear of ``group`` on its owner rank and apply every result on
    every rank (in the group's order); the seconds spent waiting for the broadcasts."""
    jobs = [(name, m) for name, m in group if specs[name] is not None]
    owner = owners([solve_cost(m.weight) for _, m in jobs], loads)
    mine: dict[str, tuple[Any, float]] = {}
    shared: dict[tuple[object, ...], object] = {}
    for (name, m), rank in zip(jobs, owner, strict=True):
        if rank == world.rank:
            t0 = time.perf_counter()
            spec = specs[name]
            assert spec is not None
            out = solve(name, m.weight.data, spec, name not in no_clip, shared)
            mine[name] = (out, time.perf_counter() - t0)
    waited = 0.0
    for (name, m), rank in zip(jobs, owner, strict=True):
        t0 = time.perf_counter()
        out, seconds = world.broadcast(mine.get(name), src=rank)
        waited += time.perf_counter() - t0
        spec = specs[name]
        assert spec is not None
        apply(name, m, spec, out, seconds)
    return waited
