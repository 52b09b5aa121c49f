"""Coreset baselines: subsets of real data of the same size as a distilled set (``ipc`` per class).

Each selector returns indices into the real training set, chosen class by class:

* :func:`random_subset` — ``ipc`` random samples per class (the baseline every result stands beside);
* :func:`herding` — greedy mean matching in an embedding space (Welling, ICML 2009, "Herding
  dynamical weights to learn"; the selection used by iCaRL and the DC/MTT baselines);
* :func:`kcenter` — greedy k-center (Sener & Savarese, ICLR 2018,
  :func:`~ddlight.recipe.kcenter_greedy`) in an embedding space, started from the sample closest to
  the class mean.

Embeddings come from a trained network's ``embed()`` (see :func:`ddlight.recipe.embed`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ddlight.recipe import kcenter_greedy


def _class_indices(labels: Tensor, ipc: int) -> list[Tensor]:
    """Indices of each class ``0 .. labels.max()``, checking that each has at least ``ipc`` samples."""
    if ipc < 1:
        raise ValueError(f"ipc must be >= 1, got {ipc}")
    labels = labels.cpu()
    per_class = [(labels == c).nonzero().flatten() for c in range(int(labels.max()) + 1)]
    short = {c: len(idx) for c, idx in enumerate(per_class) if len(idx) < ipc}
    if short:
        raise ValueError(f"classes {short} (class: samples) have fewer than ipc={ipc} real training samples")
    return per_class


def random_subset(labels: Tensor, ipc: int, generator: torch.Generator | None = None) -> Tensor:
    """``ipc`` uniformly random indices per class.

    Args:
        labels: Labels ``[N]`` of the real training set.
        ipc: Samples per class.
        generator: Random generator (for reproducible picks).

    Returns:
        Indices ``[K * ipc]``, class by class.

    Raises:
        ValueError: If a class has fewer than ``ipc`` samples.
    """
    return torch.cat([idx[torch.randperm(len(idx), generator=generator)[:ipc]] for idx in _class_indices(labels, ipc)])


def herding(embeddings: Tensor, labels: Tensor, ipc: int) -> Tensor:
    """Herding: per class, greedily add the sample that brings the selection's mean closest to the class mean.

    Args:
        embeddings: Embeddings ``[N, D]`` of the real training set.
        labels: Labels ``[N]``.
        ipc: Samples per class.

    Returns:
        Indices ``[K * ipc]``, class by class, in selection order.

    Raises:
        ValueError: If a class has fewer than ``ipc`` samples.
    """
    chosen = []
    for idx in _class_indices(labels, ipc):
        z = embeddings[idx.to(embeddings.device)].double()
        target = z.mean(0)
        total = torch.zeros_like(target)
        available = torch.ones(len(idx), dtype=torch.bool, device=z.device)
        for k in range(1, ipc + 1):
            distance = ((total + z) / k - target).norm(dim=1).masked_fill(~available, float("inf"))
            pick = int(distance.argmin())
            available[pick] = False
            total += z[pick]
            chosen.append(int(idx[pick]))
    return torch.tensor(chosen, dtype=torch.long)


def kcenter(embeddings: Tensor, labels: Tensor, ipc: int) -> Tensor:
    """Greedy k-center: per class, start at the sample closest to the class mean, then repeatedly add the
    sample farthest from everything selected so far.

    Args:
        embeddings: Embeddings ``[N, D]`` of the real training set.
        labels: Labels ``[N]``.
        ipc: Samples per class.

    Returns:
        Indices ``[K * ipc]``, class by class, in selection order.

    Raises:
        ValueError: If a class has fewer than ``ipc`` samples.
    """
    chosen = []
    for idx in _class_indices(labels, ipc):
        z = embeddings[idx.to(embeddings.device)].double()
        first = int((z - z.mean(0)).norm(dim=1).argmin())
        others = torch.cat([torch.arange(first), torch.arange(first + 1, len(idx))]).to(z.device)
        picks = kcenter_greedy(z[others], z[first : first + 1], ipc - 1)
        chosen += [int(idx[first]), *idx[others[picks].cpu()].tolist()]
    return torch.tensor(chosen, dtype=torch.long)
