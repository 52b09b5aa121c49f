"""What a trained network is measured with: accuracy, embeddings, and the mean ± std over repeats."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn


def _batches(network: nn.Module, x: Tensor, batch_size: int) -> list[Tensor]:
    """``x`` in chunks of ``batch_size``, on the network's device, with the network in eval mode."""
    network.eval()
    device = next(network.parameters()).device
    return [chunk.to(device) for chunk in x.split(batch_size)]


@torch.no_grad()
def accuracy(network: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Accuracy in percent of ``network`` (eval mode) on features ``x`` and hard labels ``y``.

    Args:
        network: A classifier.
        x: Features ``[N, C, F, T]``.
        y: Labels ``[N]``.
        batch_size: Inference batch size.

    Returns:
        ``100 * correct / N`` (0 for an empty set).
    """
    logits = [network(chunk) for chunk in _batches(network, x, batch_size)]
    if not logits:
        return 0.0
    correct = int((torch.cat(logits).argmax(-1) == y.to(logits[0].device)).sum())
    return 100.0 * correct / len(x)


@torch.no_grad()
def embed(network: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    """Embeddings ``network.embed(x)`` in eval mode, computed in batches on the network's device.

    Args:
        network: An :class:`~ddlight.networks.AudioNetwork` (anything with ``embed``).
        x: Features ``[N, C, F, T]``.
        batch_size: Inference batch size.

    Returns:
        Embeddings ``[N, D]`` on the network's device.
    """
    return torch.cat([network.embed(chunk) for chunk in _batches(network, x, batch_size)])


def summarize(runs: Iterable[float]) -> dict[str, Any]:
    """``{"mean", "std", "runs"}`` of accuracies, rounded to 4 decimals (population std; 0 for one run)."""
    runs = [round(float(r), 4) for r in runs]
    return {"mean": round(statistics.fmean(runs), 4), "std": round(statistics.pstdev(runs), 4), "runs": runs}
