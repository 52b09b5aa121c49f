"""NetworkExport: save the trained networks of a run (e.g. a FRAMI teacher) as safetensors files."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from ddlight.networks.export import save_network


class NetworkExport(Callback):
    """Write each network of a :class:`~ddlight.tasks.Classifier` to ``<dirpath>/network_<k>.safetensors``.

    Each file holds the weights and buffers (batch-norm statistics included), the network name and
    options, the data description of the DataModule and, after ``trainer.test``, the test accuracy;
    the DataModule's feature normalisation travels with it as the extras ``feature_mean`` /
    ``feature_std``. :func:`ddlight.networks.export.load_network` builds it back — this is the
    teacher that :class:`~ddlight.distillers.FRAMI` inverts. Files are written at the end of
    training and rewritten after testing; a new run overwrites the files of the same index.

    Args:
        dirpath: Output folder; default ``teachers/<dataset name>`` under the working directory.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath
        self.paths: list[Path] = []

    def _directory(self, trainer: L.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        return Path("teachers") / getattr(trainer.datamodule, "name", "data")

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, test_accuracy: dict[int, float]) -> None:
        networks = getattr(pl_module, "networks", None)
        if networks is None:
            raise TypeError(
                f"NetworkExport needs a module with an nn.ModuleList `networks` (e.g. ddlight.tasks.Classifier), "
                f"got {type(pl_module).__name__}"
            )
        dm = trainer.datamodule
        hp = pl_module.hparams
        self.paths = []
        for k, network in enumerate(networks):
            info = {"data": dm.describe(), **({"test_accuracy": test_accuracy[k]} if k in test_accuracy else {})}
            extras = {"feature_mean": dm.features.mean, "feature_std": dm.features.std}
            path = self._directory(trainer) / f"network_{k:03d}.safetensors"
            self.paths.append(save_network(path, network, hp["network"], hp.get("network_options"), info, extras))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._write(trainer, pl_module, {})
            print(f"networks written to {self._directory(trainer)}")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self.paths:
            return
        metrics = trainer.callback_metrics
        accuracy = {}
        for k in range(len(self.paths)):
            key = f"test/acc_model{k}" if f"test/acc_model{k}" in metrics else "test/acc"
            if key in metrics:
                accuracy[k] = round(100 * float(metrics[key]), 2)
        self._write(trainer, pl_module, accuracy)
