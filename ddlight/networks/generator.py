"""A conditional generator of normalised features (FRAMI's ``synthesis: generator``)."""

from __future__ import annotations

import math

from torch import Tensor, nn


def _batch_norm(channels: int, affine: bool = True) -> nn.BatchNorm2d:
    """Batch norm on batch statistics in train *and* eval mode.

    Running statistics would lag behind a generator that changes every step: early in a run, eval-mode
    samples normalised with them come out far outside the feature range.
    """
    return nn.BatchNorm2d(channels, affine=affine, track_running_stats=False)


class FeatureGenerator(nn.Module):
    """Conditional generator of normalised features: ``(z, class) -> [C, F, T]``.

    ``z * embedding(class)`` goes through a linear layer to a ``[2w, F/4, T/4]`` map, two
    ``upsample x2 -> conv3x3 -> batch norm -> LeakyReLU`` blocks and a conv to ``C`` channels, then a
    batch norm without affine parameters (outputs in the normalised feature space), cropped to
    ``F x T`` (the DAFL / CMI generator shape, conditioned on the class). Its batch norms always use
    the statistics of the batch being generated, so generate batches of more than one sample.

    Args:
        out_shape: ``(C, F, T)`` of one generated example.
        num_classes: Number of classes.
        latent_dim: Size of ``z``.
        width: Channels ``w`` of the last hidden block.
    """

    def __init__(
        self, out_shape: tuple[int, int, int], num_classes: int, latent_dim: int = 64, width: int = 64
    ) -> None:
        super().__init__()
        channels, f, t = out_shape
        self.out_shape = out_shape
        self.latent_dim = latent_dim
        self.start = (2 * width, math.ceil(f / 4), math.ceil(t / 4))
        self.class_embedding = nn.Embedding(num_classes, latent_dim)
        self.project = nn.Linear(latent_dim, math.prod(self.start))
        self.body = nn.Sequential(
            _batch_norm(2 * width),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            _batch_norm(2 * width),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, width, 3, padding=1),
            _batch_norm(width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, channels, 3, padding=1),
            _batch_norm(channels, affine=False),
        )

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        """Features ``[B, C, F, T]`` for latents ``z`` ``[B, latent_dim]`` and labels ``[B]``."""
        h = self.project(z * self.class_embedding(labels)).view(len(z), *self.start)
        _, f, t = self.out_shape
        return self.body(h)[..., :f, :t]
