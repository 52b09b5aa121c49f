"""FRAMI's inversion terms: the teacher's batch-norm statistics and the feature-invariant contrastive loss."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


@contextmanager
def batchnorm_statistics_loss(network: nn.Module) -> Iterator[list[Tensor]]:
    """Collect DeepInversion's statistics-matching term of every batch-norm layer during forwards.

    Inside the ``with`` block each forward through a batch-norm layer appends
    ``||mean(x) - running_mean||_2 + ||var(x) - running_var||_2`` of its input (statistics over every
    dimension but the channels) to the yielded list.

    Args:
        network: A network with batch-norm layers (their running statistics are the targets).

    Yields:
        The list the per-layer terms are appended to.

    Raises:
        ValueError: If ``network`` has no batch-norm layer with running statistics.
    """
    layers = [m for m in network.modules() if isinstance(m, _BatchNorm) and m.running_mean is not None]
    if not layers:
        raise ValueError(
            f"{type(network).__name__} has no batch-norm layer with running statistics to match; "
            "use a teacher trained with norm='batch' or set bn_weight 0"
        )
    terms: list[Tensor] = []

    def hook(module: _BatchNorm, args: tuple[Tensor, ...], output: Tensor) -> None:
        x = args[0]
        dims = [d for d in range(x.dim()) if d != 1]
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)
        norm = torch.linalg.vector_norm
        terms.append(norm(mean - module.running_mean) + norm(var - module.running_var))

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        yield terms
    finally:
        for handle in handles:
            handle.remove()


def contrastive_loss(a: Tensor, b: Tensor, temperature: float = 0.1, labels: Tensor | None = None) -> Tensor:
    """NT-Xent between two views: ``a[i]`` and ``b[i]`` are positives, every other row a negative.

    Args:
        a: Embeddings of the first views ``[B, E]``.
        b: Embeddings of the second views ``[B, E]``.
        temperature: Softmax temperature of the cosine similarities.
        labels: Classes ``[B]``; if given, only views of the same class are negatives (the loss then asks
            for diversity within each class and leaves the separation of classes to the class term).

    Returns:
        The mean cross-entropy of picking each view's partner among the other views it is compared with.
    """
    n = len(a)
    z = F.normalize(torch.cat([a, b]), dim=1)
    excluded = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    if labels is not None:
        both = torch.cat([labels, labels])
        excluded = excluded | (both[:, None] != both[None, :])
    similarity = (z @ z.T / temperature).masked_fill(excluded, -math.inf)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(similarity, partner)


@contextmanager
def no_terms() -> Iterator[list[Tensor]]:
    """Stand-in for :func:`batchnorm_statistics_loss` when the term is switched off."""
    yield []
