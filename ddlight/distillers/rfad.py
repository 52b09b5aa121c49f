"""RFAD: dataset distillation by kernel ridge regression on random ConvNet features.

Loo et al., "Efficient Dataset Distillation using Random Feature Approximation" (NeurIPS 2022), the
method Gudur & Thomaz use for audio (their Algorithm 1). Every step samples ``M`` fresh random ConvNets
(no normalisation, He-Gaussian weights, the NNGP/NTK setting), maps a real batch of ``real_batch``
training examples and the synthetic set to the concatenation of their final pooled conv features scaled
by ``1/sqrt(M*D)``, and regresses the real labels on the synthetic set with kernel ridge regression
under the kernel of those features followed by a random linear readout (weight variance ``2/D``, bias
variance ``c``, as the original's ``2 * K + 0.01``):

    K(a, b) = 2 phi(a) phi(b)^T + c,    K_ts = K(X_t, S),   K_ss = K(S, S),
    y_hat = K_ts (K_ss + lambda * tr(K_ss)/|S| * I)^-1 Y_s          (solved in float64)

The loss on the real batch (Platt-scaled cross-entropy ``CE(y_hat / tau, y)`` with a learnable
temperature, or ``0.5 * mean((Y_t - y_hat)^2)``) is differentiated with respect to the synthetic set
(and, optionally, the regression targets ``Y_s`` and ``tau``). Regression targets are centred one-hot
vectors ``onehot - 1/K`` as in the original code. The real batch is drawn every step from the whole
normalised training split held on the device, independently of the DataModule's batch size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddlight.distillers.base import Distiller, Init, derive_seed
from ddlight.networks.layers import conv_pool_stack

#: Weight variance (times ``1/D``) of the random readout layer: the factor of the original's ``2 * K``.
_READOUT_GAIN = 2.0
#: Real examples mapped to features at once (the original's real minibatch), which bounds the memory.
_REAL_CHUNK = 1280


def sample_random_convnets(
    in_shape: Sequence[int], num_models: int, width: int, depth: int, seed: int
) -> list[nn.Sequential]:
    """Random ConvNets of the NNGP setting, reproducible from one seed (on the CPU).

    Each network is ``depth`` x [conv3x3 -> ReLU -> 2x2 avg pool] without normalisation; conv weights
    are drawn from ``N(0, 2 / fan_in)`` and biases from ``N(0, 0.1^2)`` as in the RFAD code.

    Args:
        in_shape: ``(C, F, T)`` of one example.
        num_models: Number of networks ``M``.
        width: Channels of every conv layer.
        depth: Number of conv blocks.
        seed: Seed of the weights; the same seed gives the same networks on every rank and machine.

    Returns:
        ``M`` networks whose parameters do not require gradients.
    """
    generator = torch.Generator().manual_seed(seed)
    channels, f, t = in_shape
    networks = []
    for _ in range(num_models):
        net, _ = conv_pool_stack(channels, [[width]] * depth, (f, t), norm="none", activation="relu")
        for relu in (m for m in net if isinstance(m, nn.ReLU)):
            relu.inplace = True  # on the conv's output, which nothing else reads: a tenth of the step saved
        for conv in (m for m in net if isinstance(m, nn.Conv2d)):
            fan_in = conv.weight[0].numel()
            conv.weight.data.normal_(0.0, math.sqrt(2.0 / fan_in), generator=generator)
            conv.bias.data.normal_(0.0, 0.1, generator=generator)
        networks.append(net.requires_grad_(False))
    return networks


class StackedConvNets(nn.Module):
    """The ``M`` networks of :func:`sample_random_convnets` as one network of grouped convolutions.

    Conv layer ``l`` of network ``k`` becomes group ``k`` of one convolution with ``groups=M``; the input is
    repeated ``M`` times along the channels, so one pass maps a batch through every network (one kernel
    launch per layer instead of ``M``, what a GPU wants). Output channel block ``k`` is network ``k``'s
    output, so the flattened output equals the concatenation of the networks' flattened outputs.

    Args:
        networks: ``M >= 1`` networks of the same architecture (conv layers and parameter-free layers).
    """

    def __init__(self, networks: Sequence[nn.Sequential]) -> None:
        super().__init__()
        self.num_models = len(networks)
        layers: list[nn.Module] = []
        for modules in zip(*networks):
            first = modules[0]
            if isinstance(first, nn.Conv2d):
                conv = nn.Conv2d(first.in_channels * self.num_models, first.out_channels * self.num_models,
                                 first.kernel_size, padding=first.padding, groups=self.num_models)
                conv.weight.data.copy_(torch.cat([m.weight.detach() for m in modules]))
                conv.bias.data.copy_(torch.cat([m.bias.detach() for m in modules]))
                layers.append(conv.requires_grad_(False))
            else:  # ReLU, identity norm, pooling: no parameters, shared
                layers.append(first)
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Flattened outputs of all networks ``[B, M*D]``, network by network."""
        return self.body(x.repeat(1, self.num_models, 1, 1)).flatten(1)


