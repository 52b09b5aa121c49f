"""Seconds to evaluate a distilled-set-sized set: the repeats trained batched (vmap) vs one by one.

The set is SyntheticSounds-shaped: 11 classes x ``--ipc`` real clips (110 at ipc 10) of FD-MFCC features
``3 x 20 x 32`` (1 s at 16 kHz, hop 512: ``configs/data/synthetic.yaml``), tested on 60 real clips per
class. One evaluation is :func:`ddlight.evaluation.evaluate`: ``--repeats`` ConvNets trained with the
protocol's recipe (SGD, momentum 0.9, lr 0.01 ×0.1 at half the epochs, batch 256, SpecAugment) and
tested. The two paths run interleaved (batched, sequential, batched, ...) in one process so that load
from other jobs hits both alike; the same seeds give the same networks up to float rounding, so the
accuracies must agree. The result replaces the ``eval_batched`` section of ``BENCHMARKS.md``.

    python -m benchmarks.eval_batched --epochs 100 --rounds 2 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace

import torch

from benchmarks.report import BENCHMARKS, machine, write_section
from ddlight.allocator import keep_freed_memory
from ddlight.data.synthetic import SyntheticSounds
from ddlight.evaluation import evaluate
from ddlight.features import FeatureConfig
from ddlight.recipe import TrainRecipe

SECTION = "eval_batched"  # BENCHMARKS.md markers <!-- eval_batched:start --> ... <!-- eval_batched:end -->
#: The front end of configs/data/synthetic.yaml: FD-MFCC 3 x 20 x 32 per 1 s clip.
FEATURES = FeatureConfig(name="fdmfcc", n_fft=1024, hop_length=512, n_mels=40, n_mfcc=20)


def timed_evaluation(
    data: tuple[torch.Tensor, ...], recipe: TrainRecipe, repeats: int, width: int
) -> tuple[float, list[float]]:
    """Wall-clock seconds of one evaluation and its accuracies (%) per repeat."""
    start = time.perf_counter()
    result = evaluate(*data, recipe, ["convnet"], repeats, {"convnet": {"width": width}})
    return time.perf_counter() - start, result["convnet"]["runs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ipc", type=int, default=10, help="training clips per class (the set: 11 x ipc)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5, help="networks per evaluation")
    parser.add_argument("--width", type=int, default=128, help="ConvNet channels")
    parser.add_argument("--rounds", type=int, default=2, help="timed evaluations per path, interleaved")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    keep_freed_memory()  # as the ddlight commands run
    torch.set_num_threads(args.threads)
    dm = SyntheticSounds(train_per_class=args.ipc, val_per_class=1, test_per_class=60, features=FEATURES)
    dm.setup("fit")
    data = (*dm.split_features("train"), *dm.split_features("test"))
    recipe = TrainRecipe(epochs=args.epochs, lr=0.01)
    for batched in (True, False):  # warm-up: first-call costs (allocator, oneDNN primitives) stay untimed
        timed_evaluation(data, replace(recipe, epochs=1, batched=batched), args.repeats, args.width)
    load_start = os.getloadavg()[0]  # other jobs on the machine inflate the times: recorded with them
    seconds: dict[bool, list[float]] = {True: [], False: []}
    runs: dict[bool, list[float]] = {}
    for r in range(args.rounds):
        for batched in (True, False) if r % 2 == 0 else (False, True):  # who goes first alternates
            spent, runs[batched] = timed_evaluation(
                data, replace(recipe, batched=batched), args.repeats, args.width
            )
            seconds[batched].append(spent)
            print(f"round {r} batched={batched}: {spent:.1f} s, accuracies {runs[batched]}", flush=True)
    load_end = os.getloadavg()[0]
    batched, sequential = (statistics.median(seconds[b]) for b in (True, False))
    gap = max(abs(a - b) for a, b in zip(runs[True], runs[False]))
    command = "python -m benchmarks.eval_batched " + " ".join(sys.argv[1:])
    section = "\n".join([
        "## Evaluation: repeats batched (vmap) vs one by one",
        "",
        f"Seconds of one `ddlight.evaluation.evaluate` on a SyntheticSounds-shaped set ({len(data[1])} clips, "
        f"features {'x'.join(map(str, data[0].shape[1:]))}, tested on {len(data[3])}): {args.repeats} ConvNets "
        f"(width {args.width}) trained {args.epochs} epochs with the protocol's recipe (lr 0.01, batch 256, "
        f"SpecAugment), `recipe.batched` true vs false, interleaved (alternating who goes first), median of {args.rounds} rounds. `{command}`",
        "",
        f"Machine: {machine()}; 1-minute load average {load_start:.1f} at the start and {load_end:.1f} at the end "
        "(a shared machine: other jobs ran alongside).",
        "",
        "| path | seconds (each round) | median | accuracy % (mean ± std over repeats) |",
        "|---|---|---|---|",
        *(
            f"| {'batched' if b else 'sequential'} | {', '.join(f'{s:.1f}' for s in seconds[b])} | "
            f"{statistics.median(seconds[b]):.1f} | "
            f"{statistics.fmean(runs[b]):.2f} ± {statistics.pstdev(runs[b]):.2f} |"
            for b in (True, False)
        ),
        "",
        f"Speed-up of batched over sequential: **{sequential / batched:.2f}x**. Largest difference between the "
        f"accuracies of the same repeat on the two paths: {gap:.2f} points (same seeds: same networks up to float "
        "rounding).",
    ])
    write_section(SECTION, section, BENCHMARKS)
    print(section)
    print(f"wrote the {SECTION} section of {BENCHMARKS}")


if __name__ == "__main__":
    main()
