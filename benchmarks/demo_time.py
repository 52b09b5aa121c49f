"""Wall-clock time of `make demo`'s job (install excluded): experts, then MTT with its evaluation.

Runs the two commands of the Makefile's ``demo`` target in a fresh working folder (no experts, no runs),
times each, and records the machine, the thread count and the load average before and after (other
jobs on the machine slow the demo down: the table says how busy it was).

    python -m benchmarks.demo_time --write
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import machine, publish
from ddlight.io import load_json

REPO = Path(__file__).resolve().parents[1]
SECTION = "demo_time"
#: The Makefile's demo target, one command per stage.
STAGES = {"experts": "configs/expert_synthetic.yaml", "mtt + evaluation": "configs/mtt_synthetic.yaml"}


def run_stage(config: str, workdir: Path) -> float:
    """Seconds ``python -m ddlight fit --config <config>`` takes in ``workdir`` (fails loudly if it fails)."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ddlight", "fit", "--config", str(REPO / config)], cwd=workdir, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ddlight-demo-") as tmp:
        workdir = Path(tmp)
        seconds = {stage: run_stage(config, workdir) for stage, config in STAGES.items()}
        report = load_json(next(workdir.glob("runs/mtt_synthetic/**/evaluation.json")))
    load_after = os.getloadavg()[0]
    row = report["results"][0]
    total = sum(seconds.values())
    lines = [
        "## `make demo`: wall-clock time",
        "",
        f"`python -m benchmarks.demo_time` on {machine()}; load average {load_before:.1f} before, {load_after:.1f} "
        "after (2 would be this demo alone on 2 cores). The Makefile's two demo commands in a fresh folder, "
        "install excluded. Target: ≤ 5 min.",
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
