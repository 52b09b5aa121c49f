"""Log-mel spectrogram and MFCC front ends."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ddlight.features.base import AudioFeatures
from ddlight.features.inversion import idct


def dct_matrix(n_mels: int, n_coeffs: int) -> Tensor:
    """Orthonormal DCT-II basis ``[n_coeffs, n_mels]`` (as ``scipy.fft.dct(norm="ortho")``)."""
    n = torch.arange(n_mels, dtype=torch.float64)
    k = torch.arange(n_coeffs, dtype=torch.float64).unsqueeze(1)
    basis = torch.cos(math.pi / n_mels * (n + 0.5) * k) * math.sqrt(2.0 / n_mels)
    basis[0] /= math.sqrt(2.0)
    return basis.float()


class LogMel(AudioFeatures):
    """Log-mel spectrogram in dB, one channel: ``[B, 1, n_mels, T]``."""

    name = "logmel"

    def extract(self, waveform: Tensor) -> Tensor:
        return self.log_mel(waveform).unsqueeze(1)

    def features_to_log_mel(self, features: Tensor) -> Tensor:
        return features[:, 0]


class MFCC(AudioFeatures):
    """Mel-frequency cepstral coefficients (DCT-II of the dB log-mel), one channel ``[B, 1, n_mfcc, T]``.

    Matches ``librosa.feature.mfcc`` with the same STFT/mel arguments.

    Args:
        n_mfcc: Number of cepstral coefficients kept.
        **see** :class:`~ddlight.features.base.AudioFeatures` for the other arguments.
    """

    name = "mfcc"

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 512,
        hop_length: int = 160,
        n_mels: int = 40,
        n_mfcc: int = 20,
        f_min: float = 0.0,
        f_max: float | None = None,
        top_db: float | None = 80.0,
    ) -> None:
        if not 0 < n_mfcc <= n_mels:
            raise ValueError(f"n_mfcc must be in 1..n_mels={n_mels}, got {n_mfcc}")
        self.n_mfcc = n_mfcc
        super().__init__(sample_rate, n_fft, hop_length, n_mels, f_min, f_max, top_db)
        self.register_buffer("dct", dct_matrix(n_mels, n_mfcc), persistent=False)

    @property
    def bins(self) -> int:
        return self.n_mfcc

    def config(self) -> dict[str, Any]:
        return {**super().config(), "n_mfcc": self.n_mfcc}

    def mfcc(self, waveform: Tensor) -> Tensor:
        """MFCCs ``[B, n_mfcc, T]``."""
        return torch.einsum("km,bmt->bkt", self.dct, self.log_mel(waveform))

    def extract(self, waveform: Tensor) -> Tensor:
        return self.mfcc(waveform).unsqueeze(1)

    def features_to_log_mel(self, features: Tensor) -> Tensor:
        """dB log-mel of the static MFCC channel 0 (inverse DCT; truncated coefficients are zero).

        Only channel 0 is read; :class:`~ddlight.features.fdmfcc.FDMFCC` first folds its delta
        channels into it.
        """
        return idct(features[:, 0], self.dct)
