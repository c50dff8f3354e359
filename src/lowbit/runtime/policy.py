"""Where and in what precision models run: the device and dtype policy as typed configuration.

``RuntimeConfig`` is what a user asks for (``--device auto|cpu|cuda|cuda:N``, ``--dtype
auto|float32|bfloat16|float16``, ``--offload auto|device|cpu``, ``--max-memory``);
:func:`resolve_runtime` checks it against this machine and returns a :class:`Runtime`:

- ``device``: ``auto`` is the first CUDA device when there is one, else the CPU;
- ``dtype`` (compute): ``auto`` is bfloat16 on CUDA and float32 on the CPU. Weights stay in
  their stored dtype on disk; one block at a time is cast to it for compute. Statistics
  (Hessians, activation moments, Fisher) are accumulated in float32 whatever it is;
- ``offload``: where the calibration and evaluation activations between blocks live: on the
  device, or in CPU memory moved to the device one chunk at a time; ``auto`` keeps them on the
  device when they fit in what the memory budget leaves after one block's needs;
- ``memory``: the bytes this process may still use on the device (free GPU memory; on the CPU
  the smaller of the available RAM and what the cgroup memory limit leaves), lowered by
  ``--max-memory``.

No other module picks a device: they take it from the runtime, so the code that runs on a GPU
is the code that CI runs on the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lowbit.errors import ConfigError
from lowbit.runtime.config import Offload, RuntimeConfig
from lowbit.runtime.distributed import SINGLE, World, join_world
from lowbit.runtime.memory import fix_mmap_threshold

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HOST = torch.device("cpu")  # where files are written and offloaded activations kept


@dataclass(frozen=True)
class Runtime:
    """A resolved policy: compute on ``device`` in ``dtype``; ``memory`` bytes were usable there
    when it was resolved (:meth:`headroom` reads it again); ``max_memory``: the user's cap on
    what this process uses there."""

    device: torch.device
    dtype: torch.dtype
    offload: Offload
    memory: int
    memory_source: str
    max_memory: int | None = None
    world: World = SINGLE  # this process's rank under torchrun

    @property
    def on_cpu(self) -> bool:
        return self.device.type == HOST.type

    def headroom(self) -> tuple[int, str]:
        """(bytes this process may still take on the device now, where the figure comes
        from): what is free there (on a CPU, the available RAM or what the cgroup limit
        leaves), lowered to ``max_memory`` less what this process already uses."""
        free, source = _free_memory(self.device)
        if self.max_memory is not None:
            cap = max(self.max_memory - _used(self.device), 0)
            if cap < free:
                return cap, "--max-memory less what this process uses"
        return free, source

    def activations_device(self, nbytes: int, reserved: int) -> torch.device:
        """Where ``nbytes`` of activations live when ``reserved`` bytes go to one block."""
        if self.offload is Offload.CPU:
            return HOST
        if self.offload is Offload.DEVICE or self.on_cpu:
            return self.device
        return self.device if nbytes + reserved <= self.headroom()[0] else HOST

    def describe(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "device_name": device_name(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "offload": self.offload.value,
            "memory_bytes": self.memory,
            "memory_source": self.memory_source,
            "threads": torch.get_num_threads(),  # CPU threads (a Ray worker: one per slot)
            **({"world": self.world.describe()} if self.world.distributed else {}),
        }


def resolve_runtime(cfg: RuntimeConfig | None = None) -> Runtime:
    """The runtime for ``cfg`` on this machine; a device or dtype it cannot run is an error."""
    cfg = cfg or RuntimeConfig()
    fix_mmap_threshold()  # freed activations and weights go back to the OS (runtime/memory.py)
    device = _device(cfg.device)
    world = join_world(device.type == "cuda")
    if world.distributed and device.type == "cuda" and cfg.device in ("auto", "cuda"):
        device = torch.device("cuda", world.local_rank)  # one GPU per rank of this node
    dtype = _DTYPES[cfg.dtype] if cfg.dtype != "auto" else _auto_dtype(device)
    _check_dtype(device, dtype)
    memory, source = _free_memory(device)
    if cfg.max_memory is not None and cfg.max_memory < memory:
        memory, source = cfg.max_memory, "--max-memory"
    return Runtime(device, dtype, cfg.offload, memory, source, cfg.max_memory, world)


def _device(name: str) -> torch.device:
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return HOST
    if not torch.cuda.is_available():
        raise ConfigError(
            f"--device {name}: this machine has no CUDA device (torch {torch.__version__}, "
            f"built {'with' if torch.version.cuda else 'without'} CUDA); use --device cpu, or "
            "install a CUDA build of torch (LOWBIT_TORCH) on a GPU machine"
        )
    index = int(name.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(
            f"--device {name}: this machine has {count} CUDA device(s) (cuda:0 … "
            f"cuda:{count - 1}); choose one of them"
        )
    return torch.device("cuda", index)


def _auto_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else torch.float32


def _check_dtype(device: torch.device, dtype: torch.dtype) -> None:
    """Run the operations a decoder needs once in ``dtype`` on ``device``."""
    name = str(dtype).removeprefix("torch.")
    if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"--dtype bfloat16: {device_name(device)} cannot compute in bfloat16; use --dtype "
            "float16 or float32"
        )
    try:
        x = torch.ones(4, 4, device=device, dtype=dtype)
        torch.nn.functional.scaled_dot_product_attention(
            x[None, None], x[None, None], x[None, None], is_causal=True
        )
        torch.softmax(x @ x, dim=-1)
    except (RuntimeError, NotImplementedError) as exc:
        raise ConfigError(
            f"--dtype {name} cannot run on {device_name(device)} ({exc}); use --dtype float32"
        ) from exc


def is_gpu(device: torch.device) -> bool:
    """Whether ``device`` is a GPU (work is queued, so timings need :func:`synchronize`)."""
    return device.type == "cuda"


def synchronize(device: torch.device) -> None:
    """Wait until the work queued on ``device`` is done (nothing to wait for on the CPU), so
    that wall-clock timings measure the work rather than its launch."""
    if is_gpu(device):
        torch.cuda.synchronize(device)


def total_memory(device: torch.device) -> int:
    """Bytes of memory ``device`` has in all (the GPU's, or the machine's RAM)."""
    if is_gpu(device):
        return int(torch.cuda.get_device_properties(device).total_memory)
    import psutil

    return int(psutil.virtual_memory().total)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores)"


def _free_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free memory of {device_name(device)}"
    import psutil

    available = int(psutil.virtual_memory().available)
    cgroup = cgroup_headroom()
    if cgroup is not None and cgroup < available:
        return cgroup, "cgroup memory limit less current usage"
    return available, "available RAM"


def _used(device: torch.device) -> int:
    """Bytes this process holds on ``device`` (resident memory on the CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    import psutil

    return int(psutil.Process().memory_info().rss)


_CGROUPS = (  # (root, is this hierarchy's line, limit file, usage file): v2, then v1
    (Path("/sys/fs/cgroup"), lambda c: c == "", "memory.max", "memory.current"),
    (
        Path("/sys/fs/cgroup/memory"),
        lambda c: "memory" in c.split(","),
        "memory.limit_in_bytes",
        "memory.usage_in_bytes",
    ),
)


def cgroup_headroom() -> int | None:
    """Bytes the cgroup memory limit of this process leaves (None without a limit)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for root, mine, limit_name, usage_name in _CGROUPS:
        for line in lines:
            _, controllers, rel = line.split(":", 2)
            if not mine(controllers):
                continue
            for base in (root / rel.lstrip("/"), root):
                try:
                    raw = (base / limit_name).read_text().strip()
                    usage = int((base / usage_name).read_text().strip())
                except (OSError, ValueError):
                    continue
                if raw == "max" or int(raw) >= 1 << 60:
                    break
                return max(int(raw) - usage, 0)
    return None


def cpu_threads() -> int:
    """Torch's CPU thread count in this process: what work handed to other processes (Ray
    trials, sensitivity shards) is told to run with, since GPTQ's solves and long sums round
    differently at another count (issue 17)."""
    return torch.get_num_threads()


@contextmanager
def using_cpu_threads(n: int) -> Iterator[None]:
    """Torch runs with ``n`` CPU threads inside the block (a Ray worker would otherwise run one
    per CPU slot); the previous count is restored after it."""
    if n < 1:
        raise ConfigError(f"a CPU thread count is at least 1, got {n}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
