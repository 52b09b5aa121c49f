"""Class-incremental learning with a small set as the memory (the protocol of DC, DSA and DM; GDumb style).

    python -m ddlight.downstream.continual --synset runs/.../distilled --data configs/data/synthetic.yaml \\
        [--stages 5] [--memory_per_class K] [--sources synthetic random herding] [--repeats 5] [--out DIR]
    python -m ddlight.downstream.continual --config configs/continual_synthetic.yaml --synset runs/.../distilled

The classes arrive in ``stages`` groups, in a class order drawn per repeat (seed ``seed + r``; 10 classes in
5 stages bring 2 new classes per stage, 11 bring 3, 2, 2, 2, 2). A memory holds ``memory_per_class``
samples (default: the set's ipc) of every class seen so far, taken from each source: the distilled set
(``synthetic``) or real training samples chosen at random, by herding or by k-center (the baselines of the
evaluation protocol; herding / k-center in the embedding of an expert, ``--expert_dir``, or of a quick
ConvNet). After each stage a fresh network is trained on the memory of the seen classes only (GDumb:
nothing else is carried over) and tested on the real split restricted to those classes; its outputs are
the seen classes. Every source, stage and repeat uses the same recipe (``lr auto``: the set's learned
step size, 0.01 without one), and a repeat's networks share their seed. Writes ``continual.json``,
``continual.md`` and ``continual.png`` (accuracy against the classes seen) next to the distilled folder
(or into ``--out``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from jsonargparse import ArgumentParser
from matplotlib.figure import Figure
from torch import Tensor
from tqdm.auto import tqdm

from ddlight.data.base import AudioDataModule
from ddlight.downstream.command import build_parser, publish, run_command
from ddlight.downstream.inputs import (
    SOURCES,
    StudyData,
    check_per_class,
    check_sources,
    load_study_data,
    source_embeddings,
    source_set,
)
from ddlight.evaluation import resolve_lr
from ddlight.evaluation.report import errorbar_figure, mean_std
from ddlight.recipe import Progress, TrainRecipe, accuracy, fit_network, summarize

STUDY = "continual"
#: Memory sources compared by default: the distilled set, a random and a herding memory of real samples.
DEFAULT_SOURCES = ("synthetic", "random", "herding")


def class_stages(num_classes: int, stages: int, seed: int) -> list[list[int]]:
    """A seeded class order cut into ``stages`` consecutive groups (sizes differ by at most one).

    Args:
        num_classes: Number of classes.
        stages: Number of stages.
        seed: Seed of the class order.

    Returns:
        The classes that arrive at each stage; together every class exactly once.

    Raises:
        ValueError: If ``stages`` is not between 1 and ``num_classes``.
    """
    if not 1 <= stages <= num_classes:
        raise ValueError(f"stages must be between 1 and the {num_classes} classes, got {stages}")
    order = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed))
    return [group.tolist() for group in order.tensor_split(stages)]


def restrict_targets(targets: Tensor, seen: Sequence[int]) -> Tensor:
    """Targets over the seen classes only: class ``seen[i]`` becomes ``i``.

    Args:
        targets: Hard labels ``[N]`` (each one of ``seen``) or soft label distributions ``[N, K]``.
        seen: The seen classes, in output order.

    Returns:
        Hard labels in ``0 .. len(seen) - 1``, or the distributions' columns of ``seen``, renormalised.
    """
    seen_t = torch.as_tensor(seen, device=targets.device)
    if targets.dim() == 2:
        kept = targets[:, seen_t].float()
        return kept / kept.sum(1, keepdim=True).clamp_min(1e-12)
    lookup = torch.full((int(max(targets.max(), seen_t.max())) + 1,), -1, dtype=torch.long, device=targets.device)
    lookup[seen_t] = torch.arange(len(seen), device=targets.device)
    return lookup[targets]


def seen_mask(targets: Tensor, seen: Sequence[int]) -> Tensor:
    """Which samples (hard labels, or the argmax of soft ones) belong to the ``seen`` classes."""
    labels = targets if targets.dim() == 1 else targets.argmax(-1)
    return torch.isin(labels, torch.as_tensor(seen, device=labels.device))


def incremental_run(
    data: StudyData,
    memories: dict[str, tuple[Tensor, Tensor]],
    stages: list[list[int]],
    architecture: str,
    network_options: dict[str, Any] | None,
    recipe: dict[str, Any],
    seed: int,
    progress: Progress | None = None,
) -> dict[str, list[float]]:
    """One class order: after each stage a fresh network per source, trained on the seen classes' memory.

    Args:
        data: The real evaluation split (and the set).
        memories: Per source, features and targets of the memory of every class.
        stages: The classes arriving at each stage.
        architecture: Network name.
        network_options: Its constructor options.
        recipe: ``lr``, ``epochs``, ``batch_size`` and ``augment`` of every network.
        seed: Seed of every network of this class order.
        progress: Told every epoch trained (a progress bar's ``update``).

    Returns:
        Per source, the accuracy (%) on the seen classes after each stage.
    """
    accuracies: dict[str, list[float]] = {source: [] for source in memories}
    seen: list[int] = []
    for new in stages:
        seen += new
        test = seen_mask(data.eval_y, seen)
        for source, (x, targets) in memories.items():
            keep = seen_mask(targets, seen)
            network = fit_network(
                x=x[keep], targets=restrict_targets(targets[keep], seen), num_classes=len(seen),
                recipe=TrainRecipe(epochs=recipe["epochs"], lr=recipe["lr"], batch_size=recipe["batch_size"],
                                   augment=recipe["augment"], seed=seed),
                architecture=architecture, network_options=network_options, progress=progress,
            )
            accuracies[source].append(
                accuracy(network=network, x=data.eval_x[test], y=restrict_targets(data.eval_y[test], seen))
            )
    return accuracies


def build_report(
    data: StudyData,
    per_class: int,
    architecture: str,
    network_options: dict[str, Any] | None,
    recipe: dict[str, Any],
    orders: list[list[list[int]]],
    runs: list[dict[str, list[float]]],
) -> dict[str, Any]:
    """The ``continual.json`` document.

    Args:
        data: The set and the real data.
        per_class: Memory samples per seen class.
        architecture: Network trained after each stage.
        network_options: Its constructor options.
        recipe: The training recipe.
        orders: Per repeat, the classes arriving at each stage.
        runs: Per repeat, per source, the accuracy after each stage (:func:`incremental_run`).

    Returns:
        The head of the report, the recipe, the class orders and ``results``: per source, per stage, the
        number of classes seen and ``{"mean", "std", "runs"}`` of the accuracy over the class orders, and
        ``average``, the same of each order's mean over stages (average incremental accuracy).
    """
    sources = list(runs[0])
    seen_counts = [sum(len(group) for group in orders[0][: s + 1]) for s in range(len(orders[0]))]
    results = []
    for source in sources:
        per_stage = [
            {"stage": s + 1, "classes": seen_counts[s], **summarize([run[source][s] for run in runs])}
            for s in range(len(seen_counts))
        ]
        average = summarize([sum(run[source]) / len(run[source]) for run in runs])
        results.append({"source": source, "stages": per_stage, "average": average})
    return {
        "study": STUDY, **data.describe(), "memory_per_class": per_class, "stages": len(seen_counts),
        "architecture": architecture, "network_options": network_options, "recipe": recipe,
        "class_orders": orders, "results": results,
    }


def markdown(report: dict[str, Any]) -> str:
    """One row per memory source, one column per stage (classes seen so far), then the average."""
    recipe = report["recipe"]
    stages = report["results"][0]["stages"]
    lines = [
        f"Class-incremental accuracy (%) on the real {recipe['split']} split restricted to the classes seen "
        f"({report['dataset']}, {report['method']} set of {report['ipc']} per class): memory of "
        f"{report['memory_per_class']} samples per seen class, a fresh {report['architecture']} per stage trained "
        f"{recipe['epochs']} epochs at lr {recipe['lr']:.4g}, mean ± std over {recipe['repeats']} class orders.",
        "",
        "| memory | " + " | ".join(f"{s['classes']} classes" for s in stages) + " | average |",
        "|---" * (len(stages) + 2) + "|",
    ]
    for row in report["results"]:
        cells = [mean_std(s) for s in row["stages"]] + [mean_std(row["average"])]
        lines.append(f"| {row['source']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(report: dict[str, Any]) -> Figure:
    """Accuracy against the number of classes seen, one line (± std) per memory source."""
    return errorbar_figure(
        {row["source"]: [(s["classes"], s) for s in row["stages"]] for row in report["results"]},
        f"class-incremental, {report['memory_per_class']} per class ({report['dataset']}, {report['method']})",
        "classes seen", f"{report['recipe']['split']} accuracy (%)",
    )


def run(
    synset: str,
    data: AudioDataModule,
    stages: int = 5,
    memory_per_class: int | None = None,
    sources: Sequence[str] = DEFAULT_SOURCES,
    architecture: str = "convnet",
    network_options: dict[str, Any] | None = None,
    repeats: int = 5,
    epochs: int = 300,
    lr: float | Literal["auto"] = "auto",
    batch_size: int = 256,
    augment: bool = True,
    expert_dir: str | None = None,
    eval_split: Literal["test", "val"] = "test",
    seed: int = 0,
    out: str | None = None,
    device: str = "cuda" if torch.cuda.is_available() else "cpu",
) -> dict[str, Any]:
    """Run the class-incremental study on the distilled set in ``synset`` and write its report.

    Args:
        synset: Folder of the distilled set (``synset.safetensors`` + ``manifest.json``).
        data: The real DataModule the set was distilled from.
        stages: Number of stages the classes arrive in.
        memory_per_class: Memory samples per seen class (default: the set's ipc).
        sources: Memories to compare: ``synthetic`` (the set) and real ``random``, ``herding``, ``kcenter``.
        architecture: Network trained after each stage.
        network_options: Its constructor options, e.g. ``{"width": 64}``.
        repeats: Class orders (seeds ``seed``, ``seed + 1``, ...); results are mean ± std over them.
        epochs: Training epochs of each network.
        lr: Initial SGD learning rate, or ``auto``: the set's learned step size (0.01 without one).
        batch_size: Minibatch size.
        augment: Train with SpecAugment.
        expert_dir: Expert trajectories whose final expert embeds real data for herding / k-center.
        eval_split: Real split the networks are tested on (``val`` to tune without the test split).
        seed: Base seed (class orders, memories, networks).
        out: Output folder (default: the parent of ``synset``).
        device: Where to train.

    Returns:
        The report written to ``continual.json``.

    Raises:
        FileNotFoundError: If ``synset`` holds no distilled set.
        ValueError: On a set that does not match the data, an unknown source, or a memory larger than a
            class of the set or of the real training split; all before any network is trained.
    """
    check_sources(sources)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    study = load_study_data(synset, data, eval_split, device)
    class_stages(study.num_classes, stages, seed)  # a bad stage count fails before the embeddings are trained
    per_class = int(study.manifest["ipc"]) if memory_per_class is None else memory_per_class
    check_per_class(study, sources, per_class)
    recipe = {
        "lr": resolve_lr(lr, study.manifest), "lr_requested": lr, "epochs": epochs, "batch_size": batch_size,
        "augment": augment, "repeats": repeats, "seed": seed, "split": eval_split,
    }
    embeddings = source_embeddings(study, sources, expert_dir, seed)
    orders, runs = [], []
    with tqdm(total=repeats * stages * len(sources) * epochs, desc="continual learning", unit="epoch") as bar:
        for r in range(repeats):
            bar.set_postfix_str(f"class order {r + 1}/{repeats}")
            memories = {source: source_set(study, source, per_class, embeddings, seed + r) for source in sources}
            orders.append(class_stages(study.num_classes, stages, seed + r))
            runs.append(incremental_run(
                study, memories, orders[-1], architecture, network_options, recipe, seed + r, bar.update
            ))
    report = build_report(study, per_class, architecture, network_options, recipe, orders, runs)
    publish(STUDY, "continual-learning", report, markdown(report), figure(report), out, synset)
    return report


def command_parser() -> ArgumentParser:
    """The parser of ``python -m ddlight.downstream.continual`` (every argument of :func:`run`, ``--config``)."""
    return build_parser(
        run, "python -m ddlight.downstream.continual", __doc__.split("\n\n")[0],
        {"sources": f"Memory sources, any of {', '.join(SOURCES)}."},
    )


def main(args: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the command line (``args``: for tests) and :func:`run` the study."""
    return run_command(run, command_parser(), args)


if __name__ == "__main__":
    main()
