"""Where a sweep's trials run: Ray tasks (a local Ray, or an existing cluster), or this
process one after another (the baseline, and tests of the store's logic).

An executor takes jobs ``(hash, configuration)`` and yields ``(hash, result or error)`` as
trials finish, in any order; the driver records each in the store at once.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowbit.errors import ConfigError
from lowbit.sweep.grid import TrialConfig

Job = tuple[str, TrialConfig]
TrialFn = Callable[[str, TrialConfig, Path], dict[str, Any]]
Finished = tuple[str, "dict[str, Any] | BaseException"]


@dataclass(frozen=True)
class LocalExecutor:
    """Every trial in this process, in order."""

    trial: TrialFn

    def prepare(self) -> None:
        """Nothing to start."""

    def run(self, jobs: Sequence[Job], artefacts: Path) -> Iterator[Finished]:
        for digest, config in jobs:
            try:
                result: dict[str, Any] | BaseException = self.trial(digest, config, artefacts)
            except Exception as exc:  # recorded as the trial's failure; the sweep goes on
                result = exc
            yield digest, result


def check_reachable(address: str, timeout: float = 3.0) -> None:
    """Refuse quickly an ``--address`` (``host:port`` or ``ray://host:port``) with nothing
    listening, instead of Ray's long connection retries."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r}: expected HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(
            f"--address {address}: no Ray cluster reachable ({exc}); start one with "
            "`ray start --head` there, or omit --address to start a local Ray"
        ) from None


@dataclass(frozen=True)
class RayExecutor:
    """Each trial a Ray task: one GPU per trial where the cluster has GPUs, else one CPU;
    at most ``workers`` in flight. Without ``address`` a local Ray is started (``ray.init()``)
    with ``workers`` CPUs; an existing Ray session in this process is reused."""

    trial: TrialFn
    address: str | None = None
    workers: int = 1

    def prepare(self) -> None:
        """Start (or join) Ray: a missing Ray or an unreachable address fails here, before
        the driver touches the store."""
        self._init()

    def _init(self) -> Any:
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "lowbit sweep runs trials on Ray, which is not installed; "
                "pip install 'lowbit[sweep]' (or pass --local to run them in this process)"
            ) from None
        if ray.is_initialized():
            return ray
        env = {k: v for k, v in os.environ.items() if k.startswith("LOWBIT_")}
        if self.address is not None:
            check_reachable(self.address)
            ray.init(address=self.address, runtime_env={"env_vars": env}, log_to_driver=False)
        else:
            # a local Ray's workers inherit this process's environment
            ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False)
        return ray

    def run(self, jobs: Sequence[Job], artefacts: Path) -> Iterator[Finished]:
        ray = self._init()
        gpus = ray.cluster_resources().get("GPU", 0) > 0
        task = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1, max_retries=2)(
            self.trial
        )
        queue = list(jobs)
        flight: dict[Any, str] = {}
        while queue or flight:
            while queue and len(flight) < self.workers:
                digest, config = queue.pop(0)
                flight[task.remote(digest, config, artefacts)] = digest
            done, _ = ray.wait(list(flight), num_returns=1)
            for ref in done:
                digest = flight.pop(ref)
                try:
                    result: dict[str, Any] | BaseException = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    result = exc.cause if isinstance(exc.cause, BaseException) else exc
                except ray.exceptions.RayError as exc:
                    result = exc
                yield digest, result
