"""Differentiable augmentation of spectrogram-like audio features ``[B, C, F, T]``.

One module, used the same way while distilling (gradients flow through it to the synthetic set, as in
DSA) and while evaluating (fresh networks trained on a synthetic or subset set). Every op is sampled
per sample and applied as an arithmetic operation on ``x`` (a shift, a multiplicative 0/1 mask, a gain,
added noise), so the output is differentiable w.r.t. ``x`` and masked values simply get zero gradient.
There are no image flips or rotations: reversing time or frequency changes what a sound *is*.

The features are assumed normalised (zero mean, unit std per channel and bin), so zero is the
"average" value: masking or shifting in zeros means "typical level", not silence in dB.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SpecAugment(nn.Module):
    """Random time shift, time/frequency masking, gain and noise for ``[B, C, F, T]`` features.

    Ops, in order (each applied to a sample with probability ``p``):

    * **time shift** — the clip starts up to ``max_shift`` × T frames earlier or later (sound events
      are not aligned to the clip start). ``shift_mode="roll"`` wraps around (circular), ``"zero"``
      shifts in zeros (the normalised mean) like a delayed onset.
    * **time masking** — ``time_masks`` bands of up to ``max_time_mask`` × T consecutive frames are
      zeroed (Park et al. 2019, SpecAugment): robustness to dropped or occluded frames.
    * **frequency masking** — ``freq_masks`` bands of up to ``max_freq_mask`` × F consecutive bins
      (mel bands or cepstral coefficients) are zeroed: robustness to a missing frequency region.
    * **gain** — every value is scaled by a factor in ``[1 - gain, 1 + gain]`` (level change in the
      normalised space; 0 disables).
    * **noise** — Gaussian noise of std ``noise`` is added (background noise; 0 disables).

    Identity in eval mode or when ``enabled`` is False.

    Args:
        p: Probability with which each op is applied to each sample.
        max_shift: Largest time shift as a fraction of T (0 disables shifting).
        shift_mode: ``"roll"`` (circular) or ``"zero"`` (zero-padded shift).
        time_masks: Number of time masks per sample.
        max_time_mask: Largest time mask as a fraction of T.
        freq_masks: Number of frequency masks per sample.
        max_freq_mask: Largest frequency mask as a fraction of F.
        gain: Half-width of the multiplicative gain range (0 disables).
        noise: Std of additive Gaussian noise (0 disables).
        enabled: Master switch.
    """

    def __init__(
        self,
        p: float = 0.5,
        max_shift: float = 0.125,
        shift_mode: str = "roll",
        time_masks: int = 1,
        max_time_mask: float = 0.15,
        freq_masks: int = 1,
        max_freq_mask: float = 0.15,
        gain: float = 0.0,
        noise: float = 0.0,
        enabled: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if shift_mode not in ("roll", "zero"):
            raise ValueError(f"shift_mode must be 'roll' or 'zero', got {shift_mode!r}")
        fractions = {"max_shift": max_shift, "max_time_mask": max_time_mask, "max_freq_mask": max_freq_mask}
        for name, value in fractions.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a fraction in [0, 1], got {value}")
        if min(time_masks, freq_masks) < 0 or min(gain, noise) < 0:
            raise ValueError("time_masks, freq_masks, gain and noise must be non-negative")
        self.p = p
        self.max_shift = max_shift
        self.shift_mode = shift_mode
        self.time_masks = time_masks
        self.max_time_mask = max_time_mask
        self.freq_masks = freq_masks
        self.max_freq_mask = max_freq_mask
        self.gain = gain
        self.noise = noise
        self.enabled = enabled

    def _coin(self, batch: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        """Per-sample Bernoulli(p) decisions ``[B]`` (bool)."""
        return torch.rand(batch, device=device, generator=generator) < self.p

    def shift(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Shift each sample in time by up to ``max_shift`` × T frames (gather: differentiable)."""
        b, _, _, t = x.shape
        limit = int(self.max_shift * t)
        if limit == 0:
            return x
        offsets = torch.randint(-limit, limit + 1, (b,), device=x.device, generator=generator)
        offsets = offsets * self._coin(b, x.device, generator)
        source = torch.arange(t, device=x.device) - offsets[:, None]  # [B, T]: output frame j reads j - offset
        valid = (source >= 0) & (source < t)
        index = source.remainder(t).view(b, 1, 1, t).expand_as(x)
        out = x.gather(3, index)
        if self.shift_mode == "zero":
            out = out * valid.view(b, 1, 1, t).to(x.dtype)
        return out

    def band_mask(
        self, batch: int, size: int, count: int, max_width: float, device: torch.device,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Multiplicative mask ``[B, size]`` with ``count`` random zero bands of up to ``max_width`` × size."""
        keep = torch.ones(batch, size, device=device)
        widest = int(max_width * size)
        if widest == 0:
            return keep
        positions = torch.arange(size, device=device)
        for _ in range(count):
            width = torch.randint(0, widest + 1, (batch, 1), device=device, generator=generator)
            start = (torch.rand(batch, 1, device=device, generator=generator) * (size - width + 1)).floor()
            band = (positions >= start) & (positions < start + width)
            keep = keep * ~(band & self._coin(batch, device, generator)[:, None])
        return keep

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment ``x`` ``[B, C, F, T]``; identity in eval mode or when disabled.

        Args:
            x: Features ``[B, C, F, T]``.
            generator: Source of the random draws (on ``x``'s device); None uses the global RNG. A
                generator seeded the same way replays the same augmentation (MTT's checkpointed unroll
                recomputes its steps this way).
        """
        if not self.training or not self.enabled:
            return x
        b, _, f, t = x.shape
        g = generator
        x = self.shift(x, g)
        if self.time_masks:
            keep = self.band_mask(b, t, self.time_masks, self.max_time_mask, x.device, g)
            x = x * keep.view(b, 1, 1, t).to(x.dtype)
        if self.freq_masks:
            keep = self.band_mask(b, f, self.freq_masks, self.max_freq_mask, x.device, g)
            x = x * keep.view(b, 1, f, 1).to(x.dtype)
        if self.gain:
            factor = 1 + self.gain * (2 * torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype, generator=g) - 1)
            x = x * torch.where(self._coin(b, x.device, g).view(b, 1, 1, 1), factor, torch.ones_like(factor))
        if self.noise:
            noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=g)
            x = x + self.noise * noise * self._coin(b, x.device, g).view(b, 1, 1, 1).to(x.dtype)
        return x

    def config(self) -> dict[str, float | int | str] | None:
        """The settings as a plain dict for manifests; None when disabled (no augmentation)."""
        if not self.enabled:
            return None
        names = ("p", "max_shift", "shift_mode", "time_masks", "max_time_mask", "freq_masks", "max_freq_mask", "gain", "noise")
        return {name: getattr(self, name) for name in names}

    def extra_repr(self) -> str:
        return (
            f"p={self.p}, max_shift={self.max_shift}, shift_mode={self.shift_mode!r}, time_masks={self.time_masks}, "
            f"max_time_mask={self.max_time_mask}, freq_masks={self.freq_masks}, max_freq_mask={self.max_freq_mask}, "
            f"gain={self.gain}, noise={self.noise}, enabled={self.enabled}"
        )
