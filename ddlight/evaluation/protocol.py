"""The evaluation protocol: train fresh networks on a small labelled set, test them on real data.

Every accuracy of ddlight is reported this way (see DESIGN.md, "Evaluation protocol"): for each
architecture, ``repeats`` freshly initialised networks are trained on the given set (synthetic, or a
random / herding / k-center subset of real data), and the real-test accuracy of the **last** epoch is
reported as mean ± std. The learning rate drops ×0.1 at half the epochs, as in the evaluation of MTT.

The training loop is plain PyTorch rather than a Lightning ``Trainer``: a distilled set holds tens to
hundreds of samples that fit in one or two batches, and 300 epochs over it take seconds, while a
``Trainer`` adds per-epoch hook, logging and loader overhead that dominates at this size (and would be
rebuilt for each of the repeats × architectures × baselines runs). The set is kept as tensors on the
device; nothing is shuffled through a DataLoader.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ddlight.augment import SpecAugment
from ddlight.networks import AudioNetwork, build_network


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy against hard labels ``[B]`` or soft label distributions ``[B, K]``."""
    if targets.dim() == 1:
        return F.cross_entropy(logits, targets)
    return -(targets * logits.log_softmax(-1)).sum(-1).mean()


@torch.no_grad()
def accuracy(network: torch.nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Accuracy in percent of ``network`` (eval mode) on ``x``, ``y``, inferred in batches."""
    network.eval()
    device = next(network.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = network(x[i : i + batch_size].to(device))
        correct += int((logits.argmax(-1) == y[i : i + batch_size].to(device)).sum())
    return 100.0 * correct / max(len(x), 1)


def fit_network(
    train_x: Tensor,
    train_targets: Tensor,
    num_classes: int,
    architecture: str = "convnet",
    network_options: Mapping[str, Any] | None = None,
    epochs: int = 300,
    lr: float = 0.01,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    augment: SpecAugment | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> AudioNetwork:
    """Train one fresh network on ``train_x`` with SGD, lr ×0.1 after ``epochs // 2`` epochs.

    Args:
        train_x: Training features ``[N, C, F, T]`` (normalised feature space).
        train_targets: Hard labels ``[N]`` or soft label distributions ``[N, K]``.
        num_classes: Number of classes (outputs of the network).
        architecture: Name in :data:`ddlight.networks.NETWORKS`.
        network_options: Constructor options of the network.
        epochs: Training epochs (passes over ``train_x``).
        lr: Initial SGD learning rate.
        batch_size: Minibatch size.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        augment: Augmentation applied to every training minibatch (None: none).
        seed: Seeds the initialisation, the batch order and the augmentation (global RNG state is
            restored afterwards).
        device: Where to train.

    Returns:
        The trained network (on ``device``, eval mode).

    Raises:
        ValueError: If the training set is empty or its targets do not match it.
    """
    if len(train_x) == 0 or len(train_x) != len(train_targets):
        raise ValueError(f"{len(train_x)} training samples but {len(train_targets)} targets")
    device = torch.device(device)
    rng_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), torch.enable_grad():  # callers may be under no_grad
        torch.manual_seed(seed)
        network = build_network(architecture, train_x.shape[1:], num_classes, **dict(network_options or {})).to(device)
        optimizer = torch.optim.SGD(network.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[max(epochs // 2, 1)], gamma=0.1)
        x, targets = train_x.detach().to(device), train_targets.detach().to(device)
        augment = augment.to(device).train() if augment is not None else None
        network.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(x), device=device).split(batch_size):
                inputs = augment(x[batch]) if augment is not None else x[batch]
                loss = soft_cross_entropy(network(inputs), targets[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            scheduler.step()
    return network.eval()


def train_and_test(
    train_x: Tensor,
    train_targets: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    architecture: str = "convnet",
    network_options: Mapping[str, Any] | None = None,
    epochs: int = 300,
    lr: float = 0.01,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    augment: SpecAugment | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> float:
    """Train one fresh network (:func:`fit_network`) and return its test accuracy after the last epoch.

    The number of classes is the width of soft targets, or one more than the largest hard label of the
    training and test sets. Arguments are those of :func:`fit_network`, plus ``test_x`` ``[M, C, F, T]``
    and ``test_y`` ``[M]`` (real test data).

    Returns:
        Test accuracy in percent of the network after the last epoch (never the best epoch).
    """
    if train_targets.dim() == 2:
        num_classes = train_targets.shape[1]
    else:
        num_classes = int(max(train_targets.max(), test_y.max())) + 1
    network = fit_network(
        train_x, train_targets, num_classes, architecture, network_options, epochs, lr, batch_size, momentum,
        weight_decay, augment, seed, device,
    )
    return accuracy(network, test_x, test_y)


def summarize(runs: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std", "runs"}`` of accuracies, rounded to 4 decimals (population std; 0 for one run)."""
    runs = [round(float(r), 4) for r in runs]
    return {"mean": round(statistics.fmean(runs), 4), "std": round(statistics.pstdev(runs), 4), "runs": runs}


def evaluate(
    train_x: Tensor,
    train_targets: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    architectures: Sequence[str] = ("convnet",),
    repeats: int = 5,
    network_options: Mapping[str, Mapping[str, Any]] | None = None,
    epochs: int = 300,
    lr: float = 0.01,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    augment: SpecAugment | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    description: str = "evaluate",
) -> dict[str, dict[str, Any]]:
    """Run :func:`train_and_test` ``repeats`` times per architecture (seeds ``seed``, ``seed + 1``, ...).

    Args:
        train_x: Training features ``[N, C, F, T]``.
        train_targets: Hard labels ``[N]`` or soft label distributions ``[N, K]``.
        test_x: Real test features.
        test_y: Real test labels.
        architectures: Network names, one result each.
        repeats: Fresh networks per architecture.
        network_options: Constructor options per architecture name (missing names: defaults).
        epochs: See :func:`train_and_test`.
        lr: See :func:`train_and_test`.
        batch_size: See :func:`train_and_test`.
        momentum: See :func:`train_and_test`.
        weight_decay: See :func:`train_and_test`.
        augment: See :func:`train_and_test`.
        seed: Seed of the first repeat; repeat ``r`` uses ``seed + r`` (deterministic).
        device: Where to train.
        description: Label of the progress bar.

    Returns:
        ``{architecture: {"mean": %, "std": %, "runs": [% per repeat]}}``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    options = network_options or {}
    results = {}
    for arch in architectures:
        runs = [
            train_and_test(
                train_x, train_targets, test_x, test_y, arch, options.get(arch), epochs, lr, batch_size,
                momentum, weight_decay, augment, seed + r, device,
            )
            for r in tqdm(range(repeats), desc=f"{description} {arch}", leave=False)
        ]
        results[arch] = summarize(runs)
    return results
