"""SynsetDataModule: train on a distilled set, validate and test on the real dataset it came from.

    ddlight fit --config configs/synset_eval.yaml --data.init_args.path runs/mtt_synthetic/.../distilled

The training split is the distilled set (``synset.safetensors`` + ``manifest.json`` written by every
distiller), already in the real data's normalised feature space, so its batches go to the model as
they are. Validation and test batches come from the ``real`` DataModule: its cached features, or (with
its ``cache_features`` off) real *waveforms* that become features on the device through its
:meth:`~AudioDataModule.on_after_batch_transfer`.
Both must describe the same feature space: same front end configuration, shape, classes and
normalisation statistics, or a clear error says what differs.

Soft labels: with ``soft_labels=True`` (and a synset that has them) training targets are label
distributions ``[B, K]``; :class:`~ddlight.tasks.Classifier` trains on them with soft cross-entropy and
measures accuracy against their argmax. ``soft_labels=False`` trains on the argmax.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from ddlight.data.base import AudioDataModule

# The distilled-set format is written by the distillers; reading it here is the one place data/ looks
# at distillers/ (format only, no method code).
from ddlight.io import MANIFEST, Synset, load_synset


class SynsetDataModule(L.LightningDataModule):
    """A distilled set for training, the real dataset for validation and test.

    Args:
        path: Folder of a distilled set (``<run dir>/distilled``).
        real: The real DataModule the set was distilled from (validation and test splits). Without it
            there is nothing to validate or test on (``--test_after_fit false``).
        batch_size: Batch size of the synthetic training loader (the real loaders keep their own).
        soft_labels: Train on the synset's soft labels when it has them (else on their argmax).

    Raises:
        FileNotFoundError: If ``path`` holds no distilled set.
        ValueError: If the set is damaged or inconsistent, its manifest records no classes, or ``real``
            has another feature configuration, shape or class list.
    """

    def __init__(
        self, path: str, real: AudioDataModule | None = None, batch_size: int = 256, soft_labels: bool = True
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.synset: Synset = load_synset(self.path)
        self.real = real
        self.batch_size = batch_size
        self.soft_labels = soft_labels
        self.name = str(self.synset.manifest.get("dataset", "synset"))
        self.classes = self._manifest_classes()
        if real is not None:
            self._check_compatible(real)

    def _manifest_classes(self) -> list:
        """The class names the manifest records (or ``0..num_classes-1``).

        Raises:
            ValueError: The manifest records neither ``classes`` nor ``num_classes``.
        """
        manifest = self.synset.manifest
        if manifest.get("classes") is not None:
            return list(manifest["classes"])
        if manifest.get("num_classes") is not None:
            return list(range(int(manifest["num_classes"])))
        raise ValueError(
            f"{self.path / MANIFEST} records neither classes nor num_classes, so the set's labels cannot be matched "
            "to the real data; add \"classes\": [...] in the real DataModule's order, or distil the set again"
        )

    @property
    def num_classes(self) -> int:
        """Number of classes of the distilled set."""
        return len(self.classes)

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """Feature shape ``(C, F, T)`` of the distilled set."""
        return tuple(self.synset.features.shape[1:])  # type: ignore[return-value]

    @property
    def learned_lr(self) -> float | None:
        """The step size the set was distilled with (MTT's ``syn_lr``), None when it has none."""
        value = self.synset.manifest.get("syn_lr")
        if value is None:
            return None
        if not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{self.path / 'manifest.json'} has syn_lr={value!r}; train with a number instead of lr auto")
        return float(value)

    def _check_compatible(self, real: AudioDataModule) -> None:
        manifest = self.synset.manifest
        ours = {
            "features": manifest.get("features"),
            "feature_shape": list(self.feature_shape),
            "classes": self.classes,
        }
        theirs = {
            "features": real.features.config(),
            "feature_shape": list(real.feature_shape),
            "classes": list(real.classes),
        }
        differ = [k for k in ours if ours[k] != theirs[k]]
        if differ:
            details = "; ".join(f"{k}: synset {ours[k]} vs real {theirs[k]}" for k in differ)
            raise ValueError(
                f"the distilled set in {self.path} does not match the real DataModule {type(real).__name__} "
                f"({details}); configure the real data as when distilling"
            )

    def setup(self, stage: str | None = None) -> None:
        """Set up the real DataModule and check that its normalisation matches the synset's."""
        if self.real is None:
            return
        self.real.setup(stage)
        mean, std = self.real.features.mean.cpu(), self.real.features.std.cpu()
        close = {"rtol": 1e-3, "atol": 1e-4}
        if not (torch.allclose(mean, self.synset.mean, **close) and torch.allclose(std, self.synset.std, **close)):
            raise ValueError(
                f"the real data's feature normalisation differs from the one the set in {self.path} was "
                f"distilled in (max |Δmean| {float((mean - self.synset.mean).abs().max()):.3g}, "
                f"max |Δstd| {float((std - self.synset.std).abs().max()):.3g}): "
                f"is it the same dataset and training split?"
            )

    def targets(self) -> torch.Tensor:
        """Training targets: soft distributions ``[N, K]`` or hard labels ``[N]``."""
        targets = self.synset.targets
        return targets.float() if self.soft_labels and targets.dim() == 2 else self.synset.labels

    def train_dataloader(self) -> DataLoader:
        dataset = TensorDataset(self.synset.features, self.targets())
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self.real.val_dataloader() if self.real is not None else []

    def test_dataloader(self) -> DataLoader | list:
        return self.real.test_dataloader() if self.real is not None else []

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Real waveform batches ``[B, L]`` become features; synthetic feature batches pass through."""
        if self.real is not None and batch[0].dim() == 2:
            return self.real.on_after_batch_transfer(batch, dataloader_idx)
        return batch
