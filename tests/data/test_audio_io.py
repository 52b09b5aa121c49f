"""Decoding single files: formats, channels, resampling, length, and every kind of bad file."""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from ddlight.data.audio_io import AudioDecodeError, load_audio, read_audio


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "FLOAT"])
def test_pcm_widths_and_float_decode_to_the_written_signal(tmp_path: Path, wav, subtype: str) -> None:
    path = wav(tmp_path / f"{subtype}.wav", subtype=subtype)
    reference, _ = sf.read(path, dtype="float32")
    out = load_audio(path, 8000, 2000)
    assert out.dtype == np.float32 and out.shape == (2000,)
    tolerance = 1 / 64 if subtype == "PCM_U8" else 1e-4
    np.testing.assert_allclose(out, reference, atol=tolerance)
    assert np.abs(out).max() > 0.4  # the 0.5-amplitude tone survived the format


def test_stereo_is_downmixed_by_channel_mean(tmp_path: Path, wav) -> None:
    path = wav(tmp_path / "stereo.wav", channels=2, subtype="FLOAT")
    both, _ = sf.read(path, dtype="float32")
    np.testing.assert_allclose(load_audio(path, 8000, 2000), both.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize("rate", [44100, 48000])
def test_resampling_matches_librosa(tmp_path: Path, wav, rate: int) -> None:
    path = wav(tmp_path / f"{rate}.wav", sample_rate=rate, subtype="FLOAT", freq=1000.0)
    original, _ = sf.read(path, dtype="float32")
    expected = librosa.resample(original, orig_sr=rate, target_sr=16000, res_type="soxr_hq")
    out = read_audio(path, 16000)
    assert abs(len(out) - len(expected)) <= 1
    n = min(len(out), len(expected))
    np.testing.assert_allclose(out[:n], expected[:n], atol=1e-3)
    assert len(out) == pytest.approx(0.25 * 16000, abs=1)


def test_crop_from_start_and_zero_pad(tmp_path: Path, wav) -> None:
    path = wav(tmp_path / "a.wav", subtype="FLOAT")  # 2000 samples at 8 kHz
    full = read_audio(path, 8000)
    np.testing.assert_array_equal(load_audio(path, 8000, 500), full[:500])
    padded = load_audio(path, 8000, 3000)
    np.testing.assert_array_equal(padded[:2000], full)
    assert not padded[2000:].any()


def _wav_bytes(tmp_path: Path, wav) -> bytes:
    return wav(tmp_path / "good.wav").read_bytes()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p, good: None, "file not found"),
        (lambda p, good: p.write_bytes(b""), "empty file"),
        (lambda p, good: sf.write(p, np.zeros(0, np.float32), 8000), "no audio frames"),
        (lambda p, good: p.write_bytes(good[:44]), "truncated WAV"),
        (lambda p, good: p.write_bytes(good[: len(good) // 2]), "truncated WAV"),
        (lambda p, good: p.write_bytes(good[:30]), "corrupt or not an audio file"),
        (lambda p, good: p.write_text("this is a text file, not audio\n" * 20), "corrupt or not an audio file"),
    ],
    ids=["missing", "empty", "no-frames", "header-only", "truncated", "cut-header", "not-audio"],
)
def test_bad_files_raise_naming_path_and_reason(tmp_path: Path, wav, make, reason: str) -> None:
    good = _wav_bytes(tmp_path, wav)
    path = tmp_path / "bad.wav"
    make(path, good)
    with pytest.raises(AudioDecodeError, match=reason) as info:
        load_audio(path, 8000, 2000)
    assert str(path) in str(info.value) and "skip_bad_files" in str(info.value)
    assert isinstance(info.value, ValueError) and info.value.path == path


def test_non_finite_samples_are_an_error(tmp_path: Path) -> None:
    data = np.zeros(800, dtype=np.float32)
    data[10] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, data, 8000, subtype="FLOAT")
    with pytest.raises(AudioDecodeError, match="non-finite"):
        load_audio(path, 8000, 800)
