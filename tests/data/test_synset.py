"""SynsetDataModule: round trip from save_synset, real val/test features, mismatch errors."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from ddlight.data.synset import SynsetDataModule
from ddlight.data.synthetic import SyntheticSounds
from ddlight.distillers.base import Synset, save_synset
from ddlight.features import FeatureConfig
from ddlight.tasks import Classifier


def tiny(**kwargs) -> SyntheticSounds:
    args = {"train_per_class": 3, "val_per_class": 1, "test_per_class": 2, "duration": 0.25, "batch_size": 8,
            "features": FeatureConfig(hop_length=512)}
    return SyntheticSounds(**{**args, **kwargs})


def distilled(directory: Path, data: SyntheticSounds, ipc: int = 2) -> Path:
    """A 'distilled' set: real training features with soft labels, written by save_synset."""
    data.setup("fit")
    x, y = data.split_features("train")
    idx = torch.cat([(y == c).nonzero().flatten()[:ipc] for c in range(data.num_classes)])
    soft = 0.9 * F.one_hot(y[idx], data.num_classes).float() + 0.1 / data.num_classes
    manifest = {"method": "test", "ipc": ipc, "num_classes": data.num_classes, **data.describe()}
    return save_synset(directory, Synset(x[idx], soft, data.features.mean, data.features.std, manifest))


def test_round_trip_trains_on_synset_and_tests_on_real(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    path = distilled(tmp_path / "distilled", tiny())
    dm = SynsetDataModule(str(path), real=tiny(cache_features=False), batch_size=4)
    assert dm.num_classes == tiny().num_classes and dm.feature_shape == tiny().feature_shape  # known right after __init__
    dm.setup("fit")
    features, targets = next(iter(dm.train_dataloader()))
    assert features.shape[1:] == dm.feature_shape and targets.shape == (4, dm.num_classes)  # soft labels
    assert SynsetDataModule(str(path), soft_labels=False).targets().dim() == 1
    waves, labels = next(iter(dm.test_dataloader()))
    assert waves.dim() == 2  # real waveforms, turned into features on the device
    assert dm.on_after_batch_transfer((waves, labels), 0)[0].shape[1:] == dm.feature_shape
    L.seed_everything(0)
    model = Classifier(dm.feature_shape, dm.num_classes, network_options={"width": 8, "depth": 1})
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, datamodule=dm)
    (result,) = trainer.test(model, datamodule=dm, verbose=False)
    assert 0 <= result["test/acc"] <= 1 and torch.isfinite(torch.tensor(result["test/loss"]))


def test_mismatched_real_data_is_a_clear_error(tmp_path: Path) -> None:
    path = distilled(tmp_path / "distilled", tiny())
    with pytest.raises(ValueError, match="hop_length|features"):
        SynsetDataModule(str(path), real=tiny(features=FeatureConfig(hop_length=256)))
    other = SynsetDataModule(str(path), real=tiny(seed=7))  # same config, other training data
    with pytest.raises(ValueError, match="normalisation"):
        other.setup("fit")
    with pytest.raises(FileNotFoundError, match="synset.safetensors"):
        SynsetDataModule(str(tmp_path))
