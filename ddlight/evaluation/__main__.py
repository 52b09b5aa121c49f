"""Run the evaluation protocol on a saved distilled set.

    python -m ddlight.evaluation --synset runs/mtt_synthetic/version_0/distilled \\
        --data configs/data/synthetic.yaml [--architectures convnet resnet18] [--repeats 5] [--out DIR]

``python -m ddlight.evaluation --help`` lists every option (the training recipe ``--recipe.epochs``,
``--recipe.lr``, ``--recipe.batched``, ...; baselines, expert_dir, ...).

The real dataset (``--data``: a DataModule YAML with ``class_path``/``init_args``) must be configured as
when distilling; its training split is the pool of the random / herding / k-center baselines and its
test split is where every network is tested. Writes ``evaluation.json`` and ``evaluation.md`` into
``--out`` (default: the run directory that holds the distilled folder) — the same code path as the
:class:`~ddlight.callbacks.SynsetEvaluator` callback. This entry point is a face of the package, like
``ddlight.cli``: it is the one module of :mod:`ddlight.evaluation` that knows about DataModules.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import ArgumentParser

from ddlight.allocator import keep_freed_memory
from ddlight.data.base import AudioDataModule
from ddlight.data.synset import SynsetDataModule
from ddlight.evaluation.report import build_report, markdown_table, write_report
from ddlight.evaluation.suite import BASELINES, budget_ipc, evaluate_synset, protocol_recipe, resolve_recipe
from ddlight.recipe import TrainRecipe


def run(
    synset: str,
    data: AudioDataModule,
    architectures: list[str] | None = None,
    repeats: int = 5,
    recipe: TrainRecipe = TrainRecipe(),
    baselines: list[str] | None = None,
    network_options: dict[str, dict[str, Any]] | None = None,
    expert_dir: str | None = None,
    out: str | None = None,
    device: str = "cuda" if torch.cuda.is_available() else "cpu",
    full: bool = False,
    full_epochs: int | None = None,
    full_repeats: int | None = None,
    eval_split: Literal["test", "val"] = "test",
) -> dict[str, Any]:
    """Evaluate the distilled set in ``synset`` against real baselines and write the report.

    Args:
        synset: Folder of the distilled set (``synset.safetensors`` + ``manifest.json``).
        data: The real DataModule the set was distilled from.
        architectures: Networks to evaluate (default: convnet).
        repeats: Fresh networks per architecture and set.
        recipe: How every network is trained (the same for every set of the report). Its ``lr: auto``
            (the default) is the set's learned step size (MTT's ``syn_lr`` from its manifest), 0.01 for
            sets without one; its seed also picks the random subsets.
        baselines: Real-subset baselines (default: random, herding, kcenter).
        network_options: Constructor options per architecture.
        expert_dir: Expert trajectories for the herding / k-center embedding.
        out: Output folder (default: the parent of ``synset``).
        device: Where to train.
        full: Also train on the whole training split (the reference of the gap closure ``g``).
        full_epochs: Epochs of the full-split networks (default: ``recipe.epochs``; the report records it).
        full_repeats: Networks trained on the full split (default: ``repeats``).
        eval_split: Real split the networks are tested on (``val`` to tune without the test split).

    Returns:
        The report written to ``evaluation.json``.
    """
    synset_dm = SynsetDataModule(synset, real=data)
    synset_dm.setup("fit")
    distilled = synset_dm.synset
    manifest = distilled.manifest
    settings = protocol_recipe(recipe, manifest, repeats, full_epochs, full_repeats) | {"split": eval_split}
    train_x, train_y = data.split_features("train", device=device)
    test_x, test_y = data.split_features(eval_split, device=device)
    results = evaluate_synset(
        distilled.features.to(device), distilled.targets.to(device), train_x, train_y, test_x, test_y,
        budget_ipc(manifest), resolve_recipe(recipe, manifest), architectures=architectures or ["convnet"],
        baselines=list(BASELINES) if baselines is None else baselines, repeats=repeats,
        network_options=network_options, expert_dir=expert_dir, full=full, full_epochs=full_epochs,
        full_repeats=full_repeats,
    )
    report = build_report(
        manifest.get("dataset", data.name), manifest.get("method", "unknown"), budget_ipc(manifest),
        manifest.get("features"), results, settings, manifest["ipc"],
    )
    paths = write_report(Path(out) if out else Path(synset).resolve().parent, report)
    print(markdown_table(report), end="")
    print(f"evaluation written to {paths[0]} and {paths[1]}")
    return report


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Parse the command line (``args``: for tests) and :func:`run` the protocol."""
    keep_freed_memory()
    parser = ArgumentParser(prog="python -m ddlight.evaluation", description=__doc__.split("\n\n")[0])
    parser.add_function_arguments(run, skip={"data", "architectures", "baselines"})
    # a subclass group (not a plain typed argument) so that --data also takes a YAML file
    parser.add_subclass_arguments(AudioDataModule, "data", required=True)
    parser.add_argument("--architectures", nargs="+", default=["convnet"], help="Networks to evaluate.")
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=BASELINES,
                        help="Real-subset baselines (none: the flag without values).")
    init = parser.instantiate(parser.parse_args(args))
    return run(**{name: init[name] for name in inspect.signature(run).parameters})


if __name__ == "__main__":
    main()
