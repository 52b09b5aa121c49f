"""SyntheticSounds: procedurally generated sound classes, the embedded default dataset.

No files are read or written: every clip is synthesised in memory from a seed, so every command of
ddlight runs on a fresh machine. The classes are built to be *learnable but not trivial*: several
share pitch ranges and spectral shape (a tone, a vibrato tone and a tremolo tone overlap in pitch; the
two sweeps differ only in direction; the noise bursts overlap in band), and every clip varies in pitch,
onset, length, envelope, level and background-noise SNR. A ConvNet trained on the full training split
reaches high accuracy, while one real clip per class is far from enough — which leaves room for dataset
distillation to show its worth.

Splits are drawn from independent streams of one seed (``train``: ``train_per_class`` clips per class,
``val`` and ``test`` likewise), so they never share a clip and are identical on every machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ddlight.data.base import AudioDataModule, WaveformSet
from ddlight.features import FeatureConfig

Generator = Callable[[np.random.Generator, np.ndarray, float], np.ndarray]


def _tone(freq: np.ndarray | float, t: np.ndarray, sr: float) -> np.ndarray:
    """Sine of (possibly time-varying) frequency ``freq`` in Hz."""
    freq = np.broadcast_to(freq, t.shape)
    return np.sin(2 * np.pi * np.cumsum(freq) / sr)


def _lowpass_noise(rng: np.random.Generator, n: int, cutoff: float, sr: float, order: int = 1) -> np.ndarray:
    """White noise shaped by an FFT brick-wall band ``[0, cutoff]`` (or a high band if cutoff < 0)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    mask = freqs <= cutoff if cutoff > 0 else freqs >= -cutoff
    out = np.fft.irfft(spec * mask, n)
    return out / (np.abs(out).max() + 1e-9)


def _harmonic(rng: np.random.Generator, t: np.ndarray, sr: float) -> np.ndarray:
    f0 = rng.uniform(180, 420)
    return sum(_tone(f0 * k, t, sr) / k for k in range(1, 7))


def _sweep(direction: float) -> Generator:
    def generate(rng: np.random.Generator, t: np.ndarray, sr: float) -> np.ndarray:
        lo, hi = rng.uniform(250, 700), rng.uniform(1400, 3200)
        ramp = np.linspace(0, 1, t.size)
        ramp = ramp if direction > 0 else ramp[::-1]
        return _tone(lo * (hi / lo) ** ramp, t, sr)

    return generate


def _vibrato(rng: np.random.Generator, t: np.ndarray, sr: float) -> np.ndarray:
    f0, depth, rate = rng.uniform(400, 1000), rng.uniform(0.03, 0.08), rng.uniform(4, 9)
    return _tone(f0 * (1 + depth * np.sin(2 * np.pi * rate * t)), t, sr)


def _tremolo(rng: np.random.Generator, t: np.ndarray, sr: float) -> np.ndarray:
    f0, rate = rng.uniform(400, 1000), rng.uniform(6, 14)
    return _tone(f0, t, sr) * (0.55 + 0.45 * np.sin(2 * np.pi * rate * t))


def _steady(rng: np.random.Generator, t: np.ndarray, sr: float) -> np.ndarray:
    return _tone(rng.uniform(400, 1000), t, sr)


def _noise_band(low: bool) -> Generator:
    def generate(rng: np.random.Generator, t: np.ndarray, sr: float) -> np.ndarray:
        cutoff = rng.uniform(600, 1500) if low else -rng.uniform(2500, 4500)
        return _lowpass_noise(rng, t.size, cutoff, sr)

    return generate


def _clicks(rng: np.random.Generator, t: np.ndarray, sr: float) -> np.ndarray:
    period = int(sr / rng.uniform(6, 20))
    out = np.zeros(t.size)
    out[rng.integers(0, period) :: period] = 1.0
    kernel = np.exp(-np.arange(int(0.004 * sr)) / (0.001 * sr))
    return np.convolve(out, kernel)[: t.size]


def _two_notes(rng: np.random.Generator, t: np.ndarray, sr: float) -> np.ndarray:
    f1 = rng.uniform(300, 800)
    f2 = f1 * 2 ** (rng.choice([-1, 1]) * rng.uniform(4, 7) / 12)
    split = rng.uniform(0.35, 0.65) * t[-1]
    return _tone(np.where(t < split, f1, f2), t, sr)


def _kick(rng: np.random.Generator, t: np.ndarray, sr: float) -> np.ndarray:
    start, end, decay = rng.uniform(120, 220), rng.uniform(40, 70), rng.uniform(12, 30)
    freq = end + (start - end) * np.exp(-t * decay * 2)
    hits = np.zeros(t.size)
    for onset in rng.uniform(0, t[-1] * 0.7, size=rng.integers(1, 4)):
        local = np.clip(t - onset, 0, None)
        hits += (t >= onset) * np.exp(-local * decay) * _tone(freq, t, sr)
    return hits


