"""FD-MFCC: the fused differential MFCC of DDFAD (MFCC, delta and delta-delta as three channels)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ddlight.features.mel import MFCC


def delta(x: Tensor, width: int = 9) -> Tensor:
    """Local regression slope along the last axis (``librosa.feature.delta`` away from the edges).

    Uses ``d_t = sum_n n (x_{t+n} - x_{t-n}) / (2 sum_n n^2)`` for ``n = 1..width//2`` with edge
    replication; librosa's Savitzky-Golay filter of order 1 gives the same values in the interior.

    Args:
        x: Tensor ``[..., T]``.
        width: Odd window length, at least 3.
    """
    if width < 3 or width % 2 == 0:
        raise ValueError(f"delta width must be odd and >= 3, got {width}")
    half = width // 2
    n = torch.arange(-half, half + 1, dtype=x.dtype, device=x.device)
    kernel = (n / n.pow(2).sum()).view(1, 1, -1)  # cross-correlation: w[n] = n / sum n^2
    shape = x.shape
    flat = F.pad(x.reshape(-1, 1, shape[-1]), (half, half), mode="replicate")
    return F.conv1d(flat, kernel).reshape(shape)


class FDMFCC(MFCC):
    """MFCC with first- and second-order deltas stacked as channels: ``[B, 3, n_mfcc, T]``.

    :meth:`invert` rebuilds audio from the static MFCC channel 0 alone and ignores the delta
    channels: for features computed from audio they are a fixed linear function of channel 0 and add
    no information, and for distilled features there is no ground truth that says whether the static
    channel or the deltas should win where they disagree.

    Args:
        delta_width: Window of the delta regression (odd).
        **see** :class:`~ddlight.features.mel.MFCC` for the other arguments.
    """

    name = "fdmfcc"

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
        delta_width: int = 9,
    ) -> None:
        self.delta_width = delta_width
        super().__init__(sample_rate, n_fft, hop_length, n_mels, n_mfcc, f_min, f_max, top_db)

    @property
    def channels(self) -> int:
        return 3

    def config(self) -> dict[str, Any]:
        return {**super().config(), "delta_width": self.delta_width}

    def extract(self, waveform: Tensor) -> Tensor:
        static = self.mfcc(waveform)
        d1 = delta(static, self.delta_width)
        d2 = delta(d1, self.delta_width)
        return torch.stack([static, d1, d2], dim=1)
