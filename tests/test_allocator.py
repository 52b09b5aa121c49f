"""keep_freed_memory: freed CPU tensors are reused instead of being faulted in again; users can opt out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ddlight.allocator import USER_SETTINGS, _glibc, keep_freed_memory, physical_memory

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")

#: Allocates and frees a 64 MiB tensor ten times (as training steps do), then counts the minor page
#: faults of ten more such steps.
FAULTS = """
import resource, torch
from ddlight.allocator import keep_freed_memory
print(keep_freed_memory())
for steps in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        x = torch.ones(16 * 2**20)
        del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(**env: str) -> tuple[str, int]:
    settings = (*USER_SETTINGS, "GLIBC_TUNABLES", "DDLIGHT_KEEP_FREED_MEMORY")
    clean = {k: v for k, v in os.environ.items() if k not in settings}
    out = subprocess.run([sys.executable, "-c", FAULTS], env=clean | env, capture_output=True, text=True, check=True)
    changed, faults = out.stdout.split()
    return changed, int(faults)


@pytest.mark.skipif(not _glibc(), reason="glibc's mallopt")
@pytest.mark.skipif(THP.exists() and "[always]" in THP.read_text(), reason="huge pages: 2 MiB faults, not 4 KiB")
def test_freed_tensors_are_reused_without_page_faults() -> None:
    changed, kept = _faults()
    unchanged, returned = _faults(DDLIGHT_KEEP_FREED_MEMORY="0")
    assert (changed, unchanged) == ("True", "False")
    pages = 64 * 2**20 // 4096
    assert returned > 8 * pages  # every allocation faulted its 16k pages in again
    assert kept < pages  # the memory freed by the first steps was reused


def test_a_users_allocator_policy_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert keep_freed_memory() is False
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("DDLIGHT_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False


def test_physical_memory_is_the_lower_of_the_machine_and_its_container(tmp_path: Path, monkeypatch) -> None:
    machine = physical_memory()
    limit = tmp_path / "memory.max"
    limit.write_text("max\n")  # cgroup v2 without a limit
    monkeypatch.setattr("ddlight.allocator.CGROUP_LIMITS", (limit,))
    assert physical_memory() == machine
    limit.write_text(f"{2**30}\n")
    assert physical_memory() == 2**30