def random_features(x: Tensor, networks: Sequence[nn.Module] | StackedConvNets) -> Tensor:
    """Concatenated flattened outputs of ``networks``, scaled by ``1/sqrt(M*D)``.

    Args:
        x: Inputs ``[B, C, F, T]``.
        networks: ``M`` feature extractors with ``D`` outputs each, or all of them stacked.

    Returns:
        Features ``[B, M*D]``; ``phi(a) . phi(b)`` is the Monte-Carlo estimate of the NNGP kernel.
    """
    if isinstance(networks, StackedConvNets):
        feats = networks(x)
    else:
        feats = torch.cat([net(x).flatten(1) for net in networks], dim=1)
    return feats / math.sqrt(feats.shape[1])


def readout_kernel(phi_a: Tensor, phi_b: Tensor, constant: float) -> Tensor:
    """Kernel ``2 phi_a phi_b^T + constant`` of the random features followed by a random linear readout.

    The readout has weights ``N(0, 2/D)`` (He) and biases of variance ``constant``, so the NNGP kernel
    of its outputs is the scaled feature kernel plus a constant (bias) term, as in the RFAD code.

    Args:
        phi_a: Features ``[A, D']`` from :func:`random_features`.
        phi_b: Features ``[B, D']``.
        constant: Constant kernel term (the readout bias variance; the original's 0.01).

    Returns:
        Kernel matrix ``[A, B]``.
    """
    return _READOUT_GAIN * (phi_a @ phi_b.T) + constant


def kernel_ridge_solve(k_ss: Tensor, y_s: Tensor, ridge: float) -> Tensor:
    """Dual coefficients ``(K_ss + ridge * tr(K_ss)/n * I)^-1 Y_s`` in float64 (differentiable).

    The ridge is relative to the mean eigenvalue of ``K_ss``, so it does not depend on the kernel's
    scale. A Cholesky factorisation is tried first; if ``K_ss`` is numerically indefinite the jitter is
    raised a hundredfold (from at least 1e-10, up to four times) before falling back to a pseudo-inverse.

    Args:
        k_ss: Support kernel ``[n, n]``.
        y_s: Regression targets ``[n, K]``.
        ridge: Relative ridge ``lambda``.

    Returns:
        Coefficients ``[n, K]`` (float64).
    """
    k_ss, y_s = k_ss.double(), y_s.double()
    n = k_ss.shape[0]
    eye = torch.eye(n, dtype=k_ss.dtype, device=k_ss.device)
    scale = torch.trace(k_ss) / n
    for attempt in range(5):
        jitter = ridge if attempt == 0 else max(ridge, 1e-10) * 100**attempt
        regularised = k_ss + jitter * scale * eye
        chol, info = torch.linalg.cholesky_ex(regularised)
        if int(info) == 0:
            return torch.cholesky_solve(y_s, chol)
    return torch.linalg.pinv(regularised, hermitian=True) @ y_s


class Snapshot(NamedTuple):
    """A validated state of the RFAD set, as stored (``accuracy`` is the kernel-regression validation accuracy)."""

    accuracy: float
    features: Tensor
    targets: Tensor
    regression_targets: Tensor
    temperature: float


