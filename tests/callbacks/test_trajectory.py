"""TrajectoryRecorder: snapshots at start and every epoch, manifest, appending, incompatibility."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from ddlight.callbacks import TrajectoryRecorder
from ddlight.callbacks.trajectory import LOCK
from ddlight.data.synthetic import SyntheticSounds
from ddlight.io import load_json, load_trajectories
from ddlight.tasks import Classifier


def _fit(
    directory: Path, width: int = 8, epochs: int = 2, test: bool = True, callbacks: list[Callback] | None = None
) -> Classifier:
    L.seed_everything(0)
    data = SyntheticSounds(train_per_class=2, val_per_class=1, test_per_class=1, duration=0.25, batch_size=8)
    model = Classifier(data.feature_shape, data.num_classes, network_options={"width": width}, num_models=2)
    recorder = TrajectoryRecorder(dirpath=str(directory))
    trainer = L.Trainer(
        max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        callbacks=[recorder, *(callbacks or [])], accelerator="cpu",
    )
    initial = {n: p.detach().clone() for n, p in model.networks[0].named_parameters()}
    trainer.fit(model, datamodule=data)
    if test:
        trainer.test(model, datamodule=data, verbose=False)
    model.initial = initial
    return model


def test_records_start_and_every_epoch(tmp_path: Path) -> None:
    model = _fit(tmp_path)
    manifest, experts = load_trajectories(tmp_path)
    assert len(experts) == 2 and manifest["network"] == "convnet"
    moved = []
    for name, param in model.networks[0].named_parameters():
        trajectory = experts[0][name]
        assert trajectory.shape == (3, *param.shape)  # start + 2 epochs
        torch.testing.assert_close(trajectory[0], model.initial[name])
        torch.testing.assert_close(trajectory[-1], param.detach())
        moved.append(not torch.equal(trajectory[0], trajectory[1]))
    assert sum(moved) > len(moved) // 2  # (a conv bias before instance norm gets no gradient)
    assert manifest["optimizer"]["name"] == "sgd" and manifest["optimizer"]["lr"] == 0.01
    assert manifest["data"]["features"]["name"] == "fdmfcc" and manifest["data"]["fingerprint"]
    assert all(0 <= e["test_accuracy"] <= 100 for e in manifest["experts"])


def test_second_run_appends(tmp_path: Path) -> None:
    _fit(tmp_path, epochs=1, test=False)
    _fit(tmp_path, epochs=1, test=False)
    files = [e["file"] for e in load_json(tmp_path / "manifest.json")["experts"]]
    assert files == [f"expert_{k:03d}.safetensors" for k in range(4)]


class _CountEpochs(Callback):
    def __init__(self) -> None:
        self.epochs = 0

    def on_train_epoch_end(self, *_: object) -> None:
        self.epochs += 1


def test_incompatible_experts_are_refused_before_training(tmp_path: Path) -> None:
    _fit(tmp_path, epochs=1, test=False)
    counter = _CountEpochs()
    with pytest.raises(ValueError, match="network_options"):
        _fit(tmp_path, width=4, epochs=1, test=False, callbacks=[counter])
    assert counter.epochs == 0  # refused at the start, not after the training was spent
    assert len(load_json(tmp_path / "manifest.json")["experts"]) == 2
    assert not (tmp_path / LOCK).exists()  # the refused run left no lock behind


def test_a_second_writer_is_refused_while_the_folder_is_held(tmp_path: Path) -> None:
    _fit(tmp_path, epochs=1, test=False)
    assert not (tmp_path / LOCK).exists()  # released once the experts are written
    (tmp_path / LOCK).write_text("4242")  # another run is writing here
    with pytest.raises(RuntimeError, match=r"another expert run \(process 4242.*delete .*\.lock"):
        _fit(tmp_path, epochs=1, test=False)
    assert len(load_json(tmp_path / "manifest.json")["experts"]) == 2 and (tmp_path / LOCK).read_text() == "4242"


def test_missing_trajectories_name_the_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="configs/expert_"):
        load_trajectories(tmp_path / "nowhere")
