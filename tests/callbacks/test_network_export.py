"""NetworkExport: the trained network, its batch-norm statistics and normalisation, and test accuracy."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from ddlight.callbacks import NetworkExport
from ddlight.data.synthetic import SyntheticSounds
from ddlight.networks.export import load_network
from ddlight.tasks import Classifier


def test_writes_each_network_with_normalisation_and_test_accuracy(tmp_path: Path) -> None:
    L.seed_everything(0)
    data = SyntheticSounds(train_per_class=2, val_per_class=1, test_per_class=2, duration=0.25, batch_size=8)
    model = Classifier(data.feature_shape, data.num_classes, network="statpool",
                       network_options={"width": 8, "embed_dim": 8}, num_models=2, optimizer="adam", lr=1e-3)
    export = NetworkExport(dirpath=str(tmp_path / "teachers"))
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        callbacks=[export], accelerator="cpu")
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)
    files = sorted((tmp_path / "teachers").glob("*.safetensors"))
    assert [f.name for f in files] == ["network_000.safetensors", "network_001.safetensors"]
    for k, path in enumerate(files):
        network, header, extras = load_network(path)
        original = model.networks[k].eval()
        x = data.split_features("test")[0]
        torch.testing.assert_close(network(x), original(x))
        assert 0.0 <= header["info"]["test_accuracy"] <= 100.0
        assert header["info"]["data"]["dataset"] == "synthetic"
        torch.testing.assert_close(extras["feature_mean"], data.features.mean)
        torch.testing.assert_close(extras["feature_std"], data.features.std)


def test_needs_a_module_with_networks(tmp_path: Path) -> None:
    export = NetworkExport(dirpath=str(tmp_path))
    trainer = L.Trainer(logger=False, accelerator="cpu")
    with pytest.raises(TypeError, match="networks"):
        export._write(trainer, L.LightningModule(), {})
