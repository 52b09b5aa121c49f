"""CNN4: the 4-layer CNN evaluator of Gudur & Thomaz."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ddlight.networks.base import AudioNetwork
from ddlight.networks.layers import conv_pool_stack


class CNN4(AudioNetwork):
    """4 x [conv3x3 -> norm -> ReLU -> 2x2 max pool], global average pool, dropout, linear.

    Gudur & Thomaz ("Dataset distillation as an alternative to active learning for audio
    classification") evaluate with "a 4-layer CNN" in the line of small-footprint keyword
    spotting CNNs (Sainath & Parada, Interspeech 2015) without giving its layers; this is the
    plain reading: widths ``width * (1, 2, 4, 4)`` (32-64-128-128 by default). The dropout before
    the classifier is what BALD's MC-dropout passes sample.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        width: int = 32,
        norm: str = "batch",
        dropout: float = 0.5,
    ) -> None:
        """Build the network.

        Args:
            in_shape: ``(C, F, T)`` of one example.
            num_classes: Number of classes.
            width: Channels of the first conv layer; the others have 2x, 4x, 4x.
            norm: ``"batch"``, ``"instance"``, ``"layer"`` or ``"none"``.
            dropout: Dropout probability before the classifier.

        Raises:
            ValueError: If ``dropout`` is not in ``[0, 1)`` or ``norm`` is unknown.
        """
        super().__init__(in_shape, num_classes)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        channels, f, t = self.in_shape
        stages = [[width * m] for m in (1, 2, 4, 4)]
        self.features, _ = conv_pool_stack(channels, stages, (f, t), norm, pooling="max")
        self.embed_dim = stages[-1][0]
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.embed_dim, num_classes))

    def embed(self, x: Tensor) -> Tensor:
        """Globally average-pooled conv features ``[B, 4 * width]``."""
        return self.features(x).mean(dim=(2, 3))
