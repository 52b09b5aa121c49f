"""Multi-formation in time: several short training samples stored in the space of one.

IDC (Kim et al. 2022, "Dataset Condensation via Efficient Synthetic-Data Parameterization") stores each
synthetic image as a mosaic of ``factor²`` smaller ones and upsamples them to full size for training: at a
fixed storage budget the set holds more, lower-resolution samples, and the paper finds that trade worth it.
Here the budget is a feature map ``[C, F, T]`` and the cheap axis is time: a stored sample holds ``factor``
segments side by side, each ``T / factor`` frames long, and :func:`decode` stretches every segment back to
``T`` frames (linear interpolation), so a set of ``ipc`` stored samples per class trains networks on
``ipc × factor``. Frequency is left alone: cepstral coefficients and mel bins are not smooth enough along
their axis for interpolation to stand in for them.

:func:`encode` is the initialisation: ``factor`` real samples squeezed to their segments' lengths (linear
interpolation, which at an integer factor averages neighbouring frames) and laid side by side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def segment_lengths(frames: int, factor: int) -> list[int]:
    """Frames of each of the ``factor`` segments of a ``frames``-long stored sample (the first ones longer by one
    when ``factor`` does not divide ``frames``, as :func:`torch.tensor_split`).

    Raises:
        ValueError: If ``factor`` is not in ``[1, frames]``.
    """
    if not 1 <= factor <= frames:
        raise ValueError(f"formation factor must be between 1 and the {frames} frames of a sample, got {factor}")
    return [len(part) for part in torch.arange(frames).tensor_split(factor)]


def _resample(x: Tensor, frames: int) -> Tensor:
    """``x`` ``[N, C, F, T']`` linearly resampled in time to ``frames`` frames (differentiable)."""
    n, c, f, _ = x.shape
    return F.interpolate(x.flatten(1, 2), size=frames, mode="linear", align_corners=False).view(n, c, f, frames)


def decode(stored: Tensor, factor: int) -> Tensor:
    """The training samples of a stored set: each sample's segments, each stretched to the full length.

    Args:
        stored: Stored samples ``[N, C, F, T]``.
        factor: Segments per stored sample.

    Returns:
        ``[N * factor, C, F, T]``: the ``factor`` samples decoded from stored sample ``i`` are rows
        ``i * factor`` to ``i * factor + factor - 1`` (so labels repeat with ``repeat_interleave(factor)``).
    """
    frames = stored.shape[-1]
    segment_lengths(frames, factor)  # refuses a factor outside [1, frames]
    if factor == 1:
        return stored
    parts = [_resample(part, frames) for part in stored.tensor_split(factor, dim=-1)]
    return torch.stack(parts, dim=1).flatten(0, 1)


def encode(samples: Tensor, factor: int) -> Tensor:
    """Pack full-length samples into stored ones: every ``factor`` consecutive rows become one stored sample.

    Args:
        samples: ``[N * factor, C, F, T]``, grouped by consecutive rows.
        factor: Segments per stored sample.

    Returns:
        ``[N, C, F, T]``; :func:`decode` gives back the samples, blurred in time by the round trip.

    Raises:
        ValueError: If the rows do not divide into groups of ``factor``.
    """
    frames = samples.shape[-1]
    lengths = segment_lengths(frames, factor)
    if factor == 1:
        return samples
    if len(samples) % factor:
        raise ValueError(f"{len(samples)} samples do not pack into groups of {factor}")
    groups = samples.unflatten(0, (-1, factor))
    return torch.cat([_resample(groups[:, k], length) for k, length in enumerate(lengths)], dim=-1)
