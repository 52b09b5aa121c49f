"""Training on the CPU with freed memory kept for reuse (``keep_freed_memory``) against glibc's defaults.

Each cell runs :func:`ddlight.evaluation.evaluate` (the evaluation protocol: SGD, momentum 0.9, batch 256,
SpecAugment, lr 0.01) on SyntheticSounds features (3×20×32, ``configs/data/synthetic.yaml``) for
``--epochs`` epochs, in a fresh process with ``DDLIGHT_KEEP_FREED_MEMORY`` 1 or 0, the two interleaved
(alternating who goes first). Cells: the evaluation of a distilled-set-sized set (10 clips per class,
110 clips; 5 ConvNets of width 128, issue #14's target) and the full-split reference of ``g`` (the whole
training split, 1100 clips; one width-64 ConvNet, as ``make demo`` trains it). The seeds are equal, so
the accuracies must be too: the setting changes where memory comes from, not what is computed.

    python -m benchmarks.allocator --epochs 20 --rounds 2 --write
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from functools import partial
from typing import Any

from benchmarks.report import interleaved, machine, publish
from ddlight.allocator import USER_SETTINGS

SECTION = "allocator"
#: Trains one network in a fresh process and prints its seconds and test accuracy as JSON.
WORKER = """
import json, sys, time
import torch
from ddlight.allocator import keep_freed_memory
from ddlight.data.synthetic import SyntheticSounds
from ddlight.evaluation import evaluate
from ddlight.features import FeatureConfig
from ddlight.recipe import TrainRecipe
kept = keep_freed_memory()
epochs, size, precision, threads, repeats, width = *sys.argv[1:4], *map(int, sys.argv[4:])
torch.set_num_threads(threads)
features = FeatureConfig(name="fdmfcc", n_fft=1024, hop_length=512, n_mels=40, n_mfcc=20)
dm = SyntheticSounds(train_per_class=100, val_per_class=20, test_per_class=60, features=features)
dm.setup("fit")
x, y = dm.split_features("train")
if size != "full":
    x, y = x.view(11, 100, *x.shape[1:])[:, :int(size)].flatten(0, 1), y.view(11, 100)[:, :int(size)].flatten()
began = time.perf_counter()
recipe = TrainRecipe(epochs=int(epochs), lr=0.01, precision=precision)
result = evaluate(x, y, *dm.split_features("test"), recipe, ["convnet"], repeats,
                  {"convnet": {"width": width}}, show_progress=False)
seconds = time.perf_counter() - began
print(json.dumps({"kept": kept, "seconds": seconds, "accuracy": result["convnet"]["mean"]}))
"""

#: The timed evaluations: training-set size (clips per class or ``full``) -> (label, repeats, width).
CELLS = {
    "10": ("a distilled set's evaluation: 10 per class (110 clips), 5 ConvNets of width 128", 5, 128),
    "full": ("the full-split reference: the whole training split (1100 clips), 1 ConvNet of width 64", 1, 64),
}


def train(
    epochs: int,
    size: str,
    threads: int,
    repeats: int,
    width: int,
    keep: bool,
    precision: str = "32-true",
    isa: str | None = None,
) -> dict[str, Any]:
    """Seconds and mean accuracy of one evaluation in a fresh process.

    Args:
        epochs: Training epochs.
        size: Clips per class of the training set (a number), or ``full``: the whole training split.
        threads: Torch threads of the worker.
        repeats: Networks trained.
        width: Their ConvNet width.
        keep: Keep freed memory for reuse (``DDLIGHT_KEEP_FREED_MEMORY``).
        precision: The recipe's ``precision``.
        isa: Cap on the instruction set oneDNN may use (``ONEDNN_MAX_CPU_ISA``, e.g. ``AVX2``), to time
            what a CPU without the newer instructions would do; None: all this CPU has.
    """
    settings = (*USER_SETTINGS, "GLIBC_TUNABLES")
    env = {k: v for k, v in os.environ.items() if k not in settings}
    env["DDLIGHT_KEEP_FREED_MEMORY"] = "1" if keep else "0"
    if isa is not None:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    command = [sys.executable, "-c", WORKER, str(epochs), size, precision, str(threads), str(repeats), str(width)]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["kept"] != keep:
        raise RuntimeError(f"keep_freed_memory() returned {result['kept']} where {keep} was asked")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="runs per cell, interleaved")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = []
    for size, (label, repeats, width) in CELLS.items():
        runs = interleaved(partial(train, args.epochs, size, args.threads, repeats, width), args.rounds)
        kept, default = (statistics.median(run["seconds"] for run in runs[k]) for k in (True, False))
        accuracies = {k: runs[k][0]["accuracy"] for k in (True, False)}
        rows.append(
            f"| {label} | {kept:.1f} | {default:.1f} | **{default / kept:.2f}x** | "
            f"{accuracies[True]:.2f} / {accuracies[False]:.2f} |"
        )
    load_after = os.getloadavg()[0]
    command = "python -m benchmarks.allocator " + " ".join(sys.argv[1:])
    lines = [
        "## CPU allocator: freed memory kept for reuse",
        "",
        f"`{command}` on {machine()}, {args.threads} threads in the workers; 1-minute load average "
        f"{load_before:.1f} before, {load_after:.1f} after. Seconds of `ddlight.evaluation.evaluate` "
        f"({args.epochs} epochs, the evaluation protocol's recipe), in fresh processes with "
        "`DDLIGHT_KEEP_FREED_MEMORY` 1 (what every `ddlight` command does: `ddlight.allocator.keep_freed_memory`) "
        f"and 0 (glibc's defaults), interleaved, median of {args.rounds}.",
        "",
        "| evaluation | kept s | glibc default s | speed-up | mean test accuracy % (kept / default) |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "Same seeds, same accuracy: only where the memory comes from changes. glibc hands every block above "
        "its mmap threshold (≤ 32 MiB) a fresh mapping and returns it on free, so each step faulted its "
        "activations in again (a first-layer activation at batch 256 is 40 MiB).",
    ]
    publish(SECTION, "\n".join(lines), args.write)


if __name__ == "__main__":
    main()
