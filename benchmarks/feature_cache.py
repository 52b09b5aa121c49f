"""Expert training with the feature cache against the front end on every batch (``cache_features``).

Runs ``ddlight fit --config configs/expert_synthetic.yaml`` (the first stage of ``make demo``: three
width-64 ConvNets side by side on SyntheticSounds, trajectories recorded) for ``--epochs`` epochs with
``--data.init_args.cache_features`` true and false, interleaved (alternating who goes first) in fresh
folders, and reports the wall-clock seconds of each run, their median ratio and the experts' test
accuracies (the same seeds give the same experts up to float rounding: the cached features are those of
the front end, computed in larger chunks).

    python -m benchmarks.feature_cache --epochs 10 --rounds 2 --write
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from benchmarks.report import interleaved, machine, publish
from ddlight.io import load_json

REPO = Path(__file__).resolve().parents[1]
SECTION = "feature_cache"
CONFIG = "configs/expert_synthetic.yaml"


def run_experts(epochs: int, cache: bool) -> tuple[float, list[float]]:
    """Seconds of one expert run and its experts' test accuracies (%), in a fresh folder."""
    with tempfile.TemporaryDirectory(prefix="ddlight-cache-") as tmp:
        command = [
            sys.executable, "-m", "ddlight", "fit", "--config", str(REPO / CONFIG), f"--trainer.max_epochs={epochs}",
            f"--data.init_args.cache_features={str(cache).lower()}", "--trainer.enable_progress_bar=false",
        ]
        began = time.perf_counter()
        run = subprocess.run(command, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if run.returncode:
            raise RuntimeError(f"{' '.join(command)} failed ({run.returncode}):\n{run.stderr[-3000:]}")
        seconds = time.perf_counter() - began
        manifest = load_json(Path(tmp) / "experts" / "synthetic" / "manifest.json")
    return seconds, [expert["test_accuracy"] for expert in manifest["experts"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="expert epochs per run (the config: 40)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per setting, interleaved")
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    runs = interleaved(partial(run_experts, args.epochs), args.rounds)  # (seconds, accuracies) per run
    seconds = {cache: [spent for spent, _ in runs[cache]] for cache in runs}
    accuracies = {cache: runs[cache][-1][1] for cache in runs}
    load_after = os.getloadavg()[0]
    cached, per_batch = (statistics.median(seconds[c]) for c in (True, False))
    command = "python -m benchmarks.feature_cache " + " ".join(sys.argv[1:])
    lines = [
        "## Feature cache: expert training",
        "",
        f"`{command}` on {machine()}; 1-minute load average {load_before:.1f} before, {load_after:.1f} after. "
        f"Wall-clock seconds of `ddlight fit --config {CONFIG} --trainer.max_epochs {args.epochs}` (three "
        "width-64 ConvNets side by side, trajectories recorded; process start and data synthesis included) with "
        "the DataModule's `cache_features` on (the default: FD-MFCC of each split once) and off (the front end "
        f"on every batch), interleaved, median of {args.rounds}.",
        "",
        "| cache_features | seconds (each run) | median | experts' test accuracy % |",
        "|---|---|---|---|",
        *(
            f"| {str(c).lower()} | {', '.join(f'{s:.1f}' for s in seconds[c])} | {statistics.median(seconds[c]):.1f} | "
            f"{', '.join(f'{a:.2f}' for a in accuracies[c])} |"
            for c in (True, False)
        ),
        "",
        f"Speed-up of the cache: **{per_batch / cached:.2f}x**.",
    ]
    publish(SECTION, "\n".join(lines), args.write)


if __name__ == "__main__":
    main()
