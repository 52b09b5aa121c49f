"""Quality table: distilled sets against random / herding / k-center subsets and the full training split.

For each dataset, method (MTT, RFAD), ipc and seed, the shipped ``configs/<method>_<dataset>.yaml`` (with
its ``configs/<method>_<dataset>_ipc<ipc>.yaml`` overlay where one exists) is run through the ``ddlight``
command exactly as a user would (experts first), with one shared evaluator: ``--epochs`` epochs,
``--repeats`` networks per seed, SpecAugment, a width-64 ConvNet, at the set's learning rate ``auto``
(MTT's learned ``syn_lr``, 0.01 for RFAD). The real-subset baselines and the full training split are
evaluated in this process with the same networks, epochs and augmentation at lr 0.01 (the protocol's
rate for sets without a learned one; the one difference from the distilled sets' recipe), once per ipc
and seed, herding and k-center in the embedding of the final expert. The table is
:mod:`ddlight.evaluation.comparison`'s, with the baselines of each run's seed added to its report: each cell
is the mean ± std over seeds of the per-seed mean accuracy, and ``g = (distilled - random) / (full - random)``
of the means; it is also written to ``comparison.json`` / ``.md`` / ``.png`` in the work folder.

Finished runs and baselines under ``--out`` are reused, so an interrupted table resumes. Tune with
``--split val``; the table in BENCHMARKS.md is measured on the test split.

    python -m benchmarks.quality --dataset synthetic
    python -m benchmarks.official_layout --out data/us8k_synthetic --per-class 200
    python -m benchmarks.quality --dataset us8k --configs synthetic --name us8k_layout -- \\
        --data.init_args.root data/us8k_synthetic --data.init_args.duration 1.0 \\
        --data.init_args.features.n_fft 1024 --data.init_args.features.hop_length 512

``--configs synthetic`` runs the methods with the CPU-sized settings of ``configs/<method>_synthetic.yaml``
(and its experts' config) on the UrbanSound8K-layout data; without it the shipped GPU-scale
``configs/<method>_us8k.yaml`` are used.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser

from benchmarks.report import machine, publish
from ddlight.cli import main as ddlight
from ddlight.data.base import AudioDataModule
from ddlight.evaluation import BASELINES, DEFAULT_LR, baseline_indices, evaluate
from ddlight.evaluation.comparison import FULL, STEM, compare, figure, markdown
from ddlight.evaluation.report import read_report, write_study
from ddlight.io import load_json, save_json
from ddlight.recipe import TrainRecipe, embed, final_expert_networks

REPO = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar=false"]
NETWORK = {"convnet": {"width": 64}}


def evaluator_args(split: str, epochs: int, repeats: int, seed: int) -> list[str]:
    """Overrides that make every run's SynsetEvaluator the same (synthetic set only, lr auto, float32)."""
    return [
        "--trainer.callbacks.init_args.architectures=[convnet]", "--trainer.callbacks.init_args.baselines=[]",
        "--trainer.callbacks.init_args.full=false",
        f"--trainer.callbacks.init_args.network_options={json.dumps(NETWORK)}", "--trainer.callbacks.init_args.recipe.lr=auto",
        f"--trainer.callbacks.init_args.recipe.epochs={epochs}",
        "--trainer.callbacks.init_args.recipe.precision=32-true", f"--trainer.callbacks.init_args.repeats={repeats}",
        f"--trainer.callbacks.init_args.eval_split={split}", f"--trainer.callbacks.init_args.recipe.seed={seed}",
    ]


def distill(method: str, dataset: str, out: Path, ipc: int, seed: int, args: argparse.Namespace) -> Path:
    """One distillation run through the CLI (reused when finished); returns the path of its evaluation.json."""
    done = sorted(out.rglob("evaluation.json"))
    if not done:
        # MTT reads the experts; RFAD's own seed draws its random networks and real batches
        extra = [f"--model.init_args.expert_dir={args.out / 'experts'}"] if method == "mtt" else [f"--model.init_args.seed={seed}"]
        overlay = REPO / f"configs/{method}_{args.configs}_ipc{ipc}.yaml"
        configs = ["--config", str(REPO / f"configs/{method}_{args.configs}.yaml")]
        configs += ["--config", str(overlay)] if overlay.is_file() else []
        ddlight([
            "fit", *configs, *data_flags(dataset, args), *QUIET, *extra,
            f"--seed_everything={seed}", f"--model.init_args.ipc={ipc}", f"--trainer.logger.init_args.save_dir={out}",
            *evaluator_args(args.split, args.epochs, args.repeats, seed), *args.method_args.get(method, []),
        ])
        done = sorted(out.rglob("evaluation.json"))
    return done[-1]


def data_flags(dataset: str, args: argparse.Namespace) -> list[str]:
    """The ``--data`` flags of every command: the dataset's config when the method configs are another's."""
    switch = ["--data", str(REPO / f"configs/data/{dataset}.yaml")] if args.configs != dataset else []
    return [*switch, *args.data_args]


def load_data(dataset: str, data_args: list[str]) -> AudioDataModule:
    """The DataModule of ``configs/data/<dataset>.yaml`` with the ``--data.*`` overrides, set up."""
    parser = ArgumentParser()
    parser.add_subclass_arguments(AudioDataModule, "data")
    config = parser.parse_args(["--data", str(REPO / f"configs/data/{dataset}.yaml"), *data_args])
    data = parser.instantiate_classes(config).data
    data.setup("fit")
    return data


