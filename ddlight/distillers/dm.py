"""DM: dataset condensation by distribution matching (Zhao & Bilen, WACV 2023)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ddlight.distillers.base import Init
from ddlight.distillers.dc import Condensation
from ddlight.networks import AudioNetwork


def mean_embedding_distance(real: Tensor, syn: Tensor) -> Tensor:
    """``‖mean(real) − mean(syn)‖²`` of two batches of embeddings ``[N, D]`` and ``[M, D]``."""
    return (real.mean(0) - syn.mean(0)).pow(2).sum()


class DM(Condensation):
    """Distribution Matching: the synthetic samples of each class match the real ones in mean embedding.

    Each training step initialises a fresh network (frozen) and minimises, summed over the classes,
    :func:`mean_embedding_distance` between the embeddings (``network.embed``: the features before the
    classifier) of a real batch of the class and of its synthetic samples, both under the same
    siamese augmentation draw; one SGD step of the set per training step (``trainer.max_steps`` is the
    original's ``Iteration``, 20000).

    The original's learning rate (``lr_img`` 1.0 for images normalised per channel) carries over: the
    features here are normalised per channel and bin, so they have the same unit scale.

    Args:
        in_shape: Feature shape ``(C, F, T)`` (linked from ``data.feature_shape``).
        num_classes: Number of classes (linked from ``data.num_classes``).
        ipc: Synthetic samples per class.
        init: ``real`` (random real samples per class, the original's default), ``herding`` or ``noise``.
        network: Architecture of the random networks (default the ConvNet of the paper).
        network_options: Its constructor options, e.g. ``{"width": 64}``.
        lr_img: SGD learning rate of the synthetic features (1.0 in the original).
        momentum: SGD momentum of the synthetic features.
        batch_real: Real samples per class and step.
        siamese_augment: The same augmentation draw for the real and synthetic batch of a class (the
            original always augments).
        seed: Seed of the per-step draws; None uses the run's seed (``seed_everything``).
        max_bad_steps: Consecutive non-finite steps tolerated before stopping.
        formation: IDC's multi-formation in time (:class:`~ddlight.distillers.dc.Condensation`). 1 (default): off.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        ipc: int = 10,
        init: Init = "real",
        network: str = "convnet",
        network_options: dict[str, Any] | None = None,
        lr_img: float = 1.0,
        momentum: float = 0.5,
        batch_real: int = 256,
        siamese_augment: bool = True,
        seed: int | None = None,
        max_bad_steps: int = 10,
        formation: int = 1,
    ) -> None:
        super().__init__(in_shape, num_classes, ipc, init, network, network_options, lr_img, momentum, batch_real,
                         siamese_augment, seed, max_bad_steps, formation)
        self.save_hyperparameters()

    def matching_loss(self, network: AudioNetwork, generator: torch.Generator) -> Tensor:
        """Sum over classes of the squared distance between real and synthetic mean embeddings."""
        total = self.synthetic.new_zeros(())
        for c in range(self.num_classes):
            real, syn = self.augment_pair(self.real_batch(c, generator), self.class_samples(c), generator)
            with torch.no_grad():
                real_embedding = network.embed(real)
            total = total + mean_embedding_distance(real_embedding, network.embed(syn))
        return total

    def loss(self) -> Tensor:
        """The matching loss against a fresh random network (one SGD step of the set per training step)."""
        generator = self.step_generator()
        network = self.random_network(generator).requires_grad_(False)
        return self.matching_loss(network, generator)
