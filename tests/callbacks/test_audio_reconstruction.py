"""Audio reconstruction of distilled sets: the command function, bad input, and the callback in a Trainer."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
import wandb
import yaml
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from ddlight.callbacks import AudioReconstruction
from ddlight.data.synthetic import SyntheticSounds
from ddlight.distillers.base import Distiller, Synset, save_synset
from ddlight.features import FDMFCC, MFCC, AudioFeatures, FeatureConfig
from ddlight.io import load_json, save_json, save_tensors
from ddlight.networks import build_network
from ddlight.reconstruct import REPORT, main, reconstruct

SAMPLE_RATE, DURATION = 8000, 0.5
CLASSES = ["low", "high"]
IPC = 2


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _clips() -> tuple[Tensor, Tensor]:
    """Decaying harmonic tones: class 0 around 150 Hz, class 1 around 900 Hz, ``IPC`` each."""
    rng = np.random.default_rng(0)
    t = np.arange(int(SAMPLE_RATE * DURATION)) / SAMPLE_RATE
    clips, labels = [], []
    for c, base in enumerate((150.0, 900.0)):
        for f0 in base * rng.uniform(0.9, 1.1, IPC):
            tone = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 4)) * np.exp(-2.0 * t)
            clips.append(0.5 * tone + 0.01 * rng.standard_normal(t.size))
            labels.append(c)
    return torch.tensor(np.stack(clips), dtype=torch.float32), torch.tensor(labels)


def _synset(front: AudioFeatures) -> Synset:
    """A distilled set made of the real (normalised) features of the harmonic clips."""
    waves, labels = _clips()
    front.fit_normalization([waves])
    features = front(waves)
    manifest = {
        "format": "ddlight-synset-1", "method": "real", "ipc": IPC, "classes": CLASSES,
        "sample_rate": SAMPLE_RATE, "duration": DURATION, "features": front.config(),
        "feature_shape": list(features.shape[1:]),
    }
    return Synset(features, labels, front.mean.clone(), front.std.clone(), manifest)


def _small(cls: type[AudioFeatures]) -> AudioFeatures:
    return cls(sample_rate=SAMPLE_RATE, n_fft=256, hop_length=64, n_mels=32, n_mfcc=20)


def _expert_dir(directory: Path, in_shape: list[int], num_classes: int, fit: Synset | None = None) -> Path:
    """A one-expert trajectory folder (TrajectoryRecorder format); its final network fits ``fit`` if given."""
    torch.manual_seed(0)
    net = build_network("mlp", in_shape, num_classes)
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    if fit is not None:
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(50):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(fit.features), fit.targets).backward()
            optimizer.step()
    stacked = {n: torch.stack([start[n], p.detach()]) for n, p in net.named_parameters()}
    save_tensors(directory / "expert_000.safetensors", stacked)
    save_json(directory / "manifest.json", {
        "network": "mlp", "network_options": {}, "in_shape": in_shape, "num_classes": num_classes,
        "experts": [{"file": "expert_000.safetensors", "snapshots": 2}],
    })
    return directory


@pytest.mark.parametrize("cls", [FDMFCC, MFCC])
def test_command_writes_audio_and_measures(tmp_path: Path, cls: type[AudioFeatures]) -> None:
    synset = _synset(_small(cls))
    save_synset(tmp_path / "distilled", synset)
    experts = _expert_dir(tmp_path / "experts", list(synset.features.shape[1:]), len(CLASSES), fit=synset)
    report = main([str(tmp_path / "distilled"), "--n-iter", "16", "--expert-dir", str(experts)])

    for c in CLASSES:
        files = sorted((tmp_path / "distilled" / "audio" / c).glob("*.wav"))
        assert [f.name for f in files] == [f"{c}_{i}.wav" for i in range(IPC)]
        for f in files:
            audio, rate = sf.read(f)
            assert rate == SAMPLE_RATE and len(audio) == SAMPLE_RATE * DURATION
            assert sf.info(f).subtype == "PCM_16"
            assert np.abs(audio).max() == pytest.approx(10 ** (-1 / 20), abs=1e-3)  # -1 dBFS peak
            assert np.sqrt(np.mean(audio**2)) > 0.05  # not silent
    assert load_json(tmp_path / "distilled" / REPORT) == report
    assert (tmp_path / "distilled" / "spectrograms.png").read_bytes()[:4] == b"\x89PNG"
    assert report["invalid"] == [] and len(report["samples"]) == IPC * len(CLASSES)
    # real features survive the round trip: their audio re-analyses close to the target and the features
    assert 0 < report["spectral_convergence"]["mean"] < 0.6
    assert 0 < report["feature_relative_error"]["mean"] < 0.5
    assert set(report["feature_relative_error"]["per_class"]) == set(CLASSES)
    expert = report["expert_accuracy"]
    assert expert["experts"] == 1 and expert["distilled_features"] == 100.0  # percent
    assert expert["reconstructed_audio"] >= 75.0  # the audio still carries its class


def test_measures_tell_noise_from_real_features(tmp_path: Path) -> None:
    synset = _synset(_small(MFCC))
    real = reconstruct(synset, tmp_path / "real", n_iter=16)
    synset.features = torch.randn(synset.features.shape, generator=torch.Generator().manual_seed(0))
    noise = reconstruct(synset, tmp_path / "noise", n_iter=16)
    for key in ("spectral_convergence", "feature_relative_error"):
        assert noise[key]["mean"] > real[key]["mean"] + 0.2
    assert noise["feature_relative_error"]["mean"] > 1.0  # i.i.d. noise is no spectrogram of any sound


def test_nan_samples_are_reported_not_written(tmp_path: Path) -> None:
    synset = _synset(_small(MFCC))
    synset.features[1, 0, 3, 5] = float("nan")
    synset.features[2, 0, 0, 0] = float("inf")
    synset.features[3] = 1e4  # finite, but decodes to infinite power
    save_synset(tmp_path, synset)
    with pytest.warns(UserWarning, match="non-finite"):
        report = main([str(tmp_path), "--n-iter", "4", "--out", str(tmp_path / "out")])
    assert [(s["index"], s["class"]) for s in report["invalid"]] == [(1, "low"), (2, "high"), (3, "high")]
    reasons = [s["reason"] for s in report["invalid"]]
    assert reasons[:2] == ["non-finite features (NaN/inf)"] * 2 and "non-finite audio" in reasons[2]
    written = [p.relative_to(tmp_path / "out" / "audio").as_posix() for p in (tmp_path / "out").rglob("*.wav")]
    assert written == ["low/low_0.wav"] and [s["file"] for s in report["samples"]] == ["audio/low/low_0.wav"]
    assert np.isfinite(report["feature_relative_error"]["mean"])


@pytest.mark.parametrize("change", [{"duration": 1.0}, {"feature_shape": [1, 20, 7]}])
def test_feature_shape_mismatch_is_an_error(tmp_path: Path, change: dict) -> None:
    synset = _synset(_small(MFCC))
    synset.manifest.update(change)
    with pytest.raises(ValueError, match=r"features of shape \[4, 1, 20, 63\] do not match the manifest"):
        reconstruct(synset, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_front_end_without_window_overlap_is_refused(tmp_path: Path) -> None:
    front = MFCC(sample_rate=SAMPLE_RATE, n_fft=256, hop_length=256, n_mels=32, n_mfcc=20)
    with pytest.raises(ValueError, match="cannot be turned back into audio.*hop_length <= n_fft // 2"):
        reconstruct(_synset(front), tmp_path)
    assert not list(tmp_path.iterdir())


def test_missing_or_mismatched_experts_are_skipped(tmp_path: Path) -> None:
    synset = _synset(_small(MFCC))
    missing = reconstruct(synset, tmp_path / "a", n_iter=2, expert_dir=tmp_path / "nowhere")
    assert "configs/expert_" in missing["expert_accuracy"]["skipped"]
    other = _expert_dir(tmp_path / "experts", [1, 20, 9], len(CLASSES))
    mismatched = reconstruct(synset, tmp_path / "b", n_iter=2, expert_dir=other)
    assert mismatched["expert_accuracy"]["skipped"].startswith("experts take [1, 20, 9] with 2 classes")
    assert len(mismatched["samples"]) == len(synset.features)  # the audio is written all the same


class _Nudge(Distiller):
    """A minimal distiller: one gradient step on the synthetic set per step (pull towards zero).

    Like MTT, it keeps ``expert_dir`` as a hyperparameter, where the callback finds it.
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, expert_dir: str | None = None) -> None:
        super().__init__(in_shape, num_classes, ipc=1)
        self.save_hyperparameters()

    def loss(self) -> torch.Tensor:
        return self.synthetic.square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([self.synthetic], lr=0.1)


