"""The inputs of every downstream study: a distilled set checked against its real data, and same-size sets.

:func:`load_study_data` reads the set and the real splits the way ``python -m ddlight.evaluation`` does
(through :class:`~ddlight.data.synset.SynsetDataModule`, which refuses a set whose classes, feature
configuration, shape or normalisation differ from the real data's), so a bad input fails before any
network is trained. :func:`source_set` draws ``per_class`` samples of every class from one *source*: the
distilled set itself or a coreset baseline of the real training split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddlight.data.base import AudioDataModule
from ddlight.data.synset import SynsetDataModule
from ddlight.evaluation import BASELINES, baseline_indices, embedding_network, random_subset
from ddlight.recipe import embed

#: The distilled set as a source (every other source is a baseline of :data:`ddlight.evaluation.BASELINES`).
SYNTHETIC = "synthetic"
#: Every source :func:`source_set` knows.
SOURCES = (SYNTHETIC, *BASELINES)


@dataclass
class StudyData:
    """A distilled set and the real data it is measured against, on one device.

    Attributes:
        features: Distilled features ``[S, C, F, T]``.
        targets: Their hard labels ``[S]`` or soft label distributions ``[S, K]``.
        manifest: The set's manifest (method, ipc, classes, learned step size, ...).
        classes: Class names, index = label.
        train_x: Real training features ``[N, C, F, T]`` (the pool of the real baselines).
        train_y: Real training labels ``[N]``.
        eval_x: Real features of the split every network is tested on.
        eval_y: Their labels.
    """

    features: Tensor
    targets: Tensor
    manifest: dict[str, Any]
    classes: list[str]
    train_x: Tensor
    train_y: Tensor
    eval_x: Tensor
    eval_y: Tensor

    @property
    def labels(self) -> Tensor:
        """Hard labels ``[S]`` of the distilled set (argmax of soft targets)."""
        return self.targets if self.targets.dim() == 1 else self.targets.argmax(-1)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def describe(self) -> dict[str, Any]:
        """Dataset, method, ipc and classes: the head of every study report."""
        return {
            "dataset": self.manifest.get("dataset", "unknown"),
            "method": self.manifest.get("method", "unknown"),
            "ipc": self.manifest.get("ipc"),
            "classes": self.classes,
        }


def load_study_data(
    synset: str | Path, data: AudioDataModule, eval_split: str = "test", device: str | torch.device = "cpu"
) -> StudyData:
    """Load a distilled set and the real features it is compared with, checking that they belong together.

    Args:
        synset: Folder of the distilled set (``synset.safetensors`` + ``manifest.json``).
        data: The real DataModule the set was distilled from (configured as when distilling).
        eval_split: Real split every network is tested on (``test``, or ``val`` to tune).
        device: Where the tensors go.

    Returns:
        The set and the real training and evaluation features, normalised alike.

    Raises:
        FileNotFoundError: If ``synset`` holds no distilled set.
        ValueError: If the set's classes, feature configuration, shape or normalisation differ from the
            real data's, or ``eval_split`` is not ``test`` or ``val``.
    """
    if eval_split not in ("test", "val"):
        raise ValueError(f"eval_split must be 'test' or 'val', got {eval_split!r}")
    synset_dm = SynsetDataModule(str(synset), real=data)  # classes, feature configuration and shape
    synset_dm.setup("fit")  # the real splits and the normalisation
    distilled = synset_dm.synset
    return StudyData(
        distilled.features.to(device), distilled.targets.to(device), distilled.manifest, list(synset_dm.classes),
        *data.split_features("train", device=device), *data.split_features(eval_split, device=device),
    )


def check_sources(sources: Sequence[str]) -> None:
    """Raise a ``ValueError`` naming the valid sources if one of ``sources`` is unknown or none is given."""
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown or not sources:
        raise ValueError(f"unknown or no sources {unknown or list(sources)}; valid: {', '.join(SOURCES)}")


def check_per_class(data: StudyData, sources: Sequence[str], per_class: int) -> None:
    """Check that every source can give ``per_class`` samples of every class, before anything is trained.

    Args:
        data: The distilled set and the real data.
        sources: Sources to draw from (see :func:`source_set`).
        per_class: Samples per class.

    Raises:
        ValueError: If ``per_class`` < 1, or a class has fewer samples in the distilled set (by the argmax
            of soft labels; when ``synthetic`` is a source) or in the real training split (when a real
            baseline is).
    """
    if per_class < 1:
        raise ValueError(f"samples per class must be >= 1, got {per_class}")
    pools = {}
    if SYNTHETIC in sources:
        pools["the distilled set"] = data.labels
    if set(sources) - {SYNTHETIC}:
        pools["the real training split"] = data.train_y
    for name, labels in pools.items():
        counts = torch.bincount(labels.cpu(), minlength=data.num_classes).tolist()
        short = {data.classes[c]: n for c, n in enumerate(counts) if n < per_class}
        if short:
            raise ValueError(
                f"{name} holds fewer than {per_class} samples of classes {short} (class: samples); "
                f"ask for fewer samples per class"
            )


def source_embeddings(
    data: StudyData, sources: Sequence[str], expert_dir: str | Path | None, seed: int
) -> Tensor | None:
    """Embeddings of the real training split for herding / k-center (None when no source needs them).

    The embedding network is the final expert of ``expert_dir``, or a quick ConvNet trained on the real
    training split (:func:`ddlight.evaluation.embedding_network`, as in the evaluation protocol), on the
    device of the data.
    """
    if not {"herding", "kcenter"} & set(sources):
        return None
    network = embedding_network(data.train_x, data.train_y, data.num_classes, expert_dir, seed=seed)
    return embed(network, data.train_x)


def source_set(
    data: StudyData, source: str, per_class: int, embeddings: Tensor | None = None, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """``per_class`` samples of every class from one source.

    Args:
        data: The distilled set and the real data.
        source: ``synthetic`` (samples of the distilled set, drawn at random when it holds more) or a
            real baseline (``random``, ``herding``, ``kcenter`` of :data:`ddlight.evaluation.BASELINES`).
        per_class: Samples per class.
        embeddings: Real training embeddings (:func:`source_embeddings`), for herding / k-center.
        seed: Seeds the random draws.

    Returns:
        Features ``[K * per_class, C, F, T]`` and their targets (the set's own targets, soft or hard, for
        ``synthetic``; real hard labels otherwise), class by class.

    Raises:
        ValueError: If ``source`` is unknown or a class has fewer than ``per_class`` samples.
    """
    check_sources([source])
    check_per_class(data, [source], per_class)
    if source == SYNTHETIC:
        idx = random_subset(data.labels, per_class, torch.Generator().manual_seed(seed)).to(data.features.device)
        return data.features[idx], data.targets[idx]
    idx = baseline_indices(source, data.train_y, per_class, embeddings, seed).to(data.train_x.device)
    return data.train_x[idx], data.train_y[idx]
