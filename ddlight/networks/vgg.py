"""VGG-11 for audio features."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ddlight.networks.base import AudioNetwork
from ddlight.networks.layers import conv_pool_stack

#: Conv widths of VGG-11 (Simonyan & Zisserman, ICLR 2015, config "A") per pooling stage, as
#: multiples of the first layer's width.
VGG11_STAGES = ((1,), (2,), (4, 4), (8, 8), (8, 8))


class VGG(AudioNetwork):
    """VGG conv stages (3x3 conv -> norm -> ReLU, 2x2 max pool per stage), global pool, linear.

    Adapted to small rectangular spectrograms: an axis is not pooled below 2, and a global average
    pool replaces VGG's large fully connected head (a single linear layer, as in the DC/MTT
    cross-architecture VGG-11). On 32x32 images VGG-11's last stage works on 2x2 maps; on 20
    coefficients it would work on 1x2 maps, where instance norm over two positions leaves only a
    sign and its gradient explodes (the network then never learns), so the maps keep at least 2x2.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        stages: Sequence[Sequence[int]],
        norm: str = "instance",
    ) -> None:
        """Build the network.

        Args:
            in_shape: ``(C, F, T)`` of one example.
            num_classes: Number of classes.
            stages: Conv widths of each pooling stage.
            norm: ``"instance"``, ``"batch"``, ``"layer"`` or ``"none"``.
        """
        super().__init__(in_shape, num_classes)
        channels, f, t = self.in_shape
        self.features, _ = conv_pool_stack(channels, stages, (f, t), norm, pooling="max", min_size=2)
        self.embed_dim = stages[-1][-1]
        self.classifier = nn.Linear(self.embed_dim, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Globally average-pooled conv features ``[B, channels of the last stage]``."""
        return self.features(x).mean(dim=(2, 3))


def vgg11(
    in_shape: Sequence[int], num_classes: int, norm: str = "instance", width: int = 64
) -> VGG:
    """VGG-11: 8 conv layers of widths ``width * (1, 2, 4, 4, 8, 8, 8, 8)``, 5 pooling stages.

    Args:
        in_shape: ``(C, F, T)`` of one example.
        num_classes: Number of classes.
        norm: ``"instance"``, ``"batch"``, ``"layer"`` or ``"none"``.
        width: Channels of the first conv layer (64 in VGG-11).

    Returns:
        The network.
    """
    stages = [[m * width for m in stage] for stage in VGG11_STAGES]
    return VGG(in_shape, num_classes, stages, norm)
