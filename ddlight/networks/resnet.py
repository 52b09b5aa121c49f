"""ResNet-18 for audio features."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ddlight.networks.base import AudioNetwork
from ddlight.networks.layers import BasicBlock, norm_layer


class ResNet(AudioNetwork):
    """ResNet with basic blocks (He et al., CVPR 2016), adapted to small spectrograms.

    The stem is a single 3x3 conv with stride 1 and no max pool (as in CIFAR-style ResNets), so
    a 20 x 101 MFCC keeps its resolution until the strided stages; the head is a global average
    pool and one linear layer.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        blocks: Sequence[int],
        norm: str = "batch",
        width: int = 64,
    ) -> None:
        """Build the network.

        Args:
            in_shape: ``(C, F, T)`` of one example.
            num_classes: Number of classes.
            blocks: Number of basic blocks in each stage; stage ``i`` has ``width * 2**i``
                channels and all but the first start with stride 2.
            norm: ``"batch"``, ``"instance"``, ``"layer"`` or ``"none"``.
            width: Channels of the stem and the first stage.
        """
        super().__init__(in_shape, num_classes)
        self.stem = nn.Sequential(
            nn.Conv2d(self.in_shape[0], width, kernel_size=3, padding=1, bias=False),
            norm_layer(norm, width),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        channels = width
        for stage, num_blocks in enumerate(blocks):
            out_channels = width * 2**stage
            for i in range(num_blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(channels, out_channels, stride, norm))
                channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.embed_dim = channels
        self.classifier = nn.Linear(channels, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Globally average-pooled features of the last stage ``[B, 8 * width]``."""
        return self.layers(self.stem(x)).mean(dim=(2, 3))


def resnet18(
    in_shape: Sequence[int], num_classes: int, norm: str = "batch", width: int = 64
) -> ResNet:
    """ResNet-18: basic blocks ``[2, 2, 2, 2]`` (about 11.2M parameters at width 64, C = 1).

    With ``norm="batch"`` the running statistics are buffers updated in place in train mode;
    distillers that unroll training through the network should pass ``norm="instance"``.

    Args:
        in_shape: ``(C, F, T)`` of one example.
        num_classes: Number of classes.
        norm: ``"batch"``, ``"instance"``, ``"layer"`` or ``"none"``.
        width: Channels of the stem and the first stage.

    Returns:
        The network.
    """
    return ResNet(in_shape, num_classes, (2, 2, 2, 2), norm, width)
