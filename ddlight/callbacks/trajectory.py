"""TrajectoryRecorder: save every expert's parameters at the start and after every epoch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from ddlight.augment import SpecAugment
from ddlight.io import MANIFEST, load_json, save_json, save_tensors
from ddlight.runs import check_writable

#: Manifest keys that must agree before new experts are appended to an existing folder.
_COMPATIBLE_KEYS = ("network", "network_options", "in_shape", "num_classes", "optimizer", "augment", "data")
#: Held by the expert run writing a folder (its process id inside): a second writer is refused.
LOCK = ".lock"


class TrajectoryRecorder(Callback):
    """Record expert parameter trajectories for trajectory matching (MTT).

    Works with a module that has an ``nn.ModuleList`` attribute ``networks`` (e.g.
    :class:`~ddlight.tasks.Classifier` with ``num_models`` experts). For each network it writes
    ``expert_<k>.safetensors`` (one tensor ``[epochs + 1, *shape]`` per parameter: the start plus one
    snapshot per ``every_n_epochs``) and a ``manifest.json`` describing the network, optimiser, feature
    configuration and data fingerprint. Running the command again appends new experts to the folder if
    everything is compatible; test accuracies are added to the manifest after ``trainer.test``. The folder
    is checked before the first epoch (compatible settings, writable) and held with a ``.lock`` file
    until the experts are written, so a second run into the same folder is refused instead of
    overwriting them.

    Args:
        dirpath: Output folder; default ``experts/<dataset name>`` under the working directory.
        every_n_epochs: Snapshot interval in epochs.
    """

    def __init__(self, dirpath: str | None = None, every_n_epochs: int = 1) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.dirpath = dirpath
        self.every_n_epochs = every_n_epochs
        self.snapshots: list[list[dict[str, Tensor]]] = []
        self.files: list[str] = []
        self.locked: Path | None = None

    def _directory(self, trainer: L.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        return Path("experts") / getattr(trainer.datamodule, "name", "data")

    @staticmethod
    def _networks(pl_module: L.LightningModule) -> torch.nn.ModuleList:
        networks = getattr(pl_module, "networks", None)
        if not isinstance(networks, torch.nn.ModuleList):
            raise TypeError(
                f"TrajectoryRecorder needs a module with an nn.ModuleList `networks` "
                f"(e.g. ddlight.tasks.Classifier), got {type(pl_module).__name__}"
            )
        return networks

    def _snapshot(self, pl_module: L.LightningModule) -> None:
        for k, net in enumerate(self._networks(pl_module)):
            self.snapshots[k].append({n: p.detach().cpu().clone() for n, p in net.named_parameters()})

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Check the folder before the first epoch (compatible, writable, not in use) and take the start."""
        self.snapshots = [[] for _ in self._networks(pl_module)]
        self.files = []
        if trainer.is_global_zero:
            directory = self._directory(trainer)
            self._check_compatible(directory, self._manifest(trainer, pl_module))
            self._lock(directory)
        self._snapshot(pl_module)

    @staticmethod
    def _check_compatible(directory: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """The folder's manifest, if any, after checking that these experts may join it.

        Raises:
            ValueError: Naming the settings that differ and what to do.
        """
        existing = directory / MANIFEST
        if not existing.is_file():
            return None
        old = load_json(existing)
        clashes = [k for k in _COMPATIBLE_KEYS if old.get(k) != manifest[k]]
        if clashes:
            raise ValueError(
                f"{directory} holds experts with a different {', '.join(clashes)}; "
                f"choose another folder with --trainer.callbacks.init_args.dirpath or delete it"
            )
        return old

    def _lock(self, directory: Path) -> None:
        """Create ``directory/.lock`` (fails if another expert run holds it or the folder is not writable)."""
        check_writable(directory, "experts to", "choose a writable folder with --trainer.callbacks.init_args.dirpath")
        lock = directory / LOCK
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = lock.read_text().strip() or "unknown"
            raise RuntimeError(
                f"{directory} is being written by another expert run (process {holder}, {lock}); wait for it to "
                f"finish, write to another folder (--trainer.callbacks.init_args.dirpath), or delete {lock} if "
                "that run is gone"
            ) from None
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        self.locked = lock

    def _unlock(self) -> None:
        if self.locked is not None:
            self.locked.unlink(missing_ok=True)
            self.locked = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._unlock()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._snapshot(pl_module)

    def _manifest(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        hp = pl_module.hparams
        optimizer = trainer.optimizers[0]
        defaults = {k: v for k, v in optimizer.defaults.items() if isinstance(v, (int, float, bool))}
        describe = getattr(trainer.datamodule, "describe", None)
        return {
            "format": 1,
            "network": hp.get("network"),
            "network_options": dict(hp.get("network_options") or {}),
            "in_shape": list(hp.get("in_shape")),
            "num_classes": int(hp.get("num_classes")),
            "optimizer": {"name": type(optimizer).__name__.lower(), **defaults},
            "augment": augment.config() if isinstance(augment := getattr(pl_module, "augment", None), SpecAugment) else None,
            "independent_orders": getattr(pl_module, "orders", 1) > 1,
            "every_n_epochs": self.every_n_epochs,
            "batch_size": getattr(trainer.datamodule, "batch_size", None),
            "data": describe() if describe else None,
            "experts": [],
        }

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        directory = self._directory(trainer)
        manifest = self._manifest(trainer, pl_module)
        old = self._check_compatible(directory, manifest)
        if old is not None:
            manifest["experts"] = old["experts"]
        start = len(manifest["experts"])
        for k, snaps in enumerate(self.snapshots):
            name = f"expert_{start + k:03d}.safetensors"
            stacked = {p: torch.stack([s[p] for s in snaps]) for p in snaps[0]}
            save_tensors(directory / name, stacked, metadata={"snapshots": str(len(snaps))})
            manifest["experts"].append({"file": name, "snapshots": len(snaps)})
            self.files.append(name)
        save_json(directory / MANIFEST, manifest)
        self._unlock()

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self.files:
            return
        path = self._directory(trainer) / MANIFEST
        manifest = load_json(path)
        metrics = trainer.callback_metrics
        for k, name in enumerate(self.files):
            key = f"test/acc_model{k}" if f"test/acc_model{k}" in metrics else "test/acc"
            for entry in manifest["experts"]:
                if entry["file"] == name and key in metrics:
                    entry["test_accuracy"] = round(100 * float(metrics[key]), 2)
        save_json(path, manifest)
