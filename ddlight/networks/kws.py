"""Keyword-spotting networks of the literature."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ddlight.networks.base import AudioNetwork
from ddlight.networks.layers import BasicBlock

#: Widths of TC-ResNet8 at width multiplier 1: first conv, then the three residual blocks.
TCRESNET8_WIDTHS = (16, 24, 32, 48)


class TCResNet8(AudioNetwork):
    """TC-ResNet8: temporal convolutions over time, with coefficients as channels.

    Choi, Seo, Shin, Byun, Kersner, Kim, Kim and Ha, "Temporal Convolution for Real-time
    Keyword Spotting on Mobile Devices", Interspeech 2019 (arXiv:1904.03814).

    The ``C x F`` input planes (e.g. 40 MFCCs, or 3 x 20 for FD-MFCC) become ``C * F`` input
    channels of 1-D convolutions along time: a 3-tap conv with ``16k`` channels, then three
    residual blocks of 9-tap convs, stride 2, with ``24k``, ``32k``, ``48k`` channels and
    activated 1x1 projection shortcuts, global average pool over time and a linear layer
    (``k`` = ``width_mult``; about 66K parameters for 40 MFCCs and 12 classes at ``k = 1``).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        width_mult: float = 1.0,
        norm: str = "batch",
    ) -> None:
        """Build the network.

        Args:
            in_shape: ``(C, F, T)`` of one example.
            num_classes: Number of classes.
            width_mult: Width multiplier ``k`` (the paper reports 1 and 1.5).
            norm: ``"batch"`` (as in the paper), ``"instance"``, ``"layer"`` or ``"none"``.

        Raises:
            ValueError: If ``width_mult`` is not positive.
        """
        super().__init__(in_shape, num_classes)
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        first, *widths = (max(1, round(w * width_mult)) for w in TCRESNET8_WIDTHS)
        channels, freq, _ = self.in_shape
        self.stem = nn.Conv1d(channels * freq, first, kernel_size=3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        in_channels = first
        for out_channels in widths:
            blocks.append(
                BasicBlock(
                    in_channels, out_channels, 2, norm, dims=1, kernel_size=9, shortcut_relu=True
                )
            )
            in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.embed_dim = in_channels
        self.classifier = nn.Linear(in_channels, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Time-averaged features of the last block ``[B, 48k]``."""
        return self.blocks(self.stem(x.flatten(1, 2))).mean(dim=2)
