"""Base class of the on-device feature front ends.

Every front end turns a batch of mono waveforms ``[B, L]`` into normalised features
``[B, C, F, T]`` (channels, frequency bins or coefficients, frames). The STFT and mel filter bank come
from nnAudio (fixed, non-trainable kernels, so they run on whatever device the batch is on). The
per-(channel, bin) normalisation statistics are buffers computed once from the training split.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from nnAudio.features import MelSpectrogram
from torch import Tensor, nn
from tqdm.auto import tqdm

from ddlight.features.griffin_lim import griffin_lim
from ddlight.features.inversion import mel_to_linear


class AudioFeatures(nn.Module, ABC):
    """Log-mel based feature extractor with stored normalisation statistics.

    Subclasses implement :meth:`extract` (waveform → raw features), :meth:`features_to_log_mel` (its
    inverse as far as it goes, for :meth:`invert`) and :attr:`channels` / :attr:`bins`. The STFT
    uses ``pad_mode="constant"`` and a periodic Hann window, which is what librosa (>= 0.10) does,
    so values agree with ``librosa.feature.melspectrogram``.

    Args:
        sample_rate: Sampling rate of the input waveforms in Hz.
        n_fft: FFT size in samples.
        hop_length: Hop between frames in samples.
        n_mels: Number of mel bands.
        f_min: Lowest mel band edge in Hz.
        f_max: Highest mel band edge in Hz (``None``: Nyquist).
        top_db: Dynamic range kept below each clip's maximum, in dB (``None``: no clipping).
    """

    name: ClassVar[str] = ""

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 512,
        hop_length: int = 160,
        n_mels: int = 40,
        f_min: float = 0.0,
        f_max: float | None = None,
        top_db: float | None = 80.0,
    ) -> None:
        super().__init__()
        if n_fft <= 0 or hop_length <= 0 or n_mels <= 0:
            raise ValueError(
                f"n_fft, hop_length and n_mels must be positive, got {n_fft}, {hop_length}, {n_mels}"
            )
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.f_min = f_min
        self.f_max = f_max
        self.top_db = top_db
        self.melspec = MelSpectrogram(
            sr=sample_rate,
            n_fft=n_fft,
            n_mels=n_mels,
            hop_length=hop_length,
            window="hann",
            center=True,
            pad_mode="constant",
            power=2.0,
            htk=False,
            fmin=f_min,
            fmax=f_max,
            norm=1,
            trainable_mel=False,
            trainable_STFT=False,
            verbose=False,
        )
        self.register_buffer("mean", torch.zeros(self.channels, self.bins, 1))
        self.register_buffer("std", torch.ones(self.channels, self.bins, 1))
        self.register_buffer("fitted", torch.tensor(False))

    @property
    def channels(self) -> int:
        """Number of feature channels ``C``."""
        return 1

    @property
    def bins(self) -> int:
        """Number of frequency bins or coefficients ``F``."""
        return self.n_mels

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this front end (see :func:`ddlight.features.build_features`)."""
        return {
            "name": self.name,
            "sample_rate": self.sample_rate,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "n_mels": self.n_mels,
            "f_min": self.f_min,
            "f_max": self.f_max,
            "top_db": self.top_db,
        }

    def num_frames(self, num_samples: int) -> int:
        """Number of frames produced for a clip of ``num_samples`` samples (centred STFT)."""
        return num_samples // self.hop_length + 1

    def output_shape(self, num_samples: int) -> tuple[int, int, int]:
        """Feature shape ``(C, F, T)`` of one clip of ``num_samples`` samples."""
        return (self.channels, self.bins, self.num_frames(num_samples))

    def log_mel(self, waveform: Tensor) -> Tensor:
        """Log-mel power spectrogram in dB, ``[B, n_mels, T]``, clipped ``top_db`` below each clip's max."""
        power = self.melspec(waveform)
        db = 10.0 * torch.log10(torch.clamp(power, min=1e-10))
        if self.top_db is not None:
            peak = db.amax(dim=(-2, -1), keepdim=True)
            db = torch.maximum(db, peak - self.top_db)
        return db

    @abstractmethod
    def extract(self, waveform: Tensor) -> Tensor:
        """Raw (unnormalised) features ``[B, C, F, T]`` of waveforms ``[B, L]``."""

    def normalize(self, features: Tensor) -> Tensor:
        """Apply the stored per-(channel, bin) standardisation."""
        return (features - self.mean) / self.std

    def denormalize(self, features: Tensor) -> Tensor:
        """Undo :meth:`normalize`."""
        return features * self.std + self.mean

    def forward(self, waveform: Tensor) -> Tensor:
        """Normalised features ``[B, C, F, T]`` of waveforms ``[B, L]``."""
        if waveform.dim() == 3:  # [B, 1, L]
            waveform = waveform.squeeze(1)
        return self.normalize(self.extract(waveform.float()))

    @torch.no_grad()
    def fit_normalization(
        self, batches: Iterable[Tensor], total: int | None = None, show_progress: bool = True
    ) -> None:
        """Compute mean/std per (channel, bin) over all clips and frames of ``batches``.

        Args:
            batches: Iterable of waveform batches ``[B, L]`` (e.g. the training split).
            total: Number of batches, for the progress bar.
            show_progress: Show that bar (on stderr).
        """
        count = 0
        acc = torch.zeros(self.channels, self.bins, 1, dtype=torch.float64)
        acc_sq = torch.zeros_like(acc)
        device = self.mean.device
        for wave in tqdm(batches, total=total, desc="normalisation statistics", leave=False, disable=not show_progress):
            feats = self.extract(wave.to(device).float()).double()
            acc += feats.sum(dim=(0, 3), keepdim=False).unsqueeze(-1).cpu()
            acc_sq += feats.pow(2).sum(dim=(0, 3)).unsqueeze(-1).cpu()
            count += feats.shape[0] * feats.shape[3]
        if count == 0:
            raise ValueError("cannot compute normalisation statistics from an empty split")
        mean = acc / count
        var = (acc_sq / count - mean.pow(2)).clamp_min(0.0)
        self.mean.copy_(mean.float())
        self.std.copy_(var.sqrt().clamp_min(1e-5).float())
        self.fitted.fill_(True)

    @abstractmethod
    def features_to_log_mel(self, features: Tensor) -> Tensor:
        """dB log-mel ``[B, n_mels, T]`` of raw (unnormalised) features ``[B, C, F, T]``."""

    def log_mel_to_audio(
        self,
        log_mel: Tensor,
        n_iter: int = 32,
        length: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Waveforms ``[B, length]`` of dB log-mel spectrograms ``[B, n_mels, T]``.

        :meth:`log_mel_to_magnitude`, then Griffin-Lim with random initial phase.
        """
        magnitude = self.log_mel_to_magnitude(log_mel)
        return griffin_lim(magnitude, self.n_fft, self.hop_length, n_iter, length=length, generator=generator)

    def log_mel_to_magnitude(self, log_mel: Tensor) -> Tensor:
        """Linear STFT magnitude ``[B, n_fft//2+1, T]`` implied by dB log-mel ``[B, n_mels, T]``.

        dB → mel power → linear power (non-negative least squares against the nnAudio filter bank)
        → square root: the magnitude that Griffin-Lim in :meth:`log_mel_to_audio` is asked to match.
        """
        mel_power = torch.pow(10.0, log_mel / 10.0)
        return mel_to_linear(mel_power, self.melspec.mel_basis, method="nnls").sqrt()

    def check_features(self, features: Tensor) -> None:
        """Raise ``ValueError`` unless ``features`` is a finite ``[B, channels, bins, T]`` batch."""
        expected = f"[B, {self.channels}, {self.bins}, T]"
        if features.dim() != 4 or tuple(features.shape[1:3]) != (self.channels, self.bins):
            raise ValueError(
                f"{type(self).__name__} expects features {expected}, got {list(features.shape)}"
            )
        if not torch.isfinite(features).all():
            raise ValueError("features contain NaN or inf values; refusing to synthesise audio")

    @torch.no_grad()
    def invert(
        self,
        features: Tensor,
        n_iter: int = 32,
        normalized: bool = True,
        length: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Waveforms ``[B, length]`` whose features approximate ``features`` ``[B, C, F, T]``.

        Runs on the device of this module. The level of the result is only as good as the features:
        the ``top_db`` floor is kept as it is (content below it is lost), and the normalisation is
        undone with the stored statistics only when ``normalized`` — treat the loudness of the
        output as arbitrary and rescale it for listening.

        Args:
            features: Feature batch ``[B, channels, bins, T]``, e.g. a distilled synthetic set.
            n_iter: Griffin-Lim iterations.
            normalized: Whether ``features`` are normalised (the output of :meth:`forward`) rather
                than raw (the output of :meth:`extract`).
            length: Output length in samples (``None``: ``(T-1) * hop_length``).
            generator: Random generator for Griffin-Lim's initial phase.

        Raises:
            ValueError: If the shape does not match this front end, the features are not finite,
                or they decode to non-finite audio (absurdly large values).
        """
        self.check_features(features)
        features = features.to(self.mean.device, torch.float32)
        raw = self.denormalize(features) if normalized else features
        waveform = self.log_mel_to_audio(self.features_to_log_mel(raw), n_iter, length, generator)
        if not torch.isfinite(waveform).all():
            raise ValueError("features decode to non-finite audio (log-mel values too large?)")
        return waveform