def baselines(data: AudioDataModule, ipcs: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """Random / herding / k-center per ipc and seed, and the full training split per seed (cached)."""
    path = args.out / f"baselines_{args.split}.json"
    cache = load_json(path) if path.is_file() else {}
    train_x, train_y = data.split_features("train")
    test_x, test_y = data.split_features(args.split)
    common = {"architectures": ["convnet"], "repeats": args.repeats, "network_options": NETWORK}
    recipe = TrainRecipe(epochs=args.epochs, lr=DEFAULT_LR)
    embeddings = embed(final_expert_networks(args.out / "experts")[1][0], train_x)
    for seed in args.seeds:
        key = f"full/{seed}"
        if key not in cache:
            result = evaluate(train_x, train_y, test_x, test_y, replace(recipe, epochs=args.full_epochs, seed=seed),
                              description="full", **common | {"repeats": 1})
            cache[key] = result["convnet"]["mean"]
            save_json(path, cache)
        for ipc in ipcs:
            for name in ("random", "herding", "kcenter"):
                key = f"{name}/{ipc}/{seed}"
                if key not in cache:
                    idx = baseline_indices(name, train_y, ipc, embeddings, seed)
                    result = evaluate(train_x[idx], train_y[idx], test_x, test_y, replace(recipe, seed=seed),
                                      description=key, **common)
                    cache[key] = result["convnet"]["mean"]
                    save_json(path, cache)
    return cache


def with_baselines(report: dict[str, Any], base: dict[str, Any], full_epochs: int) -> dict[str, Any]:
    """A run's report with the baselines and the full split of its ipc and seed (their means) in its rows.

    Its recipe records how that full split was trained (``full_epochs``, one network per seed).
    """
    ipc, seed = report["ipc"], report["recipe"]["seed"]
    references = {name: {"mean": base[f"{name}/{ipc}/{seed}"]} for name in BASELINES}
    references[FULL] = {"mean": base[f"full/{seed}"]}
    recipe = report["recipe"] | {"full_epochs": full_epochs, "full_repeats": 1}
    return report | {"recipe": recipe, "results": [row | references for row in report["results"]]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic", help="configs/<method>_<dataset>.yaml and configs/data/<dataset>.yaml")
    parser.add_argument("--configs", default=None,
                        help="method and expert configs configs/<method>_<configs>.yaml (default: --dataset), e.g. "
                             "synthetic for CPU-sized runs on another dataset's data")
    parser.add_argument("--name", default=None, help="table name (default: the dataset)")
    parser.add_argument("--methods", nargs="+", default=["mtt", "rfad"])
    parser.add_argument("--ipc", nargs="+", type=int, default=[1, 10])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--split", choices=["val", "test"], default="test", help="val to tune, test for the table")
    parser.add_argument("--epochs", type=int, default=300, help="epochs of every evaluation network")
    parser.add_argument("--full-epochs", type=int, default=300, help="epochs of the full-training-split networks")
    parser.add_argument("--repeats", type=int, default=2, help="evaluation networks per seed")
    parser.add_argument("--mtt-arg", action="append", default=[], help="extra flag for the MTT runs")
    parser.add_argument("--rfad-arg", action="append", default=[], help="extra flag for the RFAD runs")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default runs/quality/<name>)")
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    parser.add_argument("data_args", nargs="*", help="after --: data overrides for every command")
    args = parser.parse_args(argv)
    args.name = args.name or args.dataset
    args.configs = args.configs or args.dataset
    args.out = args.out or Path("runs/quality") / args.name
    args.method_args = {"mtt": args.mtt_arg, "rfad": args.rfad_arg}
    started = time.time()
    if not (args.out / "experts" / "manifest.json").is_file():  # MTT's trajectories, the coresets' embedding
        ddlight(["fit", "--config", str(REPO / f"configs/expert_{args.configs}.yaml"), *data_flags(args.dataset, args),
                 *QUIET,
                 f"--trainer.callbacks.init_args.dirpath={args.out / 'experts'}",
                 f"--trainer.logger.init_args.save_dir={args.out / 'expert_runs'}", "--test_after_fit=false"])
    suffix = "_val" if args.split == "val" else ""
    runs = [
        distill(method, args.dataset, args.out / f"{method}_ipc{ipc}_seed{seed}{suffix}", ipc, seed, args)
        for method in args.methods for ipc in args.ipc for seed in args.seeds
    ]
    base = baselines(load_data(args.dataset, args.data_args), args.ipc, args)
    minutes = (time.time() - started) / 60
    reports = {path: with_baselines(read_report(path), base, args.full_epochs) for path in runs}
    comparison = compare(reports, split=args.split)
    text = markdown(comparison)
    write_study(args.out, STEM, comparison, text, figure(comparison))
    section = (
        f"### Quality: {args.name} ({args.split} split)\n\n"
        f"`python -m benchmarks.quality {' '.join(sys.argv[1:] if argv is None else argv)}`: {machine()}; {minutes:.0f} min wall for what was not "
        f"reused. Accuracy %, mean ± std over seeds {args.seeds} (each seed: the mean of {args.repeats} width-64 ConvNets, "
        f"{args.epochs} epochs, SpecAugment, last epoch; distilled sets at their learned lr (lr auto), real subsets "
        f"and the full split ({args.full_epochs} epochs, one network per seed) at lr {DEFAULT_LR}). "
        f"Targets: g ≥ 0.5 at ipc 1, 0.4 at ipc 10.\n\n{text}\n"
    )
    publish(f"quality_{args.name}_{args.split}", section, args.write)


if __name__ == "__main__":
    main()
