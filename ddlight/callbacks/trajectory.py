"""TrajectoryRecorder: save every expert's parameters at the start and after every epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from ddlight.augment import SpecAugment
from ddlight.io import MANIFEST, load_json, save_json, save_tensors

#: Manifest keys that must agree before new experts are appended to an existing folder.
_COMPATIBLE_KEYS = ("network", "network_options", "in_shape", "num_classes", "optimizer", "augment", "data")


class TrajectoryRecorder(Callback):
    """Record expert parameter trajectories for trajectory matching (MTT).

    Works with a module that has an ``nn.ModuleList`` attribute ``networks`` (e.g.
    :class:`~ddlight.tasks.Classifier` with ``num_models`` experts). For each network it writes
    ``expert_<k>.safetensors`` (one tensor ``[epochs + 1, *shape]`` per parameter: the start plus one
    snapshot per ``every_n_epochs``) and a ``manifest.json`` describing the network, optimiser, feature
    configuration and data fingerprint. Running the command again appends new experts to the folder if
    everything is compatible; test accuracies are added to the manifest after ``trainer.test``.

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
        self.snapshots = [[] for _ in self._networks(pl_module)]
        self.files = []
        self._snapshot(pl_module)

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
        existing = directory / MANIFEST
        if existing.is_file():
            old = load_json(existing)
            clashes = [k for k in _COMPATIBLE_KEYS if old.get(k) != manifest[k]]
            if clashes:
                raise ValueError(
                    f"{directory} holds experts with a different {', '.join(clashes)}; "
                    f"choose another folder with --trainer.callbacks.init_args.dirpath or delete it"
                )
            manifest["experts"] = old["experts"]
        start = len(manifest["experts"])
        for k, snaps in enumerate(self.snapshots):
            name = f"expert_{start + k:03d}.safetensors"
            stacked = {p: torch.stack([s[p] for s in snaps]) for p in snaps[0]}
            save_tensors(directory / name, stacked, metadata={"snapshots": str(len(snaps))})
            manifest["experts"].append({"file": name, "snapshots": len(snaps)})
            self.files.append(name)
        save_json(existing, manifest)

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
