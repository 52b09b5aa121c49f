"""DC and DSA: dataset condensation by gradient matching, with differentiable siamese augmentation.

DC: Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching" (ICLR 2021). DSA: Zhao & Bilen,
"Dataset Condensation with Differentiable Siamese Augmentation" (ICML 2021) is DC with
``siamese_augment=True``. This module also holds :class:`Condensation`, what DC, DSA and DM
(:mod:`ddlight.distillers.dm`) share: per-class real batches drawn from the training split held on the
device, a freshly initialised network every step, siamese augmentation draws and SGD on the set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ddlight.augment import SpecAugment
from ddlight.distillers.base import Distiller, Init, Synset
from ddlight.distillers.formation import decode
from ddlight.networks import AudioNetwork, build_network, for_unrolling

#: ``(outer_loop, inner_loop)`` of the original DC/DSA code (``get_loops``) by images per class.
ORIGINAL_LOOPS: dict[int, tuple[int, int]] = {
    1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10),
}
#: Added to the product of the norms in the cosine, as in the original ``distance_wb``.
_COSINE_EPS = 1e-6


def draw_seed(generator: torch.Generator) -> int:
    """A seed for a child generator, drawn from ``generator``."""
    return int(torch.randint(2**62, (1,), generator=generator))


def siamese_augment(augment: SpecAugment, x: Tensor, seed: int) -> Tensor:
    """Apply one augmentation draw, seeded by ``seed``, to every sample of ``x``.

    DSA's "same augmentation" is one set of transformation parameters per class batch: the original
    draws parameters for the first sample and gives them to the whole batch, for the real and the
    synthetic batch alike. Here the batch is folded into the channel axis (``[1, B*C, F, T]``), so
    :class:`~ddlight.augment.SpecAugment` draws for a single sample (the same shift, masks and gain
    for every sample) and the draw does not depend on the batch size: two batches of any sizes
    augmented with the same ``seed`` get the same transformation. Additive noise (``noise > 0``, off by
    default) is drawn per value and only its on/off decision is shared.

    Args:
        augment: The augmentation (identity when disabled or in eval mode).
        x: Features ``[B, C, F, T]``.
        seed: Seed of the draw; the same seed replays the same draw.

    Returns:
        The augmented features, differentiable w.r.t. ``x``.
    """
    generator = torch.Generator(device=x.device).manual_seed(seed)
    return augment(x.reshape(1, -1, *x.shape[2:]), generator).reshape(x.shape)


def layer_distance(g_syn: Tensor, g_real: Tensor) -> Tensor:
    """DC's layer-wise gradient distance: ``sum over output nodes of (1 - cos)``.

    A weight gradient is cut into one row per output node (output channel of a convolution, output
    unit of a linear layer) and the cosine distances of the rows are summed. One-dimensional
    gradients (biases, normalisation parameters) count 0, as in the original ``distance_wb``.

    Args:
        g_syn: Gradient on the synthetic batch (may carry a graph).
        g_real: Gradient of the same parameter on the real batch.

    Returns:
        Scalar distance in ``[0, 2 * rows]``.
    """
    if g_real.dim() == 1:
        return g_syn.new_zeros(())
    a, b = g_syn.flatten(1), g_real.flatten(1)
    cosine = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + _COSINE_EPS)
    return (1 - cosine).sum()


def gradient_distance(g_syn: Sequence[Tensor], g_real: Sequence[Tensor]) -> Tensor:
    """Sum of :func:`layer_distance` over the parameters of a network (DC's matching loss)."""
    return torch.stack([layer_distance(s, r) for s, r in zip(g_syn, g_real, strict=True)]).sum()


class Condensation(Distiller):
    """Shared machinery of DC, DSA and DM: class-wise matching against freshly initialised networks.

    At fit start the normalised training split is held on the device. Every training step draws its
    random numbers (network initialisation, real batches, augmentation) from :meth:`step_generator`:
    runs repeat and resume exactly, ranks draw differently, and a skipped step is retried with new
    draws. The set is updated with SGD (momentum ``momentum``) through the base's step loop, which
    averages the gradients over ranks and skips non-finite updates.

    Args:
        in_shape: Feature shape ``(C, F, T)`` (linked from ``data.feature_shape``).
        num_classes: Number of classes (linked from ``data.num_classes``).
        ipc: Synthetic samples per class.
        init: ``real`` (random real samples per class), ``herding`` or ``noise`` (:class:`Distiller`).
        network: Architecture of the random networks (a name of :data:`ddlight.networks.NETWORKS`);
            prefer normalisations without running statistics (the ConvNet's instance norm).
        network_options: Its constructor options, e.g. ``{"width": 64}``.
        lr_img: SGD learning rate of the synthetic features (normalised feature space).
        momentum: SGD momentum of the synthetic features (0.5 in the originals).
        batch_real: Real samples per class and matching step (fewer if a class has fewer).
        siamese_augment: Augment the real and the synthetic batch of a class with the same
            :class:`~ddlight.augment.SpecAugment` draw (:func:`siamese_augment`).
        seed: Seed of the per-step draws; None uses the run's seed (``seed_everything``).
        max_bad_steps: Consecutive non-finite steps tolerated before stopping.
        formation: IDC's multi-formation in time (:class:`Distiller`): the decoded samples are matched,
            ``ipc × formation`` per class at the storage of ``ipc``. 1 (default): off.
    """


    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        ipc: int,
        init: Init,
        network: str,
        network_options: dict[str, Any] | None,
        lr_img: float,
        momentum: float,
        batch_real: int,
        siamese_augment: bool,
        seed: int | None,
        max_bad_steps: int,
        formation: int = 1,
    ) -> None:
        super().__init__(in_shape, num_classes, ipc, init, seed=seed, max_bad_steps=max_bad_steps, formation=formation)
        if lr_img <= 0 or not 0 <= momentum < 1:
            raise ValueError(f"need lr_img > 0 and 0 <= momentum < 1, got {lr_img}, {momentum}")
        if batch_real < 1:
            raise ValueError(f"batch_real must be >= 1, got {batch_real}")
        with torch.random.fork_rng(devices=[]):  # a bad network or option fails here, before the data loads
            build_network(network, in_shape, num_classes, **dict(network_options or {}))
        self.augment = SpecAugment(enabled=siamese_augment)
        self._real: tuple[Tensor, list[Tensor]] | None = None

    # ---------------------------------------------------------------------------------- real data
    def hold_real_data(self, features: Tensor, labels: Tensor) -> None:
        """Keep the real training split (on its device) from which every step draws its class batches.

        Raises:
            ValueError: If a class has no training sample.
        """
        by_class = [(labels == c).nonzero().flatten() for c in range(self.num_classes)]
        empty = [c for c, idx in enumerate(by_class) if len(idx) == 0]
        if empty:
            raise ValueError(f"classes {empty} have no training samples")
        self._real = (features, by_class)

    def real_batch(self, c: int, generator: torch.Generator) -> Tensor:
        """``min(batch_real, n_c)`` distinct real training samples of class ``c``.

        Raises:
            RuntimeError: If no training split is held (:meth:`hold_real_data`, done at fit start).
        """
        if self._real is None:
            raise RuntimeError("no real training data held; call hold_real_data() (done in on_fit_start)")
        features, by_class = self._real
        idx = by_class[c]
        order = torch.randperm(len(idx), generator=generator)[: self.hparams.batch_real]
        return features[idx[order.to(idx.device)]]

    def class_samples(self, c: int) -> Tensor:
        """The synthetic samples of class ``c``, decoded (``formation``; differentiable)."""
        return decode(self.synthetic[c * self.ipc : (c + 1) * self.ipc], self.formation)

    # ----------------------------------------------------------------------------- random draws
    def step_generator(self) -> torch.Generator:
        """CPU generator of this step's draws (:meth:`~ddlight.distillers.base.Distiller.step_seed`)."""
        return torch.Generator().manual_seed(self.step_seed("condensation"))

    def random_network(self, generator: torch.Generator) -> AudioNetwork:
        """A freshly initialised network (initialisation seeded from ``generator``) on this device, in train mode."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(draw_seed(generator))
            network = build_network(self.hparams.network, self.in_shape, self.num_classes,
                                    **dict(self.hparams.network_options or {}))
        return for_unrolling(network).to(self.device).train()

    def augment_pair(self, real: Tensor, syn: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The real and synthetic batch of a class under one siamese draw (unchanged without augmentation)."""
        if not self.hparams.siamese_augment:
            return real, syn
        seed = draw_seed(generator)
        return siamese_augment(self.augment, real, seed), siamese_augment(self.augment, syn, seed)

    # ------------------------------------------------------------------------------------- update
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([self.synthetic], lr=self.hparams.lr_img, momentum=self.hparams.momentum)

    # -------------------------------------------------------------------------------------- export
    def export_extras(self) -> dict[str, Any]:
        hp = self.hparams
        return {"network": hp.network, "network_options": hp.network_options, "augment": self.augment.config()}


