"""The execution core: the device and dtype policy, and the one block runner every stage uses.

``RuntimeConfig`` (no torch) is imported eagerly; ``Runtime``, ``resolve_runtime``,
``cgroup_headroom``, the device helpers (``device_name``, ``is_gpu``, ``synchronize``,
``total_memory``) and the CPU thread count (``cpu_threads``, ``using_cpu_threads``) load torch
and are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lowbit.runtime.config import Offload, RuntimeConfig

if TYPE_CHECKING:
    from lowbit.runtime.policy import (
        HOST,
        Runtime,
        cgroup_headroom,
        cpu_threads,
        device_name,
        is_gpu,
        resolve_runtime,
        synchronize,
        total_memory,
        using_cpu_threads,
    )

__all__ = [
    "HOST",
    "Offload",
    "Runtime",
    "RuntimeConfig",
    "cgroup_headroom",
    "cpu_threads",
    "device_name",
    "is_gpu",
    "resolve_runtime",
    "synchronize",
    "total_memory",
    "using_cpu_threads",
]
_POLICY = frozenset(__all__) - {"Offload", "RuntimeConfig"}


def __getattr__(name: str) -> Any:
    if name in _POLICY:
        from lowbit.runtime import policy

        return getattr(policy, name)
    raise AttributeError(name)
