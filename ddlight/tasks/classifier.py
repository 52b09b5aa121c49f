"""Classifier: train one or several networks on real features (the experts of trajectory matching)."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from ddlight.networks import build_network


class Classifier(L.LightningModule):
    """Train ``num_models`` independently initialised copies of a network on the same batches.

    With ``num_models > 1`` one command trains several experts at once (different initialisations,
    independent parameters, summed losses so each network gets exactly its own gradient); the
    :class:`~ddlight.callbacks.TrajectoryRecorder` callback saves each one's trajectory. Features arrive
    already computed and normalised by the DataModule (``on_after_batch_transfer``).

    Args:
        in_shape: Feature shape ``(C, F, T)`` of one clip (linked from ``data.feature_shape``).
        num_classes: Number of classes (linked from ``data.num_classes``).
        network: Name in :data:`ddlight.networks.NETWORKS`.
        network_options: Extra constructor arguments of the network (e.g. ``{"width": 64}``).
        num_models: Number of independent networks trained side by side.
        optimizer: ``sgd`` (the trajectory-matching standard: no momentum, no decay) or ``adam``.
        lr: Learning rate.
        momentum: SGD momentum.
        weight_decay: Weight decay.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        network: str = "convnet",
        network_options: dict[str, Any] | None = None,
        num_models: int = 1,
        optimizer: Literal["sgd", "adam"] = "sgd",
        lr: float = 0.01,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        if num_models < 1:
            raise ValueError(f"num_models must be >= 1, got {num_models}")
        self.save_hyperparameters()
        self.networks = nn.ModuleList(
            build_network(network, tuple(in_shape), num_classes, **(network_options or {}))
            for _ in range(num_models)
        )
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{k}": MulticlassAccuracy(num_classes, average="micro")
                for stage in ("train", "val", "test")
                for k in range(num_models)
            }
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[M, B, K]`` of every network for features ``x`` ``[B, C, F, T]``."""
        return torch.stack([net(x) for net in self.networks])

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, targets = batch  # targets: labels [B], or soft label distributions [B, K] (distilled sets)
        logits = self(x)
        losses = torch.stack([F.cross_entropy(out, targets) for out in logits])
        y = targets.argmax(-1) if targets.dim() == 2 else targets
        for k, out in enumerate(logits):
            metric = self.metrics[f"{stage}_{k}"]
            metric(out, y)
            if len(self.networks) > 1:
                self.log(f"{stage}/acc_model{k}", metric, on_epoch=True, on_step=False)
        accuracy = (logits.argmax(-1) == y).float().mean()
        self.log(f"{stage}/loss", losses.mean(), on_epoch=True, on_step=stage == "train", prog_bar=True)
        self.log(f"{stage}/acc", accuracy, on_epoch=True, on_step=False, prog_bar=True)
        return losses.sum()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if hp.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        return torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
