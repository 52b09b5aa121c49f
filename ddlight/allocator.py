"""CPU memory: how much the machine has, and keeping freed memory in the process for reuse.

Why keep freed memory: glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB, adjusted as the process
runs) with a fresh ``mmap`` and returns it to the system on ``free``; the heap is also trimmed whenever
its free top exceeds the trim threshold. Training a network on a CPU allocates and frees activations of
tens of MiB in every step (a width-64 ConvNet's first layer at batch 256 on 3×20×32 features: 42 MiB per
tensor), so every step faults in and zero-fills its memory anew: measured here, an evaluation step spent
about 45 % of its time in that (BENCHMARKS.md, "CPU allocator"). Raising both thresholds lets freed
blocks be reused, which is what the allocators PyTorch recommends for CPU work (jemalloc, tcmalloc) do.
The cost: memory freed by the process is kept for its reuse instead of being returned to the system.

The ``ddlight`` commands call :func:`keep_freed_memory` at their start; scripts that import ddlight may
call it themselves. It changes nothing when the C library is not glibc, when ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_`` or ``LD_PRELOAD`` are set (the user chose an allocator policy), or when
``DDLIGHT_KEEP_FREED_MEMORY=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

#: ``mallopt`` parameters of glibc's ``<malloc.h>``.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Both thresholds are C ``int``s: the largest value (2 GiB - 1) leaves only bigger blocks to ``mmap``.
THRESHOLD = 2**31 - 1
#: Environment variables by which a user already chose an allocator policy.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (see the module docstring).

    Returns:
        Whether the thresholds were changed.
    """
    if os.environ.get("DDLIGHT_KEEP_FREED_MEMORY", "1") == "0" or any(os.environ.get(k) for k in USER_SETTINGS):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD))


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine (``None`` where the operating system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
