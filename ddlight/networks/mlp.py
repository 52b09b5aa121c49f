"""Multi-layer perceptron over flattened features."""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

from torch import Tensor, nn

from ddlight.networks.base import AudioNetwork


class MLP(AudioNetwork):
    """Flatten, ``depth`` x [linear -> ReLU], linear."""

    def __init__(
        self, in_shape: Sequence[int], num_classes: int, width: int = 256, depth: int = 2
    ) -> None:
        """Build the network.

        Args:
            in_shape: ``(C, F, T)`` of one example.
            num_classes: Number of classes.
            width: Units of every hidden layer.
            depth: Number of hidden layers (0 gives a linear classifier).

        Raises:
            ValueError: If ``depth`` is negative.
        """
        super().__init__(in_shape, num_classes)
        if depth < 0:
            raise ValueError(f"depth must be non-negative, got {depth}")
        layers: list[nn.Module] = [nn.Flatten()]
        features = prod(self.in_shape)
        for _ in range(depth):
            layers += [nn.Linear(features, width), nn.ReLU()]
            features = width
        self.hidden = nn.Sequential(*layers)
        self.embed_dim = features
        self.classifier = nn.Linear(features, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Output of the last hidden layer ``[B, width]`` (the flattened input if ``depth=0``)."""
        return self.hidden(x)
