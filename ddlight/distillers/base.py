"""Distiller: a LightningModule whose trainable state *is* the synthetic (distilled) dataset.

Subclasses (MTT, RFAD, ...) implement :meth:`Distiller.training_step` with manual optimisation. The
base owns the synthetic features ``[num_classes * ipc, C, F, T]`` (normalised feature space of the
DataModule), their labels (hard, or learnable soft labels), initialisation from real samples, and the
export of the distilled set as ``distilled/synset.safetensors`` + ``distilled/manifest.json`` in the run
directory (format: :class:`ddlight.io.Synset`) — a real artefact that
:class:`~ddlight.data.synset.SynsetDataModule` trains on.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddlight.recipe import soft_cross_entropy
from ddlight.io import Synset, load_synset, save_synset
from ddlight.runs import run_dir

__all__ = ["Distiller", "Synset", "derive_seed", "load_synset", "save_synset", "soft_cross_entropy"]


def derive_seed(*parts: object) -> int:
    """A 32-bit seed hashed from ``parts`` (e.g. a purpose, the run seed, the step and the rank).

    Distinct parts give unrelated seeds, and 32 bits are all torch's CPU generator uses of a seed, so
    draws differ between purposes, steps and ranks on the CPU as on the GPU. A draw seeded from the
    step repeats exactly when a run resumes from a checkpoint, with no generator state to save.
    """
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=4).digest(), "little")


#: Copies of the synthetic set a distiller holds at the least: the set, its gradient, its optimiser state.
_SET_COPIES = 3


def _physical_memory() -> int | None:
    """Bytes of physical memory of this machine (``None`` where the operating system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _check_set_size(in_shape: tuple[int, ...], num_classes: int, ipc: int) -> None:
    """Refuse, before anything is allocated, a synthetic set too large for this machine's memory.

    Raises:
        ValueError: Naming ``ipc``, the size it asks for and what to do.
    """
    samples = num_classes * ipc
    needed = samples * math.prod(in_shape) * 4 * _SET_COPIES
    memory = _physical_memory()
    if memory is not None and needed > memory:
        raise ValueError(
            f"ipc={ipc} asks for {samples:,} synthetic samples of shape {tuple(in_shape)} ({num_classes} classes): "
            f"{needed / 2**30:,.1f} GiB with the set's gradient and optimiser state, more than this machine's "
            f"{memory / 2**30:,.1f} GiB of memory; distilled sets hold a few samples per class (1 to 50 in the "
            "papers): lower ipc"
        )


class Distiller(L.LightningModule):
    """Base class of dataset distillers: the synthetic set as parameters, its labels and its export.

    Args:
        in_shape: Feature shape ``(C, F, T)`` (linked from ``data.feature_shape``).
        num_classes: Number of classes (linked from ``data.num_classes``).
        ipc: Synthetic samples per class.
        init: ``real`` (random real training samples of each class) or ``noise`` (standard normal).
        learn_labels: Learn soft labels (logits initialised to ``label_scale`` × one-hot).
        label_scale: Initial logit of the true class for learnable labels.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        ipc: int = 10,
        init: Literal["real", "noise"] = "real",
        learn_labels: bool = False,
        label_scale: float = 5.0,
    ) -> None:
        super().__init__()
        if ipc < 1:
            raise ValueError(f"ipc must be >= 1, got {ipc}")
        _check_set_size(tuple(in_shape), num_classes, ipc)
        self.automatic_optimization = False
        self.in_shape = tuple(in_shape)
        self.num_classes = num_classes
        self.ipc = ipc
        self.init = init
        self.synthetic = nn.Parameter(torch.randn(num_classes * ipc, *self.in_shape))
        self.register_buffer("labels", torch.arange(num_classes).repeat_interleave(ipc))
        self.label_logits = (
            nn.Parameter(label_scale * F.one_hot(self.labels, num_classes).float()) if learn_labels else None
        )
        self.register_buffer("initialized", torch.tensor(False))

    # ------------------------------------------------------------------------------------- the set
    def targets(self) -> Tensor:
        """Training targets of the synthetic set: soft label distributions or hard labels."""
        if self.label_logits is not None:
            return self.label_logits.softmax(-1)
        return self.labels

    @torch.no_grad()
    def initialize_from(self, features: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> None:
        """Set the synthetic set to ``ipc`` random real samples of each class.

        Raises:
            ValueError: If a class has fewer than ``ipc`` real samples.
        """
        chosen = []
        for c in range(self.num_classes):
            idx = (labels == c).nonzero().flatten()
            if len(idx) < self.ipc:
                raise ValueError(
                    f"class {c} has {len(idx)} training samples, fewer than ipc={self.ipc}; lower ipc to at most "
                    f"{len(idx)}, or initialise from noise (init: noise)"
                )
            chosen.append(idx[torch.randperm(len(idx), generator=generator)[: self.ipc].to(idx.device)])
        self.synthetic.copy_(features[torch.cat(chosen)].to(self.synthetic.device))

    def on_fit_start(self) -> None:
        """Initialise the synthetic set once (a resumed run keeps its learned set)."""
        if bool(self.initialized):
            return
        if self.init == "real":
            features, labels = self.trainer.datamodule.split_features("train", device=self.device)
            generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63)
            self.initialize_from(features, labels, generator)
        self.initialized.fill_(True)
        if self.trainer.world_size > 1:  # every rank starts from rank 0's set
            self.synthetic.data.copy_(self.trainer.strategy.broadcast(self.synthetic.data, src=0))

    # -------------------------------------------------------------------------------------- export
    def export_extras(self) -> dict[str, Any]:
        """Method-specific entries for the manifest (e.g. MTT's learned step size)."""
        return {}

    def exported_set(self) -> tuple[Tensor, Tensor]:
        """Features and targets to export: the current set (subclasses may keep a better snapshot)."""
        return self.synthetic.detach(), self.targets().detach()

    def to_synset(self) -> Synset:
        """The set to export (:meth:`exported_set`) with its labels, normalisation and manifest."""
        dm = self.trainer.datamodule
        features, targets = self.exported_set()
        manifest = {
            "format": "ddlight-synset-1",
            "method": type(self).__name__.lower(),
            "ipc": self.ipc,
            "num_classes": self.num_classes,
            "soft_labels": targets.dim() == 2,
            "step": int(self.global_step),
            **dm.describe(),
            "feature_shape": list(self.in_shape),
            "hyperparameters": {k: v for k, v in self.hparams.items() if isinstance(v, (int, float, str, bool, list, type(None)))},
            **self.export_extras(),
        }
        return Synset(features, targets, dm.features.mean, dm.features.std, manifest)

    def export(self, directory: str | Path | None = None, partial: bool = False) -> Path:
        """Write the distilled set (default: ``<run dir>/distilled``) and return the folder.

        Args:
            directory: Target folder.
            partial: Mark the set as the state of an interrupted run (``"partial": true`` in the manifest).
        """
        directory = Path(directory or run_dir(self.trainer) / "distilled")
        synset = self.to_synset()
        synset.manifest["partial"] = partial
        return save_synset(directory, synset)

    def on_interrupt(self) -> None:
        """Export the current set marked partial (called by :class:`~ddlight.callbacks.SaveOnInterrupt`)."""
        directory = run_dir(self.trainer) / "distilled"  # on every rank: the folder is broadcast under DDP
        if self.trainer.is_global_zero and bool(self.initialized):
            path = self.export(directory, partial=True)
            print(f"interrupted at step {self.global_step}: partial distilled set written to {path}")

    def on_train_end(self) -> None:
        directory = run_dir(self.trainer) / "distilled"  # on every rank: the folder is broadcast under DDP
        if self.trainer.is_global_zero:
            path = self.export(directory)
            print(f"distilled set written to {path}")
