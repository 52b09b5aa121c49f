"""TrainRecipe: how every fresh network of ddlight is trained on a set of tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

OPTIMIZERS = ("sgd",)
LR_SCHEDULES = ("step", "constant")
#: Arithmetic of training, in Lightning's names: float32, or bfloat16 autocast over float32 weights.
PRECISIONS = ("32-true", "bf16-mixed")


@dataclass(frozen=True)
class TrainRecipe:
    """Training settings of a fresh network: the evaluation protocol's by default.

    SGD with momentum and weight decay; with ``lr_schedule="step"`` the learning rate drops ×0.1 after
    ``epochs // 2`` epochs, as in the evaluation of MTT. Network ``r`` of a group of repeats is seeded
    with ``seed + r`` (initialisation, batch order and augmentation draws).

    Args:
        epochs: Passes over the training set.
        optimizer: ``sgd`` (the only one: the protocol of every dataset-distillation paper).
        lr: Initial learning rate, or ``auto``: the step size a distilled set was learned with (MTT's
            ``syn_lr``), resolved by :func:`ddlight.evaluation.resolve_lr` before training.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        lr_schedule: ``step`` (×0.1 after ``epochs // 2`` epochs) or ``constant``.
        batch_size: Minibatch size.
        augment: Augment every minibatch with :class:`~ddlight.augment.SpecAugment` (default settings).
        seed: Seed of the first network; network ``r`` uses ``seed + r``.
        batched: Train the repeats of one architecture together (stacked parameters under
            :func:`torch.func.vmap`) instead of one after the other. Both give the same networks up to
            float rounding. Off by default: on a CPU the stacked (grouped) convolutions measured 1.5-2x
            slower than one network at a time (BENCHMARKS.md, ``benchmarks/eval_batched.py``); it is
            meant for accelerators that one small network leaves idle.
        precision: ``32-true`` (float32) or ``bf16-mixed``: every training step under bfloat16
            autocast (convolutions and matrix products in bfloat16, weights, optimizer and scoring in
            float32), as Lightning's ``--trainer.precision bf16-mixed``. Faster where the device has
            bfloat16 units (CPUs with AVX512-BF16 or AMX, GPUs from Ampere on; BENCHMARKS.md,
            "Evaluation in bfloat16"), emulated and slower elsewhere. Every set of a report is trained
            with the same precision, and the report records it.

    Raises:
        ValueError: Naming the first invalid setting and its value.
    """

    epochs: int = 300
    optimizer: Literal["sgd"] = "sgd"
    lr: float | Literal["auto"] = "auto"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: Literal["step", "constant"] = "step"
    batch_size: int = 256
    augment: bool = True
    seed: int = 0
    batched: bool = False
    precision: Literal["32-true", "bf16-mixed"] = "32-true"

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.lr != "auto" and (isinstance(self.lr, (str, bool)) or not self.lr > 0):
            raise ValueError(f"lr must be a positive number or 'auto', got {self.lr!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not self.weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    @property
    def learning_rate(self) -> float:
        """The numeric learning rate.

        Raises:
            ValueError: If ``lr`` is still ``auto`` (resolve it for the set first).
        """
        if self.lr == "auto":
            raise ValueError(
                "lr 'auto' is the step size of a distilled set: resolve it with "
                "ddlight.evaluation.resolve_lr (or give a number) before training"
            )
        return float(self.lr)

    def milestones(self) -> list[int]:
        """Epochs after which the learning rate drops ×0.1 (``[]`` for a constant schedule)."""
        return [max(self.epochs // 2, 1)] if self.lr_schedule == "step" else []


# Modules that take a recipe keep it in their hyperparameters, hence in checkpoints, which Lightning
# reloads with ``torch.load(weights_only=True)``: allow this plain dataclass there.
torch.serialization.add_safe_globals([TrainRecipe])
