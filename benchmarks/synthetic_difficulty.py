"""How hard is SyntheticSounds? Full training set vs random real subsets, with the evaluation protocol.

The embedded default dataset must leave room for distillation: a ConvNet trained on the full training
split should be accurate, while a random subset of 1 or 10 clips per class should be clearly worse.
This script measures both with :func:`ddlight.evaluation.protocol.evaluate` (the protocol every result of
ddlight uses: fresh networks, last epoch, mean ± std over repeats) on the data of
``configs/data/synthetic.yaml`` and writes the table into BENCHMARKS.md.

Run: ``python -m benchmarks.synthetic_difficulty [--repeats 3]``.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.report import machine, write_section
from ddlight.data.synthetic import SyntheticSounds
from ddlight.evaluation.coresets import random_subset
from ddlight.evaluation.protocol import evaluate
from ddlight.features import FeatureConfig
from ddlight.recipe import TrainRecipe

CONVNET = {"convnet": {"width": 64, "depth": 3, "norm": "instance"}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full-epochs", type=int, default=40)
    parser.add_argument("--subset-epochs", type=int, default=300)
    args = parser.parse_args(argv)
    data = SyntheticSounds(train_per_class=100, features=FeatureConfig(n_fft=1024, hop_length=512))
    data.setup()
    train_x, train_y = data.split_features("train")
    test_x, test_y = data.split_features("test")
    rows = []
    full = evaluate(train_x, train_y, test_x, test_y, TrainRecipe(epochs=args.full_epochs, lr=0.01, batch_size=64),
                    repeats=args.repeats, network_options=CONVNET, description="full")
    rows.append((f"full training split ({len(train_y)} clips)", full["convnet"]))
    for ipc in (1, 10):
        runs = []
        for seed in range(args.repeats):
            idx = random_subset(train_y, ipc, torch.Generator().manual_seed(seed))
            result = evaluate(train_x[idx], train_y[idx], test_x, test_y,
                              TrainRecipe(epochs=args.subset_epochs, lr=0.01, seed=seed), repeats=1,
                              network_options=CONVNET, description=f"random ipc {ipc}")
            runs.extend(result["convnet"]["runs"])
        mean = sum(runs) / len(runs)
        std = (sum((r - mean) ** 2 for r in runs) / len(runs)) ** 0.5
        rows.append((f"random subset, {ipc} per class", {"mean": mean, "std": std}))
    lines = [
        "## SyntheticSounds difficulty",
        "",
        f"`python -m benchmarks.synthetic_difficulty --repeats {args.repeats}`: ConvNet (width 64, depth 3, "
        f"instance norm) trained with the evaluation protocol (SGD momentum 0.9, lr 0.01 ×0.1 at half, "
        f"SpecAugment; {args.full_epochs} epochs on the full split, {args.subset_epochs} on subsets; a new "
        f"random subset per repeat), tested on the {len(test_y)} test clips of `configs/data/synthetic.yaml` "
        f"({data.num_classes} classes, FD-MFCC {tuple(data.feature_shape)}). Mean ± std over {args.repeats} "
        "repeats, last epoch.",
        "",
        "| training data | test accuracy (%) |",
        "|---|---|",
        *(f"| {name} | {r['mean']:.1f} ± {r['std']:.1f} |" for name, r in rows),
        "",
        f"Machine: {machine()}.",
    ]
    write_section("synthetic", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