def test_callback_writes_audio_tree(tmp_path: Path) -> None:
    L.seed_everything(0)
    data = SyntheticSounds(train_per_class=2, val_per_class=1, test_per_class=1, duration=0.25, batch_size=8)
    experts = _expert_dir(tmp_path / "experts", list(data.feature_shape), data.num_classes)
    model = _Nudge(data.feature_shape, data.num_classes, expert_dir=str(experts))
    callback = AudioReconstruction(n_iter=4, every_n_steps=2, max_per_class=1)
    trainer = L.Trainer(
        max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu",
        default_root_dir=tmp_path, callbacks=[callback], limit_val_batches=0,
    )
    trainer.fit(model, datamodule=data)

    distilled = tmp_path / "distilled"
    for root in (distilled, distilled / "step_2"):
        report = load_json(root / REPORT)
        assert len(report["samples"]) == data.num_classes and report["expert_accuracy"]["experts"] == 1
        assert 0 <= report["expert_accuracy"]["reconstructed_audio"] <= 100
        for name in data.classes:
            (wav,) = (root / "audio").glob(f"{name}/*.wav")
            assert sf.info(wav).samplerate == data.sample_rate
        assert (root / "spectrograms.png").is_file()
    assert (distilled / "synset.safetensors").is_file()  # the distiller's own export still happens


