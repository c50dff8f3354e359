"""Keep freed activation memory from piling up in the C heap.

The staged runner frees many mid-sized tensors from several threads. glibc's allocator raises
its mmap threshold after the first such free and then keeps later tensors in per-thread heap
arenas that it rarely returns to the OS, which measured 4.4 GB peak RSS instead of about 1.5 GB
on the built-in model with 128 windows. A fixed threshold keeps every tensor of 1 MiB or more in
its own mapping, returned to the OS when freed. A no-op on other C libraries.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_MMAP_THRESHOLD = -3
_THRESHOLD_BYTES = 1 << 20


@functools.cache
def fix_mmap_threshold() -> bool:
    """Set glibc's mmap threshold to 1 MiB (once); True where it took effect."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return None if name is None else ctypes.CDLL(name)
    except OSError:
        return None


def trim() -> None:
    """Return the C heap's free pages to the OS (glibc's ``malloc_trim``; a no-op elsewhere).
    Called after each block: small tensors freed there otherwise stay in the heap, about 50 MiB
    a block measured on a 1.6 B model on the CPU."""
    libc = _libc()
    trim_fn = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim_fn is not None:
        trim_fn(0)
