"""FD-MFCC: the fused differential MFCC of DDFAD (MFCC, delta and delta-delta as three channels)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ddlight.features.mel import MFCC


def delta(x: Tensor, width: int = 9) -> Tensor:
    """Local regression slope along the last axis: ``librosa.feature.delta(x, width, mode="nearest")``.

    Uses ``d_t = sum_n n (x_{t+n} - x_{t-n}) / (2 sum_n n^2)`` for ``n = 1..width//2`` with edge
    replication. librosa's default ``mode="interp"`` fits a polynomial at the edges instead, so its
    first and last ``width // 2`` frames differ (BENCHMARKS.md, "Features against librosa").

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

    :meth:`invert` uses all three channels: it rebuilds audio from the static MFCC that best
    explains the static, delta and delta-delta channels together (:meth:`static_from_deltas`). For features
    computed from audio that is channel 0 itself; for distilled features, whose channels were
    optimised independently and no longer agree, it averages out part of the disagreement.

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

    def static_from_deltas(self, features: Tensor) -> Tensor:
        """Static MFCC ``[B, n_mfcc, T]`` that best explains all channels of raw ``features``.

        Weighted least squares per coefficient ``k``:
        ``min_s sum_c ||A_c s - y_c||^2 / std_ck^2`` with ``A_0 = I``, ``A_1 = delta``,
        ``A_2 = delta o delta`` (linear maps along time) and ``std`` the normalisation statistics,
        i.e. equal trust in every channel in normalised units. Consistent features (computed from
        audio) are returned unchanged: there ``s = y_0`` fits exactly. On the clips of
        ``benchmarks/inversion.py`` with i.i.d. noise of std 0.3 (1.0) added to the normalised
        features, it lowers the spectral convergence of the rebuilt audio from 0.68 to 0.64 (from
        1.67 to 0.83; 0.63 without noise).

        Args:
            features: Raw (denormalised) FD-MFCC ``[B, 3, n_mfcc, T]``.
        """
        eye = torch.eye(features.shape[-1], dtype=features.dtype, device=features.device)
        d1 = delta(eye, self.delta_width)  # delta(x) == x @ d1 for rows x
        ops = torch.stack([eye, d1, d1 @ d1])
        weights = self.std[..., 0].to(features).pow(-2)
        gram = torch.einsum("ck,cij,clj->kil", weights, ops, ops)
        rhs = torch.einsum("ck,bckj,cij->kib", weights, features, ops)
        return torch.linalg.solve(gram, rhs).permute(2, 0, 1)

    def features_to_log_mel(self, features: Tensor) -> Tensor:
        return super().features_to_log_mel(self.static_from_deltas(features).unsqueeze(1))