def test_callback_refuses_an_uninvertible_set_before_training(tmp_path: Path) -> None:
    features = FeatureConfig(n_fft=256, hop_length=256, n_mels=20, n_mfcc=10)
    data = SyntheticSounds(train_per_class=2, val_per_class=1, test_per_class=1, duration=0.25, features=features)
    model = _Nudge(data.feature_shape, data.num_classes)
    trainer = L.Trainer(
        max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu",
        default_root_dir=tmp_path, callbacks=[AudioReconstruction()], limit_val_batches=0,
    )
    with pytest.raises(ValueError, match="cannot be turned back into audio"):
        trainer.fit(model, datamodule=data)
    assert trainer.global_step == 0


def test_yaml_spec_builds_the_callback() -> None:
    spec = yaml.safe_load((Path(__file__).parents[2] / "callbacks" / "audio_reconstruction.yaml").read_text())
    module, name = spec["class_path"].rsplit(".", 1)
    callback = getattr(importlib.import_module(module), name)(**spec["init_args"])
    assert isinstance(callback, AudioReconstruction) and callback.n_iter == 32 and callback.every_n_steps is None


def test_wandb_gets_audio_and_grid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    L.seed_everything(0)
    data = SyntheticSounds(train_per_class=2, val_per_class=1, test_per_class=1, duration=0.25, batch_size=8)
    model = _Nudge(data.feature_shape, data.num_classes)
    logger = WandbLogger(project="ddlight-test", save_dir=str(tmp_path), offline=True)
    trainer = L.Trainer(
        max_steps=1, logger=logger, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu",
        callbacks=[AudioReconstruction(n_iter=2)], limit_val_batches=0,
    )
    trainer.fit(model, datamodule=data)
    wandb.finish()
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert len(list(run.glob("files/media/audio/**/*.wav"))) == data.num_classes
    assert list(run.glob("files/media/images/**/*.png"))
    # the run's own folder (runs/<project>/<run id>), not the save_dir every W&B run shares
    assert (tmp_path / "ddlight-test" / logger.version / "distilled" / REPORT).is_file()
    assert not (tmp_path / "distilled").exists()
