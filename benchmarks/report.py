"""Shared by the benchmark scripts: a one-line machine description and section-wise BENCHMARKS.md updates."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch

from ddlight.io import atomic_write

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
T = TypeVar("T")
S = TypeVar("S")


def machine(device: torch.device | str = "cpu") -> str:
    """CPU model, core count, torch version and threads (and the GPU when ``device`` is CUDA)."""
    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    device = torch.device(device)
    if device.type == "cuda":
        text += f"; GPU {torch.cuda.get_device_name(device)}"
    return text


def write_section(name: str, section: str, path: Path = BENCHMARKS) -> None:
    """Replace (or append) the section delimited by ``<!-- name:start -->``/``<!-- name:end -->``, atomically."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{section.rstrip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def publish(name: str, section: str, write: bool) -> None:
    """Print ``section`` and, when ``write``, make it the ``name`` section of BENCHMARKS.md."""
    print(section)
    if write:
        write_section(name, section)


def interleaved(run: Callable[[S], T], rounds: int, settings: Sequence[S] = (True, False)) -> dict[S, list[T]]:
    """``rounds`` results of ``run(setting)`` for every setting, rotating which goes first each round.

    Load from other jobs on the machine then hits every setting alike; each result is printed as it comes.
    """
    results: dict[S, list[T]] = {setting: [] for setting in settings}
    for r in range(rounds):
        shift = r % len(settings)
        for setting in (*settings[shift:], *settings[:shift]):
            results[setting].append(run(setting))
            print(f"round {r}, {setting}: {results[setting][-1]}", flush=True)
    return results
