"""The execution core: the device and dtype policy, and the one block runner every stage uses.

``RuntimeConfig`` (no torch) is imported eagerly; ``Runtime``, ``resolve_runtime`` and
``cgroup_headroom`` load torch and are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lowbit.runtime.config import Offload, RuntimeConfig

if TYPE_CHECKING:
    from lowbit.runtime.policy import Runtime, cgroup_headroom, resolve_runtime

__all__ = ["Offload", "Runtime", "RuntimeConfig", "cgroup_headroom", "resolve_runtime"]


def __getattr__(name: str) -> Any:
    if name in ("Runtime", "resolve_runtime", "cgroup_headroom"):
        from lowbit.runtime import policy

        return getattr(policy, name)
    raise AttributeError(name)
