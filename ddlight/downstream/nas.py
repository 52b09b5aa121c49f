"""Architecture-search proxy: do networks trained on a small set rank as they rank on the full training split?

    python -m ddlight.downstream.nas --synset runs/.../distilled --data configs/data/synthetic.yaml \\
        [--proxies synthetic random] [--repeats 3] [--epochs 100] [--full_epochs 50] [--top_k 5] [--out DIR]
    python -m ddlight.downstream.nas --config configs/nas_synthetic.yaml --synset runs/.../distilled

Every candidate of the search space (:func:`search_space`: ConvNets varied in depth, width, normalisation,
activation and pooling, plus every other registered network; or ``--space``) is trained briefly on each
proxy — the distilled set (``synthetic``) and real subsets of the same size (``random``, ``herding``,
``kcenter``) — and, as the reference, on the whole training split, each ``repeats`` times (seeds
``seed``, ``seed + 1``, ...), and scored on ``eval_split`` (default ``val``: choosing an architecture is
tuning, which DESIGN.md keeps off the test split). Per proxy and seed, against the reference (the full-data
accuracies averaged over seeds):

* **Spearman ρ** of the candidates' accuracies (average ranks for ties; 0 when either side ranks every
  candidate equal);
* **top-k overlap**: the share of the reference's k best candidates among the proxy's k best (ties broken
  by the order of the space);
* **regret**: the full-data accuracy lost by taking the proxy's best candidate instead of the best one;

reported as mean ± std over seeds, beside the time spent training and scoring every candidate on the proxy
and the **time saved** against the full split. Writes ``nas.json``, ``nas.md`` and ``nas.png`` (proxy
against full-data accuracy per candidate) next to the distilled folder (or into ``--out``).

The reference is most of the study's cost (SyntheticSounds at ipc 10: about 6x a proxy's time). With
``--reference_cache DIR`` each full-split score is kept in ``DIR`` (one JSON per candidate and seed, keyed
by the real data's content, the candidate and the recipe), so comparing several sets of the same data (at
the same ``lr``) trains the reference once. An entry stays valid while the networks' code does not change:
delete the folder after changing a network.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jsonargparse import ArgumentParser
from matplotlib.figure import Figure
from scipy.stats import rankdata
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
from ddlight.evaluation.report import mean_std
from ddlight.io import load_json, save_json
from ddlight.networks import NETWORKS, network_options
from ddlight.recipe import Progress, TrainRecipe, accuracy, fit_network, summarize

STUDY = "nas"
#: The reference every proxy is ranked against: the whole training split.
FULL = "full"
#: Proxies compared by default: the distilled set and a random real subset of the same size.
DEFAULT_PROXIES = ("synthetic", "random")
#: The ConvNet every variation of the default space starts from.
CONVNET_BASE = {"width": 32, "depth": 3, "norm": "instance", "activation": "relu", "pooling": "avg"}
#: Changes to :data:`CONVNET_BASE`: one factor at a time, then a few combinations.
CONVNET_VARIATIONS = (
    {"depth": 1}, {"depth": 2}, {"depth": 4},
    {"width": 16}, {"width": 64},
    {"norm": "batch"}, {"norm": "layer"}, {"norm": "none"},
    {"activation": "leakyrelu"}, {"activation": "gelu"}, {"activation": "sigmoid"},
    {"pooling": "max"},
    {"depth": 2, "width": 64, "norm": "batch", "pooling": "max"},
    {"depth": 4, "width": 16, "norm": "layer", "activation": "gelu"},
    {"depth": 1, "width": 16, "norm": "none", "activation": "leakyrelu", "pooling": "max"},
)
#: Options of the other registered networks in the default space: small, like the ConvNets. At their
#: default width 64, resnet18 (11 M parameters) takes 80x and vgg11 16x a width-32 ConvNet's time per
#: step on a CPU, which would make the reference on the full split the whole cost of the study.
SMALL_OPTIONS = {"resnet18": {"width": 16}, "vgg11": {"width": 16}}


@dataclass
class Candidate:
    """One network of the search space.

    Attributes:
        name: Unique label in the reports.
        architecture: Name in :data:`ddlight.networks.NETWORKS`.
        options: Its constructor options.
    """

    name: str
    architecture: str
    options: dict[str, Any] = field(default_factory=dict)


def search_space() -> list[Candidate]:
    """The default space: the base ConvNet, its :data:`CONVNET_VARIATIONS`, every other registered network
    (with :data:`SMALL_OPTIONS`).

    Returns:
        The candidates (22 with the networks registered today), ConvNets first.
    """
    space = [Candidate("convnet", "convnet", dict(CONVNET_BASE))]
    for change in CONVNET_VARIATIONS:
        label = ", ".join(f"{key}={value}" for key, value in change.items())
        space.append(Candidate(f"convnet({label})", "convnet", CONVNET_BASE | change))
    others = [name for name in NETWORKS if name != "convnet"]
    return space + [Candidate(name, name, dict(SMALL_OPTIONS.get(name, {}))) for name in others]


def check_space(space: Sequence[Candidate]) -> None:
    """Check names and options of every candidate, so that a typo fails before any training.

    Raises:
        ValueError: If the space has fewer than two candidates, a repeated name or an unknown network.
        TypeError: If a candidate has an option its network does not take.
    """
    names = [c.name for c in space]
    if len(space) < 2 or len(set(names)) != len(names):
        raise ValueError(f"the search space needs at least two candidates with distinct names, got {names}")
    for candidate in space:
        unknown = sorted(set(candidate.options) - set(network_options(candidate.architecture)))
        if unknown:
            raise TypeError(f"candidate {candidate.name!r}: {candidate.architecture} takes no option(s) {unknown}")


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation of ``a`` and ``b``: the Pearson correlation of their average ranks.

    Ties share the average of the ranks they span. When either side is constant the ranking carries no
    order and 0 is returned (the coefficient is undefined there).

    Raises:
        ValueError: If ``a`` and ``b`` differ in length or hold fewer than two values.
    """
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"spearman needs two sequences of the same length >= 2, got {len(a)} and {len(b)}")
    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def top_k(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the ``k`` highest scores, best first; ties go to the earlier index."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])[:k]


def top_k_overlap(proxy: Sequence[float], reference: Sequence[float], k: int) -> float:
    """Share of the reference's ``k`` best candidates that are among the proxy's ``k`` best (0 to 1)."""
    k = min(k, len(reference))
    return len(set(top_k(proxy, k)) & set(top_k(reference, k))) / k


def rank_agreement(proxy: Sequence[float], reference: Sequence[float], k: int) -> dict[str, float]:
    """Spearman ρ, top-k overlap and regret (reference accuracy lost by the proxy's pick) of one ranking."""
    pick = top_k(proxy, 1)[0]
    return {
        "rho": spearman(proxy, reference),
        "top_k_overlap": top_k_overlap(proxy, reference, k),
        "regret": max(reference) - reference[pick],
    }


def train_candidates(
    data: StudyData,
    x: torch.Tensor,
    targets: torch.Tensor,
    space: Sequence[Candidate],
    epochs: int,
    recipe: dict[str, Any],
    seed: int,
    progress: Progress | None = None,
) -> tuple[list[float], float]:
    """Train and score every candidate on one training set.

    Args:
        data: The real evaluation split (and the number of classes).
        x: Training features.
        targets: Their hard labels or soft label distributions.
        space: The candidates.
        epochs: Training epochs.
        recipe: ``lr``, ``batch_size`` and ``augment`` of every network.
        seed: Seed of every network.
        progress: Told every epoch trained (a progress bar's ``update``).

    Returns:
        The accuracy (%) of each candidate on the evaluation split, and the seconds each took.
    """
    scores, seconds = [], []
    for candidate in space:
        start = time.perf_counter()
        network = fit_network(
            x=x, targets=targets, num_classes=data.num_classes,
            recipe=TrainRecipe(epochs=epochs, lr=recipe["lr"], batch_size=recipe["batch_size"],
                               augment=recipe["augment"], seed=seed),
            architecture=candidate.architecture, network_options=candidate.options, progress=progress,
        )
        scores.append(accuracy(network=network, x=data.eval_x, y=data.eval_y))  # reading it out synchronises
        seconds.append(time.perf_counter() - start)
    return scores, seconds


class ReferenceCache:
    """Full-split scores kept on disk, one JSON per candidate and seed, to share the reference between studies.

    An entry's key is the content of the real data (training and evaluation split), the candidate
    (architecture and options), the seed and everything of the recipe that changes the network; its value is
    the accuracy and the seconds the training took (so a reused reference still reports its real cost).

    Args:
        root: The cache folder (created on the first entry).
        data: The real data every entry is trained and scored on.
        recipe: ``full_epochs``, ``lr``, ``batch_size``, ``augment`` of the reference.
        device: Where the networks train (CPU and GPU results differ in their last digits).
    """

    def __init__(self, root: str | Path, data: StudyData, recipe: dict[str, Any], device: str) -> None:
        self.root = Path(root)
        digest = hashlib.sha256()
        for tensor in (data.train_x, data.train_y, data.eval_x, data.eval_y):
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        self.base = {
            "data": digest.hexdigest(), "device": torch.device(device).type,
            **{key: recipe[key] for key in ("full_epochs", "lr", "batch_size", "augment")},
        }

    def path(self, candidate: Candidate, seed: int) -> Path:
        """The entry's file: a hash of its key."""
        key = {**self.base, "architecture": candidate.architecture, "options": candidate.options, "seed": seed}
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return self.root / f"{name}.json"

    def holds(self, candidate: Candidate, seed: int) -> bool:
        """Whether a candidate and seed have an entry."""
        return self.path(candidate, seed).is_file()

    def get(self, candidate: Candidate, seed: int) -> tuple[float, float] | None:
        """The stored ``(accuracy, seconds)`` of a candidate and seed, or None."""
        path = self.path(candidate, seed)
        if not path.is_file():
            return None
        entry = load_json(path)
        return float(entry["accuracy"]), float(entry["seconds"])

    def put(self, candidate: Candidate, seed: int, accuracy: float, seconds: float) -> None:
        """Store a candidate's score (atomically: an interrupted write leaves no entry)."""
        save_json(self.path(candidate, seed), {
            **self.base, "name": candidate.name, "architecture": candidate.architecture,
            "options": candidate.options, "seed": seed, "accuracy": accuracy, "seconds": seconds,
        })


def train_reference(
    data: StudyData,
    space: Sequence[Candidate],
    recipe: dict[str, Any],
    seed: int,
    cache: ReferenceCache | None,
    progress: Progress | None = None,
) -> tuple[list[float], list[float]]:
    """Each candidate's score on the full training split: from ``cache`` where it holds it, else trained.

    Returns:
        The accuracy (%) and the training seconds of each candidate (stored ones for cached candidates).
    """
    scores, seconds = [], []
    for candidate in space:
        entry = cache.get(candidate, seed) if cache else None
        if entry is None:
            [score], [spent] = train_candidates(
                data, data.train_x, data.train_y, [candidate], recipe["full_epochs"], recipe, seed, progress
            )
            if cache:
                cache.put(candidate, seed, score, spent)
            entry = score, spent
        scores.append(entry[0])
        seconds.append(entry[1])
    return scores, seconds


def build_report(
    data: StudyData,
    space: Sequence[Candidate],
    recipe: dict[str, Any],
    top: int,
    scores: dict[str, list[list[float]]],
    seconds: dict[str, float],
    full_reused: int = 0,
) -> dict[str, Any]:
    """The ``nas.json`` document.

    Args:
        data: The set and the real data.
        space: The candidates.
        recipe: The training recipe.
        top: ``k`` of the top-k overlap.
        scores: Per proxy and ``full``, per repeat, each candidate's accuracy.
        seconds: Per proxy and ``full``, the seconds spent over every repeat.
        full_reused: How many of the full split's scores came from the reference cache.

    Returns:
        ``candidates`` (per candidate and training set: mean, std, runs over seeds), ``proxies`` (per proxy:
        ``rho``, ``top_k_overlap``, ``regret`` as mean, std, runs over seeds; ``seconds``, ``time_saved`` as
        a share of the full split's time, ``speedup``), ``full_seconds``, ``full_reused``.
    """
    reference = [float(np.mean(column)) for column in zip(*scores[FULL])]
    candidates = [
        {**asdict(candidate), **{name: summarize([run[i] for run in runs]) for name, runs in scores.items()}}
        for i, candidate in enumerate(space)
    ]
    proxies = []
    for name, runs in scores.items():
        if name == FULL:
            continue
        agreements = [rank_agreement(run, reference, top) for run in runs]
        proxies.append({
            "source": name,
            **{key: summarize([a[key] for a in agreements]) for key in ("rho", "top_k_overlap", "regret")},
            "seconds": round(seconds[name], 2), "time_saved": round(1 - seconds[name] / seconds[FULL], 4),
            "speedup": round(seconds[FULL] / seconds[name], 2),
        })
    return {
        "study": STUDY, **data.describe(), "recipe": recipe, "top_k": min(top, len(space)), "candidates": candidates,
        "proxies": proxies, "full_seconds": round(seconds[FULL], 2), "full_reused": full_reused,
    }


def markdown(report: dict[str, Any]) -> str:
    """The agreement of each proxy with the full split, then every candidate's accuracies."""
    recipe, k = report["recipe"], report["top_k"]
    sets = [p["source"] for p in report["proxies"]] + [FULL]
    lines = [
        f"Architecture-search proxy ({report['dataset']}, {report['method']} set of {report['ipc']} per class): "
        f"{len(report['candidates'])} candidates trained {recipe['epochs']} epochs on each proxy and "
        f"{recipe['full_epochs']} on the full training split at lr {recipe['lr']:.4g}, real-{recipe['split']} "
        f"accuracy, mean ± std over {recipe['repeats']} seeds. ρ: Spearman rank correlation of a proxy's "
        f"accuracies with the full-data ones (mean over seeds); top-{k}: share of the full data's {k} best "
        "candidates among the proxy's; regret: full-data accuracy (pp) lost by taking the proxy's best "
        "candidate; time: training and scoring every candidate, every seed.",
        "",
        f"| proxy | Spearman ρ | top-{k} overlap | regret (pp) | time (s) | time saved |",
        "|---|---|---|---|---|---|",
    ]
    for p in report["proxies"]:
        lines.append(
            f"| {p['source']} | {mean_std(p['rho'])} | {mean_std(p['top_k_overlap'])} | {mean_std(p['regret'])} "
            f"| {p['seconds']:.1f} | {100 * p['time_saved']:.1f} % ({p['speedup']:.1f}×) |"
        )
    lines.append(f"| {FULL} (reference) | | | | {report['full_seconds']:.1f} | |")
    if report.get("full_reused"):
        total = len(report["candidates"]) * recipe["repeats"]
        lines += ["", f"{report['full_reused']} of the reference's {total} scores were reused from the reference "
                  "cache (their time is the one recorded when they were trained)."]
    lines += ["", "| candidate | " + " | ".join(sets) + " |", "|---" * (len(sets) + 1) + "|"]
    for c in report["candidates"]:
        lines.append(f"| {c['name']} | " + " | ".join(mean_std(c[s]) for s in sets) + " |")
    return "\n".join(lines) + "\n"


def figure(report: dict[str, Any]) -> Figure:
    """Proxy accuracy against full-data accuracy, one point per candidate and proxy (ρ in the legend)."""
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.subplots()
    full = [c[FULL]["mean"] for c in report["candidates"]]
    for p in report["proxies"]:
        ax.scatter(full, [c[p["source"]]["mean"] for c in report["candidates"]],
                   label=f"{p['source']} (ρ = {mean_std(p['rho'])})", alpha=0.8)
    ax.set(
        title=f"architecture-search proxy ({report['dataset']}, {report['method']})",
        xlabel=f"full training split: {report['recipe']['split']} accuracy (%)",
        ylabel=f"proxy: {report['recipe']['split']} accuracy (%)",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def run(
    synset: str,
    data: AudioDataModule,
    space: list[Candidate] | None = None,
    proxies: Sequence[str] = DEFAULT_PROXIES,
    repeats: int = 3,
    epochs: int = 100,
    full_epochs: int | None = None,
    lr: float | Literal["auto"] = "auto",
    batch_size: int = 256,
    augment: bool = True,
    top_k: int = 5,
    expert_dir: str | None = None,
    eval_split: Literal["val", "test"] = "val",
    seed: int = 0,
    reference_cache: str | None = None,
    out: str | None = None,
    device: str = "cuda" if torch.cuda.is_available() else "cpu",
) -> dict[str, Any]:
    """Run the architecture-search proxy study on the distilled set in ``synset`` and write its report.

    Args:
        synset: Folder of the distilled set (``synset.safetensors`` + ``manifest.json``).
        data: The real DataModule the set was distilled from.
        space: Candidates (``name``, ``architecture``, ``options``; default: :func:`search_space`).
        proxies: Small training sets to rank with: ``synthetic`` (the set) and real ``random``,
            ``herding``, ``kcenter`` subsets of the set's ipc.
        repeats: Seeds of every training (``seed``, ``seed + 1``, ...).
        epochs: Training epochs on a proxy.
        full_epochs: Training epochs on the full training split (default: ``epochs``).
        lr: Initial SGD learning rate, or ``auto``: the set's learned step size (0.01 without one).
        batch_size: Minibatch size.
        augment: Train with SpecAugment.
        top_k: ``k`` of the top-k overlap.
        expert_dir: Expert trajectories whose final expert embeds real data for herding / k-center.
        eval_split: Real split the candidates are scored on.
        seed: Base seed.
        reference_cache: Folder that keeps the full-split scores (:class:`ReferenceCache`): those already
            there are reused, the others are trained and added.
        out: Output folder (default: the parent of ``synset``).
        device: Where to train.

    Returns:
        The report written to ``nas.json``.

    Raises:
        FileNotFoundError: If ``synset`` holds no distilled set.
        ValueError: On a set that does not match the data, an unknown proxy or network, or a bad count;
            all before any network is trained.
    """
    space = search_space() if space is None else list(space)
    check_space(space)
    check_sources(proxies)
    full_epochs = epochs if full_epochs is None else full_epochs
    for name, value in (("repeats", repeats), ("epochs", epochs), ("full_epochs", full_epochs), ("top_k", top_k)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    study = load_study_data(synset, data, eval_split, device)
    per_class = int(study.manifest["ipc"])
    check_per_class(study, proxies, per_class)
    recipe = {
        "lr": resolve_lr(lr, study.manifest), "lr_requested": lr, "epochs": epochs, "full_epochs": full_epochs,
        "batch_size": batch_size, "augment": augment, "repeats": repeats, "seed": seed, "split": eval_split,
    }
    embeddings = source_embeddings(study, proxies, expert_dir, seed)
    cache = ReferenceCache(reference_cache, study, recipe, device) if reference_cache else None
    seeds = range(seed, seed + repeats)
    uncached = sum(cache is None or not cache.holds(candidate, s) for s in seeds for candidate in space)
    scores: dict[str, list[list[float]]] = {name: [] for name in [*proxies, FULL]}
    seconds = dict.fromkeys(scores, 0.0)
    total = repeats * len(space) * len(proxies) * epochs + uncached * full_epochs
    with tqdm(total=total, desc="architecture search", unit="epoch") as bar:
        for s in seeds:
            for name in proxies:
                x, targets = source_set(study, name, per_class, embeddings, s)
                bar.set_postfix_str(f"seed {s}: {len(space)} candidates on {name}")
                accuracies, spent = train_candidates(study, x, targets, space, epochs, recipe, s, bar.update)
                scores[name].append(accuracies)
                seconds[name] += sum(spent)
            bar.set_postfix_str(f"seed {s}: {len(space)} candidates on {FULL}")
            accuracies, spent = train_reference(study, space, recipe, s, cache, bar.update)
            scores[FULL].append(accuracies)
            seconds[FULL] += sum(spent)
    report = build_report(study, space, recipe, top_k, scores, seconds, repeats * len(space) - uncached)
    publish(STUDY, "architecture-search", report, markdown(report), figure(report), out, synset)
    return report


def command_parser() -> ArgumentParser:
    """The parser of ``python -m ddlight.downstream.nas`` (every argument of :func:`run`, ``--config``)."""
    return build_parser(
        run, "python -m ddlight.downstream.nas", __doc__.split("\n\n")[0],
        {"proxies": f"Proxy training sets, any of {', '.join(SOURCES)}."},
    )


def main(args: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the command line (``args``: for tests) and :func:`run` the study."""
    return run_command(run, command_parser(), args)


if __name__ == "__main__":
    main()
