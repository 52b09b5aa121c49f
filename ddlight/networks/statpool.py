"""A TDNN with a statistics-pooling layer (x-vector style): the teacher and student of FRAMI.

Audio classifiers of the x-vector family (Snyder et al., ICASSP 2018) treat the ``C x F`` feature
bins of each frame as input channels, run frame-level 1-D convolutions over time (a time-delay neural
network), and collapse the variable-length frame sequence into one vector by **statistics pooling**:
the mean and the standard deviation of every frame-level channel over time. FRAMI (Kang et al.,
ICASSP 2023) reuses the hidden states on both sides of that pooling layer when it distils a student,
so this network exposes them through :meth:`StatsPoolTDNN.hidden_states`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ddlight.networks.base import AudioNetwork
from ddlight.networks.layers import norm_layer

#: Frame-level layers ``(kernel size, dilation)``: the x-vector TDNN context of +-2, +-2, +-3 frames.
_FRAME_LAYERS = ((5, 1), (3, 2), (3, 3), (1, 1))


class HiddenStates(NamedTuple):
    """What a statistics-pooling network computes on the way to its logits.

    Attributes:
        frames: Frame-level features before pooling ``[B, D, T]``.
        pooled: Statistics after pooling ``[B, 2D]`` (mean over time, then std over time).
        logits: Class logits ``[B, K]``.
    """

    frames: Tensor
    pooled: Tensor
    logits: Tensor


def statistics_pooling(frames: Tensor, eps: float = 1e-5) -> Tensor:
    """Mean and standard deviation over time of frame-level features.

    Args:
        frames: ``[B, D, T]``.
        eps: Added to the variance before the square root (a finite gradient at zero variance).

    Returns:
        ``[B, 2D]``: the means, then the standard deviations.
    """
    mean = frames.mean(dim=-1)
    std = (frames.var(dim=-1, unbiased=False) + eps).sqrt()
    return torch.cat([mean, std], dim=-1)


class StatsPoolTDNN(AudioNetwork):
    """Frame-level TDNN -> statistics pooling -> segment layer -> linear classifier.

    The input ``[B, C, F, T]`` is read as ``C * F`` channels over ``T`` frames. Four frame-level
    layers ``conv1d -> norm -> ReLU`` (kernel/dilation 5/1, 3/2, 3/3, 1/1, "same" padding, so the
    number of frames is kept) give ``[B, width, T]``; statistics pooling gives ``[B, 2 * width]``; a
    segment layer ``linear -> norm -> ReLU`` gives the ``embed_dim``-dimensional embedding, and a
    dropout + linear layer the logits. Batch norm (the default) is what model inversion matches
    statistics against.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        width: int = 128,
        embed_dim: int = 128,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        """Build the network.

        Args:
            in_shape: ``(C, F, T)`` of one example.
            num_classes: Number of classes.
            width: Channels of every frame-level layer (``D``).
            embed_dim: Size of the segment-level embedding.
            norm: ``"batch"``, ``"instance"``, ``"layer"`` or ``"none"``.
            dropout: Dropout probability before the classifier.

        Raises:
            ValueError: If a size is not positive or ``dropout`` is not in ``[0, 1)``.
        """
        super().__init__(in_shape, num_classes)
        if min(width, embed_dim) < 1:
            raise ValueError(f"width and embed_dim must be positive, got {width}, {embed_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        channels, f, _ = self.in_shape
        layers: list[nn.Module] = []
        previous = channels * f
        for kernel, dilation in _FRAME_LAYERS:
            layers += [
                nn.Conv1d(previous, width, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2),
                norm_layer(norm, width, dims=1),
                nn.ReLU(),
            ]
            previous = width
        self.frame_layers = nn.Sequential(*layers)
        self.segment = nn.Sequential(nn.Linear(2 * width, embed_dim), norm_layer(norm, embed_dim, dims=1), nn.ReLU())
        self.frame_dim = width
        self.embed_dim = embed_dim
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(embed_dim, num_classes))

    def frames(self, x: Tensor) -> Tensor:
        """Frame-level features ``[B, width, T]`` of ``x`` ``[B, C, F, T]``."""
        b, c, f, t = x.shape
        return self.frame_layers(x.reshape(b, c * f, t))

    def embed(self, x: Tensor) -> Tensor:
        """Segment-level embedding ``[B, embed_dim]``."""
        return self.segment(statistics_pooling(self.frames(x)))

    def hidden_states(self, x: Tensor) -> HiddenStates:
        """The states before and after statistics pooling, and the logits, in one pass."""
        frames = self.frames(x)
        pooled = statistics_pooling(frames)
        return HiddenStates(frames, pooled, self.classifier(self.segment(pooled)))