CLASSES: dict[str, Generator] = {
    "steady_tone": _steady,
    "vibrato_tone": _vibrato,
    "tremolo_tone": _tremolo,
    "harmonic_tone": _harmonic,
    "sweep_up": _sweep(+1),
    "sweep_down": _sweep(-1),
    "two_notes": _two_notes,
    "low_noise": _noise_band(low=True),
    "high_noise": _noise_band(low=False),
    "clicks": _clicks,
    "kick": _kick,
}


def synthesize(label: int, rng: np.random.Generator, num_samples: int, sample_rate: int) -> np.ndarray:
    """One clip of class ``label``: the class's source, a random envelope and placement, background noise.

    Args:
        label: Class index into :data:`CLASSES`.
        rng: Random generator (consumed).
        num_samples: Clip length in samples.
        sample_rate: Sampling rate in Hz.

    Returns:
        float32 waveform of ``num_samples`` samples, peak amplitude below 1.
    """
    generate = list(CLASSES.values())[label]
    length = int(num_samples * rng.uniform(0.45, 0.9))
    t = np.arange(length) / sample_rate
    source = generate(rng, t, sample_rate)
    source = source / (np.abs(source).max() + 1e-9)
    attack = max(1, int(length * rng.uniform(0.01, 0.2)))
    release = max(1, int(length * rng.uniform(0.05, 0.5)))
    envelope = np.ones(length)
    envelope[:attack] = np.linspace(0, 1, attack)
    envelope[-release:] = np.minimum(envelope[-release:], np.linspace(1, 0, release))
    clip = np.zeros(num_samples)
    start = rng.integers(0, num_samples - length + 1)
    clip[start : start + length] = source * envelope * rng.uniform(0.3, 0.9)
    snr_db = rng.uniform(0, 20)
    noise = rng.standard_normal(num_samples)
    signal_power = np.mean(clip[start : start + length] ** 2)
    clip += noise * math.sqrt(signal_power / 10 ** (snr_db / 10))
    return (clip / max(1.0, np.abs(clip).max() / 0.99)).astype(np.float32)


class SyntheticSounds(AudioDataModule):
    """Procedural sound classes generated in memory (no files): the embedded default dataset.

    Eleven classes (``steady_tone``, ``vibrato_tone``, ``tremolo_tone``, ``harmonic_tone``,
    ``sweep_up``, ``sweep_down``, ``two_notes``, ``low_noise``, ``high_noise``, ``clicks``, ``kick``)
    with random pitch, timing, length, envelope, level and 0–20 dB background noise. Deterministic per
    ``seed``; licence: generated, public domain.

    Args:
        train_per_class: Training clips per class.
        val_per_class: Validation clips per class.
        test_per_class: Test clips per class.
        sample_rate: Sampling rate in Hz.
        duration: Clip length in seconds.
        features: Feature front end applied on the device.
        batch_size: Batch size of all loaders.
        num_workers: DataLoader worker processes for splits served as waveforms (a cached split needs none).
        seed: Seed of the generator; the same seed gives the same clips everywhere.
        cache_features: Compute each split's features once and serve them every epoch (see
            :class:`~ddlight.data.base.AudioDataModule`); off: the front end runs on every batch.
    """

    name = "synthetic"

    def __init__(
        self,
        train_per_class: int = 160,
        val_per_class: int = 20,
        test_per_class: int = 60,
        sample_rate: int = 16000,
        duration: float = 1.0,
        features: FeatureConfig | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        cache_features: bool = True,
    ) -> None:
        super().__init__(sample_rate, duration, features, batch_size, num_workers, seed, cache_features)
        if min(train_per_class, val_per_class, test_per_class) < 1:
            raise ValueError("train_per_class, val_per_class and test_per_class must be >= 1")
        self.per_class = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
        self.classes = list(CLASSES)

    def load_splits(self) -> dict[str, WaveformSet]:
        streams = np.random.SeedSequence(self.seed).spawn(len(self.per_class))
        splits = {}
        for (split, count), stream in zip(self.per_class.items(), streams):
            rng = np.random.default_rng(stream)
            labels = np.repeat(np.arange(self.num_classes), count)
            rng.shuffle(labels)
            waves = np.stack([synthesize(int(y), rng, self.num_samples, self.sample_rate) for y in labels])
            splits[split] = WaveformSet(waves, labels.astype(np.int64))
        return splits
