"""Downstream studies of one distilled set: class-incremental learning and the architecture-search proxy.

Runs ``python -m ddlight.downstream.continual`` and ``python -m ddlight.downstream.nas`` on the set with
their configs (real settings; default: ``configs/continual_synthetic.yaml`` and
``configs/nas_synthetic.yaml``) and writes both tables into BENCHMARKS.md, in the section
``downstream_<name>``, with the command, the machine, its threads and load, and the wall time.

    python -m benchmarks.downstream --name mtt_ipc10 \\
        --synset runs/quality/synthetic/mtt_ipc10_seed0/lightning_logs/version_0/distilled
    python -m benchmarks.downstream --name rfad_ipc10 \\
        --synset runs/quality/synthetic/rfad_ipc10_seed0/lightning_logs/version_0/distilled

``--continual-arg`` / ``--nas-arg`` pass an option to one study (e.g. ``--nas-arg=--repeats=5``). The
reports go to ``--out/<name>/`` (``continual.json`` / ``nas.json`` with ``.md`` and ``.png``); a study
whose JSON is already there is not run again, so an interrupted benchmark resumes (delete the folder to
rerun it).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.report import BENCHMARKS, machine, write_section
from ddlight.downstream import continual, nas
from ddlight.io import load_json

REPO = Path(__file__).resolve().parents[1]


def run_study(main: Callable[[list[str]], Any], stem: str, args: list[str], out: Path) -> float | None:
    """Run one study into ``out`` unless its report is there; returns the seconds it took (None: reused)."""
    if (out / f"{stem}.json").is_file():
        return None
    start = time.perf_counter()
    main([*args, "--out", str(out)])
    return time.perf_counter() - start


def section(name: str, argv: Sequence[str], out: Path, seconds: dict[str, float | None], loads: list[float]) -> str:
    """The BENCHMARKS.md section: command, set, machine and load, then each study's Markdown."""
    report = load_json(out / "continual.json")
    timing = ", ".join(f"{study} {'reused' if s is None else f'{s:.0f} s'}" for study, s in seconds.items())
    return "\n".join([
        f"### Downstream studies: {name}",
        "",
        f"`python -m benchmarks.downstream {shlex.join(argv)}` ({report['method']} set of {report['ipc']} per class, "
        f"{report['dataset']}); wall time: {timing}.",
        f"Machine: {machine()}; 1-minute load average {loads[0]:.1f} at the start, {loads[1]:.1f} at the end.",
        "",
        "#### Class-incremental learning (`python -m ddlight.downstream.continual`)",
        "",
        (out / "continual.md").read_text().rstrip(),
        "",
        "#### Architecture-search proxy (`python -m ddlight.downstream.nas`)",
        "",
        (out / "nas.md").read_text().rstrip(),
    ])


def main(argv: Sequence[str] | None = None) -> str:
    """Run both studies on ``--synset`` and write their section; returns the section."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synset", type=Path, required=True, help="distilled set folder")
    parser.add_argument("--name", default="synthetic", help="section name and output folder")
    parser.add_argument("--continual-config", type=Path, default=REPO / "configs/continual_synthetic.yaml")
    parser.add_argument("--nas-config", type=Path, default=REPO / "configs/nas_synthetic.yaml")
    parser.add_argument("--continual-arg", action="append", default=[], dest="continual_args",
                        help="an extra option of the continual-learning study, e.g. --continual-arg=--repeats=3")
    parser.add_argument("--nas-arg", action="append", default=[], dest="nas_args",
                        help="an extra option of the architecture-search study, e.g. --nas-arg=--epochs=50")
    parser.add_argument("--out", type=Path, default=Path("runs/downstream"))
    parser.add_argument("--benchmarks", type=Path, default=BENCHMARKS, help="the Markdown file the section goes to")
    args = parser.parse_args(argv)
    out = args.out / args.name
    loads = [os.getloadavg()[0]]
    studies = {
        "continual": (continual.main, args.continual_config, args.continual_args),
        "nas": (nas.main, args.nas_config, args.nas_args),
    }
    seconds = {
        stem: run_study(study, stem, ["--config", str(config), "--synset", str(args.synset), *extra], out)
        for stem, (study, config, extra) in studies.items()
    }
    loads.append(os.getloadavg()[0])
    text = section(args.name, argv, out, seconds, loads)
    write_section(f"downstream_{args.name}", text, args.benchmarks)
    print(text)
    return text


if __name__ == "__main__":
    main()
