"""Shared signals and settings for the feature tests."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

SAMPLE_RATE = 16000


def harmonic_clips(num: int, seconds: float = 0.5, seed: int = 0) -> np.ndarray:
    """Real-ish test sounds ``[num, samples]``: decaying harmonic chirps plus white noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    clips = []
    for f0 in rng.uniform(120.0, 400.0, num):
        phase = 2 * np.pi * f0 * (t + 0.5 * t**2)  # f0 rising by 1 f0 per second
        tone = sum(np.sin(k * phase) / k for k in range(1, 9)) * np.exp(-3.0 * t)
        clip = tone + 0.05 * rng.standard_normal(t.size)
        clips.append(0.5 * clip / np.abs(clip).max())
    return np.stack(clips).astype(np.float32)


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """These tensors are small: one thread is as fast and avoids oversubscribing shared runners."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def clips() -> np.ndarray:
    """Four half-second harmonic clips at 16 kHz."""
    return harmonic_clips(4)
