"""torch.distributed ranks for data-parallel calibration (``torchrun --nproc-per-node N``).

A :class:`World` is this process's place among the ranks: under torchrun (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` in the environment) :func:`join_world` starts
the process group, NCCL when the device is a GPU and gloo on CPUs; otherwise the world is one
rank and every collective is the identity.

What the ranks do with it (:mod:`lowbit.models.ranks`): each takes its share of the calibration
windows (:meth:`World.shard`), statistics are summed over the ranks in their own dtype (the
Hessians' fp64 sums: :meth:`World.all_reduce_`), each layer's solve runs on one owner rank
(:func:`owners`: the least loaded so far) and is sent to every rank (:meth:`World.broadcast`),
and rank 0 writes. Ranks first check that they agree on the job (:meth:`World.check_agree`).
Evaluation splits its windows the same way and gathers the per-token figures
(:meth:`World.all_gather`; :mod:`lowbit.api.evaluate`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lowbit.errors import ConfigError

_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` ranks (``backend`` None: one rank, no group)."""

    rank: int = 0
    size: int = 1
    backend: str | None = None
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def writes(self) -> bool:
        """Whether this rank writes the outputs (rank 0)."""
        return self.rank == 0

    def shard(self, n: int, what: str = "calibration windows") -> slice:
        """This rank's contiguous share of ``n`` items (the first ``n % size`` ranks get one
        more); every rank needs at least one."""
        if n < self.size:
            raise ConfigError(
                f"{n} {what} cannot be split over {self.size} ranks; give at least {self.size}"
            )
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the ranks, in place, in its own dtype (fp64 for the Hessian sums)."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def sum_int(self, value: int, device: torch.device) -> int:
        """``value`` summed over the ranks."""
        t = torch.tensor([value], dtype=torch.float64, device=device)
        return int(self.all_reduce_(t).item())

    def broadcast(self, obj: Any, src: int) -> Any:
        """``obj`` of rank ``src`` on every rank (an object of this job's own ranks)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, device=self._device())
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (an object of this job's own ranks)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        every: list[Any] = [None] * self.size
        dist.all_gather_object(every, obj)  # NCCL: the current GPU
        return every

    def barrier(self) -> None:
        """Wait until every rank reaches this point."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def check_agree(self, facts: Mapping[str, Any]) -> None:
        """Refuse a job whose ranks disagree on any of ``facts`` (model, plan, windows …),
        naming the fact and the ranks' values."""
        if not self.distributed:
            return
        every = self.all_gather(dict(facts))
        for key in facts:
            values = [f.get(key) for f in every]
            if any(v != values[0] for v in values):
                shown = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
                raise ConfigError(
                    f"the ranks disagree on the {key} ({shown}); start every rank with the same "
                    "command and files"
                )

    def _device(self) -> torch.device | None:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else None

    def describe(self) -> dict[str, Any]:
        return {"rank": self.rank, "size": self.size, "backend": self.backend}


SINGLE = World()


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher of its kind): then it
    joins the process group, also as the only rank (``--nproc-per-node 1`` runs the
    data-parallel path, all-reduces and broadcasts included, on one device)."""
    return all(k in os.environ for k in _ENV) and int(os.environ["WORLD_SIZE"]) >= 1


def join_world(gpu: bool) -> World:
    """This process's :class:`World`: the torchrun process group (NCCL on GPUs, gloo on CPUs),
    started once; one rank when not launched by torchrun."""
    if not launched():
        return SINGLE
    import torch.distributed as dist

    backend = "nccl" if gpu else "gloo"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if gpu:
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return World(dist.get_rank(), dist.get_world_size(), dist.get_backend(), local)


def owners(costs: Sequence[float], loads: list[float]) -> list[int]:
    """The owner rank of each job of ``costs``: the least loaded rank so far, costliest job
    first (``loads``, one entry per rank, is updated)."""
    out = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):
        rank = min(range(len(loads)), key=lambda r: (loads[r], r))
        out[i] = rank
        loads[rank] += costs[i]
    return out