class DC(Condensation):
    """Dataset Condensation by gradient matching (DC); with ``siamese_augment`` it is DSA.

    Each training step (the original's "iteration") initialises a fresh network and runs
    ``outer_loop`` set updates. An update sums, over the classes, :func:`gradient_distance` between
    the gradient of the network's cross-entropy on a real batch of the class and on the synthetic
    samples of the class, and takes one SGD step of the set on it. Between updates the network is
    trained ``inner_loop`` epochs on the (detached) synthetic set, with minibatches of ``batch_train``,
    SGD at ``lr_net`` and, for DSA, per-sample augmentation (the original's inner loop). One training
    step advances the global step by one, so ``trainer.max_steps`` is the original's ``Iteration``; a
    non-finite update skips the rest of the iteration, which is retried with new draws. ``train/loss``
    is the matching loss of the last update.

    Args:
        in_shape: Feature shape ``(C, F, T)`` (linked from ``data.feature_shape``).
        num_classes: Number of classes (linked from ``data.num_classes``).
        ipc: Synthetic samples per class.
        init: ``real`` (random real samples per class), ``herding`` or ``noise`` (the original DC's default).
        network: Architecture of the random networks (default the ConvNet of the papers).
        network_options: Its constructor options, e.g. ``{"width": 64}``.
        lr_img: SGD learning rate of the synthetic features (0.1 in the original).
        momentum: SGD momentum of the synthetic features.
        batch_real: Real samples per class and matching step.
        siamese_augment: DSA: the same augmentation draw for the real and synthetic batch of a class.
        seed: Seed of the per-step draws; None uses the run's seed (``seed_everything``).
        max_bad_steps: Consecutive non-finite steps tolerated before stopping.
        outer_loop: Set updates per fresh network; None takes the original's value for ``ipc``.
        inner_loop: Network training epochs between updates; None takes the original's value for ``ipc``.
        lr_net: SGD learning rate of the network in the inner loop.
        batch_train: Minibatch size of the inner loop.
        formation: IDC's multi-formation in time (:class:`Condensation`). 1 (default): off.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        ipc: int = 10,
        init: Init = "real",
        network: str = "convnet",
        network_options: dict[str, Any] | None = None,
        lr_img: float = 0.1,
        momentum: float = 0.5,
        batch_real: int = 256,
        siamese_augment: bool = False,
        seed: int | None = None,
        max_bad_steps: int = 10,
        outer_loop: int | None = None,
        inner_loop: int | None = None,
        lr_net: float = 0.01,
        batch_train: int = 256,
        formation: int = 1,
    ) -> None:
        super().__init__(in_shape, num_classes, ipc, init, network, network_options, lr_img, momentum, batch_real,
                         siamese_augment, seed, max_bad_steps, formation)
        original = ORIGINAL_LOOPS.get(ipc)
        if original is None and (outer_loop is None or inner_loop is None):
            raise ValueError(
                f"the original gives outer_loop/inner_loop only for ipc in {sorted(ORIGINAL_LOOPS)}; "
                f"set both for ipc={ipc}"
            )
        self.outer_loop = outer_loop if outer_loop is not None else original[0]
        self.inner_loop = inner_loop if inner_loop is not None else original[1]
        if self.outer_loop < 1 or self.inner_loop < 0 or lr_net <= 0 or batch_train < 1:
            raise ValueError("need outer_loop >= 1, inner_loop >= 0, lr_net > 0 and batch_train >= 1")
        self.save_hyperparameters()

    @staticmethod
    def class_loss(network: AudioNetwork, x: Tensor, c: int) -> Tensor:
        """Cross-entropy of ``network`` on a batch ``x`` whose samples all belong to class ``c``."""
        return F.cross_entropy(network(x), torch.full((len(x),), c, device=x.device))

    def matching_loss(self, network: AudioNetwork, generator: torch.Generator) -> Tensor:
        """Sum over classes of the gradient distance between a real batch and the synthetic samples."""
        params = list(network.parameters())
        total = self.synthetic.new_zeros(())
        for c in range(self.num_classes):
            real, syn = self.augment_pair(self.real_batch(c, generator), self.class_samples(c), generator)
            g_real = torch.autograd.grad(self.class_loss(network, real, c), params)
            g_syn = torch.autograd.grad(self.class_loss(network, syn, c), params, create_graph=True)
            total = total + gradient_distance(g_syn, g_real)
        return total

    def train_network(
        self, network: AudioNetwork, optimizer: torch.optim.Optimizer, generator: torch.Generator
    ) -> None:
        """``inner_loop`` epochs of SGD on the detached synthetic set (augmented per sample for DSA)."""
        x, y = self.training_set(detach=True)
        device_generator = torch.Generator(device=x.device).manual_seed(draw_seed(generator))
        for _ in range(self.inner_loop):
            for idx in torch.randperm(len(x), generator=generator).split(self.hparams.batch_train):
                idx = idx.to(x.device)
                loss = F.cross_entropy(network(self.augment(x[idx], device_generator)), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

    def loss(self) -> Tensor:
        """One iteration: a fresh network, ``outer_loop - 1`` set updates with network training in
        between, and the matching loss of the last update."""
        generator = self.step_generator()
        network = self.random_network(generator)
        optimizer = torch.optim.SGD(network.parameters(), lr=self.hparams.lr_net)
        for _ in range(self.outer_loop - 1):
            self.update(self.matching_loss(network, generator), last=False)
            self.train_network(network, optimizer, generator)
        return self.matching_loss(network, generator)

    def to_synset(self) -> Synset:
        """The distilled set; its manifest names the method ``dsa`` when DC ran with siamese augmentation."""
        synset = super().to_synset()
        if not self.hparams.siamese_augment:
            return synset
        return dataclasses.replace(synset, manifest=synset.manifest | {"method": "dsa"})

    def export_extras(self) -> dict[str, Any]:
        return super().export_extras() | {"outer_loop": self.outer_loop, "inner_loop": self.inner_loop}
