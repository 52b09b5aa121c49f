"""CPU memory: how much this process may use, and keeping the memory it frees for reuse.

Why keep freed memory: glibc's ``malloc`` serves every block above its mmap threshold (32 MiB at most,
adjusted as the process runs) with a fresh ``mmap`` and returns it to the system on ``free``; the heap
is also trimmed whenever its free top exceeds the trim threshold. Training a network on a CPU allocates
and frees activations of tens of MiB in every step (a width-64 ConvNet's first layer at batch 256 on
3×20×32 features: 40 MiB per tensor), so every step faults in and zero-fills its memory anew: measured
here, the evaluation protocol's training ran about 2× slower for it (BENCHMARKS.md, "CPU allocator").
Raising both thresholds lets freed blocks be reused, which is what the allocators PyTorch recommends for
CPU work (jemalloc, tcmalloc) do. The cost: memory the process frees is kept for its own reuse instead
of being returned to the system.

The ``ddlight`` commands call :func:`keep_freed_memory` at their start; scripts that import ddlight may
call it themselves. It changes nothing when the C library is not glibc, when the user chose an
allocator policy (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``LD_PRELOAD`` or
``glibc.malloc`` tunables in ``GLIBC_TUNABLES`` set), or when ``DDLIGHT_KEEP_FREED_MEMORY=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import warnings
from pathlib import Path

#: ``mallopt`` parameters of glibc's ``<malloc.h>``.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Both thresholds are C ``int``s: the largest value (2 GiB - 1) leaves only bigger blocks to ``mmap``.
THRESHOLD = 2**31 - 1
#: Environment variables by which a user already chose an allocator policy.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")
#: Memory limits of the process's container: cgroup v2, then v1 ("max" or a huge number: no limit).
CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def _user_chose_policy() -> bool:
    """Whether the environment already sets glibc's allocator policy (or another allocator)."""
    return any(os.environ.get(k) for k in USER_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")


def _glibc() -> bool:
    """Whether this process runs on glibc (``confstr`` names its version only there)."""
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (AttributeError, ValueError, OSError):
        return False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (see the module docstring).

    Returns:
        Whether both thresholds were changed. A threshold glibc refuses is named in a warning.
    """
    if os.environ.get("DDLIGHT_KEEP_FREED_MEMORY", "1") == "0" or _user_chose_policy() or not _glibc():
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    refused = [name for name, param in (("M_MMAP_THRESHOLD", M_MMAP_THRESHOLD), ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD))
               if not libc.mallopt(param, THRESHOLD)]
    if refused:
        warnings.warn(f"glibc refused mallopt({', '.join(refused)}, {THRESHOLD}): freed CPU memory is not kept for "
                      "reuse, CPU training may run slower", stacklevel=2)
    return not refused


def physical_memory() -> int | None:
    """Bytes of memory this process may use: the machine's, or its container's limit where lower.

    ``None`` where the operating system does not say.
    """
    try:
        limits = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    except (AttributeError, ValueError, OSError):
        limits = []
    for path in CGROUP_LIMITS:
        try:
            limits.append(int(path.read_text().strip()))
        except (OSError, ValueError):  # absent, unreadable or "max"
            continue
    return min(limits) if limits else None
