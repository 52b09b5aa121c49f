"""ConvNet: standard network of dataset distillation (Zhao et al. DC; Cazenavette et al. MTT)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ddlight.networks.base import AudioNetwork
from ddlight.networks.layers import conv_pool_stack


class ConvNet(AudioNetwork):
    """``depth`` x [conv3x3 -> norm -> activation -> 2x2 pool], flatten, linear.

    The network of Zhao et al. (ICLR 2021, "Dataset Condensation with Gradient Matching") and
    Cazenavette et al. (CVPR 2022, "Dataset Distillation by Matching Training Trajectories"),
    sized from ``in_shape`` instead of 32x32 images: a spatial axis that has shrunk to 1 stops
    being pooled. Distillers should keep the default instance norm: batch norm's running
    statistics are buffers updated in place in train mode, outside the unrolled parameter dict.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        width: int = 128,
        depth: int = 3,
        norm: str = "instance",
        activation: str = "relu",
        pooling: str = "avg",
    ) -> None:
        """Build the network.

        Args:
            in_shape: ``(C, F, T)`` of one example.
            num_classes: Number of classes.
            width: Channels of every conv layer.
            depth: Number of conv blocks.
            norm: ``"instance"``, ``"batch"``, ``"layer"`` or ``"none"``.
            activation: ``"relu"``, ``"leakyrelu"``, ``"gelu"`` or ``"sigmoid"``.
            pooling: ``"avg"``, ``"max"`` or ``"none"``.

        Raises:
            ValueError: If ``depth`` < 1 or an option is unknown.
        """
        super().__init__(in_shape, num_classes)
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        channels, f, t = self.in_shape
        self.features, (f, t) = conv_pool_stack(
            channels, [[width]] * depth, (f, t), norm, activation, pooling
        )
        self.embed_dim = width * f * t
        self.classifier = nn.Linear(self.embed_dim, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Flattened output of the conv blocks ``[B, width * F' * T']``."""
        return self.features(x).flatten(1)
