"""Wall-clock time of `make demo`'s job (install excluded): experts, then MTT with its evaluation.

Runs the commands of the Makefile's ``demo`` target (read from the Makefile, so the two cannot drift
apart) in a fresh working folder (no experts, no runs), times each, and records the machine, the thread
count and the load average before and after (other jobs on the machine slow the demo down: the table says
how busy it was).

    python -m benchmarks.demo_time --write
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import machine, publish
from ddlight.io import load_json

REPO = Path(__file__).resolve().parents[1]
SECTION = "demo_time"


def demo_commands(makefile: Path = REPO / "Makefile") -> dict[str, list[str]]:
    """The ``ddlight`` commands of the Makefile's ``demo`` recipe, named by their config's file name.

    ``$(ENV_PYTHON)`` becomes this interpreter; config paths are made absolute (the stages run elsewhere).
    """
    lines = makefile.read_text().splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if line.startswith("demo:")), len(lines))
    commands = {}
    for line in lines[start:]:
        if not line.startswith("\t"):
            break
        argv = [sys.executable if word == "$(ENV_PYTHON)" else word for word in shlex.split(line)]
        at = argv.index("--config") + 1
        commands[Path(argv[at]).stem] = argv
        argv[at] = str(REPO / argv[at])
    if not commands:
        raise ValueError(f"no commands found in the demo recipe of {makefile}")
    return commands


def run_stage(argv: list[str], workdir: Path) -> float:
    """Seconds the command ``argv`` takes in ``workdir`` (fails loudly if it fails)."""
    began = time.perf_counter()
    subprocess.run(argv, cwd=workdir, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ddlight-demo-") as tmp:
        workdir = Path(tmp)
        commands = demo_commands()
        seconds = {stage: run_stage(argv, workdir) for stage, argv in commands.items()}
        report = load_json(next(workdir.glob("runs/mtt_synthetic/**/evaluation.json")))
    load_after = os.getloadavg()[0]
    row = report["results"][0]
    total = sum(seconds.values())
    lines = [
        "## `make demo`: wall-clock time",
        "",
        f"`python -m benchmarks.demo_time` on {machine()}; load average {load_before:.1f} before, {load_after:.1f} "
        "after (2 would be this demo alone on 2 cores). The Makefile's demo commands in a fresh folder, "
        "install excluded. Target: ≤ 5 min.",
        "",
        *(f"- `{shlex.join(['python', *argv[1:]]).replace(str(REPO) + '/', '')}`" for argv in commands.values()),
        "",
        "| stage | seconds |",
        "|---|---|",
        *(f"| {stage} | {value:.0f} |" for stage, value in seconds.items()),
        f"| **total** | **{total:.0f} ({total / 60:.1f} min)** |",
        "",
        f"Result of that run: MTT {row['synthetic']['mean']:.2f} ± {row['synthetic']['std']:.2f}, random "
        f"{row['random']['mean']:.2f} ± {row['random']['std']:.2f}, full {row['full']['mean']:.2f} "
        f"({row['full'].get('source', 'trained')}), g = {row.get('g')}.",
    ]
    section = "\n".join(lines)
    publish(SECTION, section, args.write)


if __name__ == "__main__":
    main()