class RFAD(Distiller):
    """Random Feature Approximation Distillation (Loo et al., 2022; Gudur & Thomaz, Algorithm 1).

    At fit start the normalised training split is held on the device. Each training step draws a real
    batch of ``real_batch`` distinct examples from it (seeded by ``seed``, the global step and the rank,
    so a run and its resumption draw the same batches), samples ``num_models`` random ConvNets from
    ``seed`` and the global step (identical on every DDP rank), predicts the batch's labels by kernel
    ridge regression on the synthetic set and updates the set with Adam. Under DDP each rank draws its
    own real batch and the base averages the gradients across ranks, which equals the gradient of the
    union of the batches. Validation (``ddlight validate`` too) reports the kernel regression accuracy of
    the current set under ``num_eval_models`` fixed random networks: ``val/acc``, on which the run keeps
    its best set and stops early.

    Args:
        in_shape: Feature shape ``(C, F, T)`` (linked from ``data.feature_shape``).
        num_classes: Number of classes (linked from ``data.num_classes``).
        ipc: Synthetic samples per class.
        init: ``real`` (random real samples of each class), ``herding`` or ``noise`` (:class:`Distiller`).
        learn_labels: Learn the regression targets (exported as soft labels ``softmax(logits)``).
        label_scale: Initial logit of the true class; the regression target is the centred logits
            divided by it, i.e. ``onehot - 1/K`` at initialisation.
        num_models: Random networks ``M`` sampled at every step.
        width: Channels of the random ConvNets.
        depth: Conv blocks of the random ConvNets.
        ridge: Relative ridge ``lambda`` (times ``tr(K_ss)/|S|``, the mean eigenvalue of ``K_ss``). The
            default 5e-3 is the original's (``--jit`` of its ``run_distillation.py``).
        kernel_constant: Constant term ``c`` added to every kernel entry (``K_ss``, ``K_ts`` and the
            validation kernels): the bias variance of the random readout. The original's is 0.01; 0
            drops the term.
        real_batch: Real examples drawn per step and rank, at most the training split's size. The
            default 5120 is the original's (4 batches of 1280).
        loss: ``ce`` (Platt-scaled cross-entropy with a learnable temperature) or ``mse``.
        temperature: Initial Platt temperature ``tau`` (``logits = y_hat / tau``).
        lr: Adam learning rate of the synthetic set.
        lr_labels: Adam learning rate of the learnable labels.
        lr_temperature: Adam learning rate of ``log(tau)``.
        num_eval_models: Fixed random networks of the validation kernel.
        seed: Seed of all random networks and real batches (per step: ``seed`` and the global step).
        max_bad_steps: Consecutive non-finite steps tolerated (each skipped) before stopping.
        restore_best: Export (and evaluate) the set of the best ``val/acc`` seen, not the last one, so
            an early-stopped run keeps its best set rather than the ``patience`` checks after it.
        patience: Stop the run after this many validation checks (on the validation split) without a
            new best ``val/acc``; ``None`` never stops early. The original stops after 1000 steps
            without improvement at one check every 40 steps, i.e. 25 checks.
        formation: IDC's multi-formation in time (:class:`Distiller`): the kernel regression's support is the
            decoded set, ``ipc × formation`` samples per class at the storage of ``ipc``. 1 (default): off.
        stack_networks: Run a step's ``num_models`` networks as one network of grouped convolutions
            (:class:`StackedConvNets`; the same features up to float rounding) instead of one after
            another. Off by default: on a CPU grouped convolutions are slower (BENCHMARKS.md, "RFAD: random
            networks stacked vs one by one").
    """


    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        ipc: int = 10,
        init: Init = "real",
        learn_labels: bool = False,
        label_scale: float = 5.0,
        num_models: int = 8,
        width: int = 256,
        depth: int = 3,
        ridge: float = 5e-3,
        kernel_constant: float = 0.01,
        real_batch: int = 5120,
        loss: Literal["ce", "mse"] = "ce",
        temperature: float = 1.0,
        lr: float = 1e-3,
        lr_labels: float = 1e-3,
        lr_temperature: float = 1e-2,
        num_eval_models: int = 8,
        seed: int = 0,
        max_bad_steps: int = 10,
        restore_best: bool = True,
        patience: int | None = 25,
        stack_networks: bool = False,
        formation: int = 1,
    ) -> None:
        super().__init__(in_shape, num_classes, ipc, init, learn_labels, label_scale, seed, max_bad_steps,
                         formation=formation)
        if min(num_models, num_eval_models, width, depth, real_batch) < 1:
            raise ValueError("num_models, num_eval_models, width, depth and real_batch must be >= 1")
        if ridge < 0 or kernel_constant < 0 or temperature <= 0:
            raise ValueError(
                "ridge and kernel_constant must be >= 0 and temperature > 0, "
                f"got {ridge}, {kernel_constant}, {temperature}"
            )
        if patience is not None and patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {patience}")
        if loss not in ("ce", "mse"):
            raise ValueError(f"loss must be 'ce' or 'mse', got {loss!r}")
        self.save_hyperparameters()
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)), requires_grad=loss == "ce")
        self._eval_networks: list[nn.Module] | None = None
        self._eval_support: tuple[Tensor, Tensor] | None = None
        #: The best validated set so far.
        self.best: Snapshot | None = None
        #: Validation checks since the last new best.
        self.checks_since_best = 0
        self._val_counts = torch.zeros(2)
        self._real: tuple[Tensor, Tensor] | None = None

    # ------------------------------------------------------------------------------ kernel regression
    @property
    def temperature(self) -> Tensor:
        """Platt temperature ``tau = exp(log_tau)`` (always positive)."""
        return self.log_temperature.exp()

    def regression_targets(self) -> Tensor:
        """Targets ``Y_s [N, K]`` of the synthetic set: centred one-hot, or the centred learned logits."""
        if self.label_logits is not None:
            logits = self.label_logits
            return (logits - logits.mean(-1, keepdim=True)) / self.hparams.label_scale
        return F.one_hot(self.labels, self.num_classes).float() - 1.0 / self.num_classes

    def support(self) -> tuple[Tensor, Tensor]:
        """The regression's support (differentiable): the decoded set and its regression targets ``Y_s``."""
        return self.decoded(self.synthetic, self.regression_targets())

    def random_networks(self, seed: int) -> list[nn.Module] | StackedConvNets:
        """The ``num_models`` random networks drawn from ``seed``, on this module's device (stacked with
        ``stack_networks``)."""
        hp = self.hparams
        nets = sample_random_convnets(self.in_shape, hp.num_models, hp.width, hp.depth, seed)
        if hp.stack_networks:
            return StackedConvNets(nets).to(self.device)
        return [net.to(self.device) for net in nets]

    def kernel(self, phi_a: Tensor, phi_b: Tensor) -> Tensor:
        """:func:`readout_kernel` with this module's ``kernel_constant``."""
        return readout_kernel(phi_a, phi_b, self.hparams.kernel_constant)

    def predict(self, features: Tensor, networks: Sequence[nn.Module] | StackedConvNets) -> Tensor:
        """Kernel ridge regression predictions ``[B, K]`` (float64) of the synthetic set for ``features``."""
        support, y_s = self.support()
        phi_s = random_features(support, networks).double()
        with torch.no_grad():
            phi_t = torch.cat([random_features(chunk, networks) for chunk in features.split(_REAL_CHUNK)]).double()
        alpha = kernel_ridge_solve(self.kernel(phi_s, phi_s), y_s, self.hparams.ridge)
        return self.kernel(phi_t, phi_s) @ alpha

    def loss_fn(self, preds: Tensor, labels: Tensor) -> Tensor:
        """Platt-scaled cross-entropy or MSE against centred one-hot targets."""
        if self.hparams.loss == "ce":
            return F.cross_entropy(preds / self.temperature.double(), labels)
        targets = F.one_hot(labels, self.num_classes).double() - 1.0 / self.num_classes
        return 0.5 * (targets - preds).pow(2).mean()

    def regression_loss(
        self, features: Tensor, labels: Tensor, networks: Sequence[nn.Module] | StackedConvNets
    ) -> tuple[Tensor, Tensor]:
        """Loss (differentiable w.r.t. the trained tensors) and accuracy of the regression on one real batch.

        Args:
            features: Real features ``[B, C, F, T]`` (this rank's batch).
            labels: Real labels ``[B]``.
            networks: The random networks of the kernel (:meth:`random_networks`).
        """
        preds = self.predict(features, networks)
        return self.loss_fn(preds, labels), (preds.argmax(-1) == labels).float().mean()

    # ---------------------------------------------------------------------------------- real batches
    def hold_real_data(self, features: Tensor, labels: Tensor) -> None:
        """Keep the real training split (on its device) from which every step draws its real batch."""
        self._real = (features, labels)

    def draw_real_batch(self, seed: int) -> tuple[Tensor, Tensor]:
        """``min(real_batch, N)`` distinct held examples, drawn from ``seed`` (on the held data's device).

        Raises:
            RuntimeError: If no training split is held (:meth:`hold_real_data`, done at fit start).
        """
        if self._real is None:
            raise RuntimeError("no real training data held; call hold_real_data() (done in on_fit_start)")
        features, labels = self._real
        generator = torch.Generator(device=labels.device).manual_seed(seed)
        chosen = torch.randperm(len(labels), generator=generator, device=labels.device)[: self.hparams.real_batch]
        return features[chosen], labels[chosen]

    # ------------------------------------------------------------------------------------- training
    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        groups: list[dict[str, Any]] = [{"params": [self.synthetic], "lr": hp.lr}]
        if self.label_logits is not None:
            groups.append({"params": [self.label_logits], "lr": hp.lr_labels})
        if hp.loss == "ce":
            groups.append({"params": [self.log_temperature], "lr": hp.lr_temperature})
        return torch.optim.Adam(groups)

    def loss(self) -> Tensor:
        """The regression loss of this rank's real batch under this step's random networks (shared by ranks)."""
        features, labels = self.draw_real_batch(self.step_seed("real batch"))
        networks = self.random_networks(self.step_seed("random networks", shared=True))
        loss, acc = self.regression_loss(features, labels, networks)
        self.log_step({"train/acc": acc, "train/temperature": self.temperature.detach()}, prog_bar=True)
        return loss

    # ---------------------------------------------------------------------------------- validation
    def _prepare_eval(self, features: Tensor, regression_targets: Tensor) -> None:
        """Fix the evaluation networks (once) and solve the regression of a set."""
        if self._eval_networks is None:
            hp = self.hparams
            seed = derive_seed("eval", self.seed)
            self._eval_networks = sample_random_convnets(self.in_shape, hp.num_eval_models, hp.width, hp.depth, seed)
        self._eval_networks = [net.to(self.device) for net in self._eval_networks]
        with torch.no_grad():
            phi_s = random_features(features, self._eval_networks).double()
            alpha = kernel_ridge_solve(self.kernel(phi_s, phi_s), regression_targets, self.hparams.ridge)
        self._eval_support = (phi_s, alpha)

    def on_validation_epoch_start(self) -> None:
        self._prepare_eval(*self.support())
        self._val_counts = torch.zeros(2, device=self.device)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Kernel regression accuracy of the set on a validation batch (``val/acc``)."""
        assert self._eval_support is not None and self._eval_networks is not None  # on_validation_epoch_start
        phi_s, alpha = self._eval_support
        features, labels = batch
        preds = self.kernel(random_features(features, self._eval_networks).double(), phi_s) @ alpha
        correct = (preds.argmax(-1) == labels).float()
        self.log("val/acc", correct.mean(), prog_bar=True, sync_dist=True, batch_size=len(labels))
        self._val_counts += torch.stack([correct.sum(), correct.new_tensor(len(correct))])

    def on_validation_epoch_end(self) -> None:
        """Record the validation accuracy of the epoch (over all ranks); outside sanity checks."""
        correct, count = self.trainer.strategy.reduce(self._val_counts, reduce_op="sum").tolist()
        if count == 0 or self.trainer.sanity_checking:
            return
        self.record_validation(correct / count)

    def record_validation(self, accuracy: float) -> None:
        """Keep a copy of the set at a new best ``accuracy``; request a stop after ``patience`` stale checks.

        Every rank sees the same (reduced) accuracy, so all ranks keep the same set and stop together.
        """
        if self.best is None or accuracy > self.best.accuracy:
            self.best = Snapshot(accuracy, self.synthetic.detach().clone(), self.targets().detach().clone(),
                                 self.regression_targets().detach().clone(), float(self.temperature.detach()))
            self.checks_since_best = 0
        else:
            self.checks_since_best += 1
        patience = self.hparams.patience
        if patience is not None and self.checks_since_best >= patience:
            self.trainer.should_stop = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the early-stopping state (the best validated set, the checks since it) for resumption."""
        super().on_save_checkpoint(checkpoint)
        best = self.best._asdict() if self.best is not None else None
        checkpoint["rfad"] = {"best": best, "checks_since_best": self.checks_since_best}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the early-stopping state saved by :meth:`on_save_checkpoint` (if any)."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("rfad")
        if state is not None:
            self.best = Snapshot(**state["best"]) if state["best"] is not None else None
            self.checks_since_best = state["checks_since_best"]

    def exported_set(self) -> tuple[Tensor, Tensor]:
        """The best validated set with ``restore_best`` (once validated), else the current one; decoded."""
        if self.hparams.restore_best and self.best is not None:
            return self.decoded(self.best.features, self.best.targets)
        return super().exported_set()

    # -------------------------------------------------------------------------------------- export
    def export_extras(self) -> dict[str, Any]:
        hp = self.hparams
        best = self.hparams.restore_best and self.best is not None
        return {
            "rfad": {
                "temperature": self.best.temperature if best else float(self.temperature.detach()),
                "best_val_acc": round(100 * self.best.accuracy, 4) if best else None,
                "num_models": hp.num_models,
                "width": hp.width,
                "depth": hp.depth,
                "ridge": hp.ridge,
                "kernel_constant": hp.kernel_constant,
                "real_batch": hp.real_batch,
                "loss": hp.loss,
            }
        }
