"""Classifier: train one or several networks on real features (the experts of trajectory matching)."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from ddlight.augment import SpecAugment
from ddlight.networks import build_network
from ddlight.tasks.sam import SAM


class Classifier(L.LightningModule):
    """Train ``num_models`` independently initialised copies of a network side by side.

    With ``num_models > 1`` one command trains several experts at once (different initialisations,
    independent parameters, summed losses so each network gets exactly its own gradient); the
    :class:`~ddlight.callbacks.TrajectoryRecorder` callback saves each one's trajectory. With
    ``independent_orders`` (and a DataModule that offers ``train_orders``, as every
    :class:`~ddlight.data.base.AudioDataModule` does) each network also gets its own batch order: every
    training batch holds ``num_models`` chunks from independent shuffles and network ``k`` trains on
    chunk ``k``, as independently trained MTT experts do. Features arrive already computed and
    normalised by the DataModule (``on_after_batch_transfer``); training batches are augmented with
    :class:`~ddlight.augment.SpecAugment` when ``augment`` is on (MTT experts see the augmentation the
    distillation's student sees; the trajectory manifest records it).

    Args:
        in_shape: Feature shape ``(C, F, T)`` of one clip (linked from ``data.feature_shape``).
        num_classes: Number of classes (linked from ``data.num_classes``).
        network: Name in :data:`ddlight.networks.NETWORKS`.
        network_options: Extra constructor arguments of the network (e.g. ``{"width": 64}``).
        num_models: Number of independent networks trained side by side.
        optimizer: ``sgd`` (the trajectory-matching standard: no momentum, no decay) or ``adam``.
        lr: Learning rate, or ``auto``: the learned step size of the distilled set being trained on (the
            DataModule's ``learned_lr``, e.g. MTT's ``syn_lr`` through
            :class:`~ddlight.data.synset.SynsetDataModule`), 0.01 when it has none.
        momentum: SGD momentum.
        weight_decay: Weight decay.
        augment: Augment training batches with :class:`~ddlight.augment.SpecAugment` (default settings).
        independent_orders: Give every network its own batch order (``num_models > 1``).
        sam_rho: Train with sharpness-aware minimisation of this radius around the optimiser (FTD's flat
            expert trajectories; :class:`~ddlight.tasks.sam.SAM`, one radius per network); 0 turns it off.
            Twice the gradient evaluations per step.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        network: str = "convnet",
        network_options: dict[str, Any] | None = None,
        num_models: int = 1,
        optimizer: Literal["sgd", "adam"] = "sgd",
        lr: float | Literal["auto"] = 0.01,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        augment: bool = True,
        independent_orders: bool = True,
        sam_rho: float = 0.0,
    ) -> None:
        super().__init__()
        if num_models < 1:
            raise ValueError(f"num_models must be >= 1, got {num_models}")
        if sam_rho < 0:
            raise ValueError(f"sam_rho must be >= 0 (0: plain {optimizer}), got {sam_rho}")
        self.save_hyperparameters()
        self.networks = nn.ModuleList(
            build_network(network, tuple(in_shape), num_classes, **(network_options or {}))
            for _ in range(num_models)
        )
        self.augment = SpecAugment(enabled=augment)
        self.orders = 1
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{k}": MulticlassAccuracy(num_classes, average="micro")
                for stage in ("train", "val", "test")
                for k in range(num_models)
            }
        )

    def setup(self, stage: str) -> None:
        """Ask the DataModule for one independent batch order per network (``independent_orders``).

        Under DDP the networks share one order per rank (Lightning shards the data with its own
        distributed sampler, which cannot be combined with :class:`~ddlight.data.base.IndependentOrders`).
        """
        if stage != "fit":
            return
        if self.hparams.sam_rho and self.trainer.accumulate_grad_batches > 1:
            raise ValueError(
                f"sam_rho={self.hparams.sam_rho} cannot be combined with accumulate_grad_batches="
                f"{self.trainer.accumulate_grad_batches}: SAM perturbs the weights along one batch's gradient"
            )
        datamodule = self.trainer.datamodule
        wanted = len(self.networks) if self.hparams.independent_orders else 1
        if wanted > 1 and self.trainer.world_size > 1:
            warnings.warn(
                f"independent_orders is not supported under DDP: the {wanted} networks share one batch order "
                f"per rank", stacklevel=2,
            )
            wanted = 1
        if hasattr(datamodule, "train_orders"):
            datamodule.train_orders = wanted  # also 1: a reused DataModule must not keep an earlier model's
            self.orders = wanted
        elif wanted > 1:
            warnings.warn(
                f"{type(datamodule).__name__} has no train_orders: the {wanted} networks share one batch order",
                stacklevel=2,
            )

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[M, B, K]`` of every network for features ``x`` ``[B, C, F, T]``."""
        return torch.stack([net(x) for net in self.networks])

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        """The summed loss of every network on ``batch``, with its loss and accuracy logged.

        Nothing is logged during SAM's second pass at the perturbed weights (its numbers are not the model's).
        """
        x, targets = batch  # targets: labels [B], or soft label distributions [B, K] (distilled sets)
        if stage == "train" and self.orders > 1:  # chunk k of the batch is network k's own minibatch
            chunks = self.augment(x).chunk(self.orders)
            logits = torch.stack([net(chunk) for net, chunk in zip(self.networks, chunks)])
            targets = torch.stack(targets.chunk(self.orders))
        else:
            logits = self(self.augment(x) if stage == "train" else x)
            targets = targets.expand(len(self.networks), *targets.shape)
        losses = torch.stack([F.cross_entropy(out, t) for out, t in zip(logits, targets)])
        if stage == "train" and self._trainer is not None and any(
            getattr(optimizer, "perturbed", False) for optimizer in self.trainer.optimizers
        ):
            return losses.sum()
        y = targets.argmax(-1) if targets.dim() == 3 else targets
        for k, (out, labels) in enumerate(zip(logits, y)):
            metric = self.metrics[f"{stage}_{k}"]
            metric(out, labels)
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

    def learning_rate(self) -> float:
        """``lr``, with ``auto`` resolved from the DataModule's ``learned_lr`` (0.01 without one)."""
        if self.hparams.lr != "auto":
            return float(self.hparams.lr)
        learned = getattr(self.trainer.datamodule, "learned_lr", None) if self._trainer is not None else None
        return float(learned) if learned is not None else 0.01

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        lr = self.learning_rate()
        if hp.optimizer == "adam":
            base, options = torch.optim.Adam, {"lr": lr, "weight_decay": hp.weight_decay}
        else:
            base, options = torch.optim.SGD, {"lr": lr, "momentum": hp.momentum, "weight_decay": hp.weight_decay}
        if hp.sam_rho:
            return SAM([{"params": net.parameters()} for net in self.networks], base, hp.sam_rho, **options)
        return base(self.parameters(), **options)
