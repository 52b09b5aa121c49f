"""Forward path of the feature front ends against librosa, shapes, normalisation, rebuilding."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from ddlight.features import FDMFCC, MFCC, AudioFeatures, LogMel, build_features

SAMPLE_RATE = 16000  # the front ends' default, as in conftest.harmonic_clips

STFT = {"sr": SAMPLE_RATE, "n_fft": 512, "hop_length": 160, "n_mels": 40, "htk": False}
DB_TOLERANCE = 0.05  # dB (and MFCC units): float32 nnAudio kernels vs float64-accumulating librosa


def librosa_log_mel(clip: np.ndarray) -> np.ndarray:
    mel = librosa.feature.melspectrogram(y=clip, center=True, pad_mode="constant", **STFT)
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=80.0)


def librosa_mfcc(clip: np.ndarray) -> np.ndarray:
    return librosa.feature.mfcc(y=clip, n_mfcc=20, center=True, pad_mode="constant", **STFT)


def test_log_mel_matches_librosa(clips: np.ndarray) -> None:
    ours = LogMel().extract(torch.from_numpy(clips))[:, 0].numpy()
    expected = np.stack([librosa_log_mel(c) for c in clips])
    np.testing.assert_allclose(ours, expected, atol=DB_TOLERANCE)


def test_mfcc_matches_librosa(clips: np.ndarray) -> None:
    ours = MFCC().extract(torch.from_numpy(clips))[:, 0].numpy()
    expected = np.stack([librosa_mfcc(c) for c in clips])
    np.testing.assert_allclose(ours, expected, atol=DB_TOLERANCE)


def test_fdmfcc_channels_are_mfcc_and_its_deltas(clips: np.ndarray) -> None:
    waves = torch.from_numpy(clips)
    feats = FDMFCC().extract(waves).numpy()
    torch.testing.assert_close(torch.from_numpy(feats[:, 0]), MFCC().extract(waves)[:, 0])
    # ddlight replicates the edge frames: librosa's mode="nearest", on every frame
    d1 = librosa.feature.delta(feats[:, 0], width=9, mode="nearest")
    d2 = librosa.feature.delta(d1, width=9, mode="nearest")
    np.testing.assert_allclose(feats[:, 1], d1, atol=1e-4)
    np.testing.assert_allclose(feats[:, 2], d2, atol=1e-4)
    # librosa's default (mode="interp") fits a polynomial at the edges: only the interior agrees
    interp = librosa.feature.delta(feats[:, 0], width=9)
    np.testing.assert_allclose(feats[:, 1, :, 4:-4], interp[..., 4:-4], atol=1e-4)
    assert np.abs(feats[:, 1, :, :4] - interp[..., :4]).max() > 1e-2


@pytest.mark.parametrize("cls", [LogMel, MFCC, FDMFCC])
def test_output_shape_matches_forward(cls: type[AudioFeatures], clips: np.ndarray) -> None:
    front = cls()
    assert front(torch.from_numpy(clips)).shape[1:] == front.output_shape(clips.shape[1])


@pytest.mark.parametrize("cls", [LogMel, FDMFCC])
def test_fit_normalization_standardises_the_fitting_data(
    cls: type[AudioFeatures], clips: np.ndarray
) -> None:
    front = cls()
    waves = torch.from_numpy(clips)
    front.fit_normalization([waves[:2], waves[2:]])
    feats = front(waves).double()
    assert bool(front.fitted)
    torch.testing.assert_close(feats.mean(dim=(0, 3)), torch.zeros(feats.shape[1:3]).double(),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(feats.std(dim=(0, 3), correction=0),
                               torch.ones(feats.shape[1:3]).double(), atol=1e-3, rtol=0)
    torch.testing.assert_close(front.denormalize(front(waves)), front.extract(waves))


@pytest.mark.parametrize("cls", [LogMel, MFCC, FDMFCC])
def test_build_features_round_trip(cls: type[AudioFeatures], clips: np.ndarray) -> None:
    front = cls(n_mels=32, hop_length=128)
    rebuilt = build_features(front.config())
    assert type(rebuilt) is cls
    assert rebuilt.config() == front.config()
    waves = torch.from_numpy(clips)
    torch.testing.assert_close(rebuilt(waves), front(waves))
