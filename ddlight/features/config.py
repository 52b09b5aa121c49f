"""Typed feature configuration used by the DataModules and stored in manifests."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from ddlight.features.base import AudioFeatures
from ddlight.features.fdmfcc import FDMFCC
from ddlight.features.mel import MFCC, LogMel

FEATURES: dict[str, type[AudioFeatures]] = {"logmel": LogMel, "mfcc": MFCC, "fdmfcc": FDMFCC}


@dataclass
class FeatureConfig:
    """Which front end to run on the device, and its STFT/mel parameters.

    Args:
        name: ``fdmfcc`` (DDFAD's MFCC + delta + delta-delta), ``mfcc`` or ``logmel``.
        n_fft: FFT size in samples.
        hop_length: Hop between frames in samples.
        n_mels: Number of mel bands.
        n_mfcc: Number of cepstral coefficients (ignored by ``logmel``).
        f_min: Lowest mel band edge in Hz.
        f_max: Highest mel band edge in Hz (``None``: Nyquist).
        top_db: Dynamic range kept below each clip's peak, in dB.
        delta_width: Delta regression window (``fdmfcc`` only).
    """

    name: Literal["fdmfcc", "mfcc", "logmel"] = "fdmfcc"
    n_fft: int = 512
    hop_length: int = 160
    n_mels: int = 40
    n_mfcc: int = 20
    f_min: float = 0.0
    f_max: float | None = None
    top_db: float | None = 80.0
    delta_width: int = 9

    def build(self, sample_rate: int) -> AudioFeatures:
        """Instantiate the front end for waveforms sampled at ``sample_rate`` Hz."""
        return build_features({**asdict(self), "sample_rate": sample_rate})


def build_features(config: dict[str, Any]) -> AudioFeatures:
    """Rebuild a front end from :meth:`AudioFeatures.config` output (e.g. read from a manifest).

    Keys a front end does not take (``n_mfcc`` for ``logmel``) are ignored.
    """
    config = dict(config)
    name = config.pop("name")
    if name not in FEATURES:
        raise ValueError(f"unknown feature front end {name!r}; choose one of {sorted(FEATURES)}")
    cls = FEATURES[name]
    common = {"sample_rate", "n_fft", "hop_length", "n_mels", "f_min", "f_max", "top_db"}
    extra = {LogMel: set(), MFCC: {"n_mfcc"}, FDMFCC: {"n_mfcc", "delta_width"}}[cls]
    return cls(**{k: v for k, v in config.items() if k in common | extra})
