"""RFAD: dataset distillation by kernel ridge regression on random ConvNet features.

Loo et al., "Efficient Dataset Distillation using Random Feature Approximation" (NeurIPS 2022), the
method Gudur & Thomaz use for audio (their Algorithm 1). Every step samples ``M`` fresh random ConvNets
(no normalisation, He-Gaussian weights, the NNGP/NTK setting), maps the real batch and the synthetic set
to the concatenation of their final pooled conv features scaled by ``1/sqrt(M*D)``, and regresses the
real labels on the synthetic set with kernel ridge regression:

    K_ts = phi(X_t) phi(S)^T,   K_ss = phi(S) phi(S)^T,
    y_hat = K_ts (K_ss + lambda * tr(K_ss)/|S| * I)^-1 Y_s          (solved in float64)

The loss on the real batch (Platt-scaled cross-entropy ``CE(y_hat / tau, y)`` with a learnable
temperature, or ``0.5 * mean((Y_t - y_hat)^2)``) is differentiated with respect to the synthetic set
(and, optionally, the regression targets ``Y_s`` and ``tau``). Regression targets are centred one-hot
vectors ``onehot - 1/K`` as in the original code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ddlight.distillers.base import Distiller
from ddlight.networks.layers import conv_pool_stack

#: Offset that separates the seeds of the fixed validation networks from the per-step ones.
_EVAL_SEED_OFFSET = 2**40


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
        for conv in (m for m in net if isinstance(m, nn.Conv2d)):
            fan_in = conv.weight[0].numel()
            conv.weight.data.normal_(0.0, math.sqrt(2.0 / fan_in), generator=generator)
            conv.bias.data.normal_(0.0, 0.1, generator=generator)
        networks.append(net.requires_grad_(False))
    return networks


def random_features(x: Tensor, networks: Sequence[nn.Module]) -> Tensor:
    """Concatenated flattened outputs of ``networks``, scaled by ``1/sqrt(M*D)``.

    Args:
        x: Inputs ``[B, C, F, T]``.
        networks: ``M`` feature extractors with ``D`` outputs each.

    Returns:
        Features ``[B, M*D]``; ``phi(a) . phi(b)`` is the Monte-Carlo estimate of the NNGP kernel.
    """
    feats = torch.cat([net(x).flatten(1) for net in networks], dim=1)
    return feats / math.sqrt(feats.shape[1])


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


def average_across_ranks(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Mean of each tensor over all processes of the default group (identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(tensors)
    out = []
    for t in tensors:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        out.append(t / dist.get_world_size())
    return out


class Snapshot(NamedTuple):
    """A validated state of the RFAD set (``accuracy`` is the kernel-regression validation accuracy)."""

    accuracy: float
    features: Tensor
    targets: Tensor
    regression_targets: Tensor
    temperature: float


class RFAD(Distiller):
    """Random Feature Approximation Distillation (Loo et al., 2022; Gudur & Thomaz, Algorithm 1).

    Each training step takes a real batch, samples ``num_models`` random ConvNets from
    ``seed`` and the global step (identical on every DDP rank), predicts the batch's labels by kernel
    ridge regression on the synthetic set and updates the set with Adam. Under DDP each rank holds a
    shard of the batch and the gradients are averaged across ranks, which equals the gradient of the
    union batch for equal shards. Validation (and test) report the kernel regression accuracy of the
    current set under ``num_eval_models`` fixed random networks: ``val/acc``, the quantity to early-stop on.

    Args:
        in_shape: Feature shape ``(C, F, T)`` (linked from ``data.feature_shape``).
        num_classes: Number of classes (linked from ``data.num_classes``).
        ipc: Synthetic samples per class.
        init: ``real`` (random real samples of each class) or ``noise``.
        learn_labels: Learn the regression targets (exported as soft labels ``softmax(logits)``).
        label_scale: Initial logit of the true class; the regression target is the centred logits
            divided by it, i.e. ``onehot - 1/K`` at initialisation.
        num_models: Random networks ``M`` sampled at every step.
        width: Channels of the random ConvNets.
        depth: Conv blocks of the random ConvNets.
        ridge: Relative ridge ``lambda`` (times ``tr(K_ss)/|S|``). The default 1e-6 is the original's:
            with ``|S|`` far below the feature dimension ``K_ss`` is full rank, RFAD wants (near)
            interpolation, and the ridge only guards the float64 solve.
        loss: ``ce`` (Platt-scaled cross-entropy with a learnable temperature) or ``mse``.
        temperature: Initial Platt temperature ``tau`` (``logits = y_hat / tau``).
        lr: Adam learning rate of the synthetic set.
        lr_labels: Adam learning rate of the learnable labels.
        lr_temperature: Adam learning rate of ``log(tau)``.
        num_eval_models: Fixed random networks of the validation/test kernel.
        seed: Seed of all random networks (per step: ``seed`` and the global step).
        restore_best: Export (and evaluate) the set of the best ``val/acc`` seen, not the last one, so
            an early-stopped run keeps its best set rather than the ``patience`` steps after it.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        ipc: int = 10,
        init: Literal["real", "noise"] = "real",
        learn_labels: bool = False,
        label_scale: float = 5.0,
        num_models: int = 8,
        width: int = 256,
        depth: int = 3,
        ridge: float = 1e-6,
        loss: Literal["ce", "mse"] = "ce",
        temperature: float = 1.0,
        lr: float = 1e-3,
        lr_labels: float = 1e-3,
        lr_temperature: float = 1e-2,
        num_eval_models: int = 8,
        seed: int = 0,
        restore_best: bool = True,
    ) -> None:
        super().__init__(in_shape, num_classes, ipc, init, learn_labels, label_scale)
        if min(num_models, num_eval_models, width, depth) < 1:
            raise ValueError("num_models, num_eval_models, width and depth must be >= 1")
        if ridge < 0 or temperature <= 0:
            raise ValueError(f"ridge must be >= 0 and temperature > 0, got {ridge}, {temperature}")
        if loss not in ("ce", "mse"):
            raise ValueError(f"loss must be 'ce' or 'mse', got {loss!r}")
        self.save_hyperparameters()
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        self._eval_networks: list[nn.Module] | None = None
        self._eval_support: tuple[Tensor, Tensor] | None = None
        #: The best validated set so far.
        self.best: Snapshot | None = None
        self._val_counts = torch.zeros(2)

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

    def networks_for_step(self, step: int) -> list[nn.Module]:
        """The ``num_models`` random networks of training step ``step`` (same on every rank)."""
        hp = self.hparams
        nets = sample_random_convnets(self.in_shape, hp.num_models, hp.width, hp.depth, hp.seed * 1_000_003 + step)
        return [net.to(self.device) for net in nets]

    def predict(self, features: Tensor, networks: Sequence[nn.Module]) -> Tensor:
        """Kernel ridge regression predictions ``[B, K]`` (float64) of the synthetic set for ``features``."""
        phi_s = random_features(self.synthetic, networks).double()
        with torch.no_grad():
            phi_t = random_features(features, networks).double()
        alpha = kernel_ridge_solve(phi_s @ phi_s.T, self.regression_targets(), self.hparams.ridge)
        return (phi_t @ phi_s.T) @ alpha

    def loss_fn(self, preds: Tensor, labels: Tensor) -> Tensor:
        """Platt-scaled cross-entropy or MSE against centred one-hot targets."""
        if self.hparams.loss == "ce":
            return F.cross_entropy(preds / self.temperature.double(), labels)
        targets = F.one_hot(labels, self.num_classes).double() - 1.0 / self.num_classes
        return 0.5 * (targets - preds).pow(2).mean()

    def trainable(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates: the set, the labels if learned, ``log(tau)`` for ``ce``."""
        params = [self.synthetic]
        if self.label_logits is not None:
            params.append(self.label_logits)
        if self.hparams.loss == "ce":
            params.append(self.log_temperature)
        return params

    def gradients(self, features: Tensor, labels: Tensor, step: int) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Loss, accuracy and rank-averaged gradients of :meth:`trainable` on one (sharded) real batch.

        Args:
            features: Real features ``[B, C, F, T]`` (this rank's shard).
            labels: Real labels ``[B]``.
            step: Global step, which selects the random networks.

        Returns:
            The loss and accuracy on this shard and the gradients averaged over all ranks.
        """
        preds = self.predict(features, self.networks_for_step(step))
        loss = self.loss_fn(preds, labels)
        grads = torch.autograd.grad(loss, self.trainable())
        acc = (preds.argmax(-1) == labels).float().mean()
        return loss.detach(), acc, average_across_ranks(grads)

    # ------------------------------------------------------------------------------------- training
    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        groups: list[dict[str, Any]] = [{"params": [self.synthetic], "lr": hp.lr}]
        if self.label_logits is not None:
            groups.append({"params": [self.label_logits], "lr": hp.lr_labels})
        if hp.loss == "ce":
            groups.append({"params": [self.log_temperature], "lr": hp.lr_temperature})
        return torch.optim.Adam(groups)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        features, labels = batch
        optimizer = self.optimizers()
        loss, acc, grads = self.gradients(features, labels, self.global_step)
        for param, grad in zip(self.trainable(), grads):
            param.grad = grad.to(param.dtype)
        optimizer.step()
        optimizer.zero_grad()
        self.log_dict(
            {"train/loss": loss.float(), "train/acc": acc, "train/temperature": self.temperature.detach()},
            prog_bar=True,
            batch_size=len(labels),
        )
        return loss

    # ---------------------------------------------------------------------------------- validation
    def _prepare_eval(self, features: Tensor, regression_targets: Tensor) -> None:
        """Fix the evaluation networks (once) and solve the regression of a set."""
        if self._eval_networks is None:
            hp = self.hparams
            nets = sample_random_convnets(self.in_shape, hp.num_eval_models, hp.width, hp.depth, hp.seed + _EVAL_SEED_OFFSET)
            self._eval_networks = nets
        self._eval_networks = [net.to(self.device) for net in self._eval_networks]
        with torch.no_grad():
            phi_s = random_features(features, self._eval_networks).double()
            alpha = kernel_ridge_solve(phi_s @ phi_s.T, regression_targets, self.hparams.ridge)
        self._eval_support = (phi_s, alpha)

    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        assert self._eval_support is not None and self._eval_networks is not None  # on_*_epoch_start
        phi_s, alpha = self._eval_support
        features, labels = batch
        preds = (random_features(features, self._eval_networks).double() @ phi_s.T) @ alpha
        correct = (preds.argmax(-1) == labels).float()
        self.log(f"{stage}/acc", correct.mean(), prog_bar=True, sync_dist=True, batch_size=len(labels))
        if stage == "val":
            self._val_counts += torch.stack([correct.sum(), correct.new_tensor(len(correct))])

    def on_validation_epoch_start(self) -> None:
        self._prepare_eval(self.synthetic, self.regression_targets())
        self._val_counts = torch.zeros(2, device=self.device)

    def on_test_epoch_start(self) -> None:
        """Test the set that is exported: the best validated one with ``restore_best``."""
        if self.hparams.restore_best and self.best is not None:
            self._prepare_eval(self.best.features, self.best.regression_targets)
        else:
            self._prepare_eval(self.synthetic, self.regression_targets())

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        """Keep a copy of the set if its validation accuracy (over the epoch and all ranks) is the best."""
        correct, count = self.trainer.strategy.reduce(self._val_counts, reduce_op="sum").tolist()
        if count == 0 or self.trainer.sanity_checking:
            return
        accuracy = correct / count
        if self.best is None or accuracy > self.best.accuracy:
            self.best = Snapshot(accuracy, self.synthetic.detach().clone(), self.targets().detach().clone(),
                                 self.regression_targets().detach().clone(), float(self.temperature.detach()))

    def exported_set(self) -> tuple[Tensor, Tensor]:
        """The best validated set with ``restore_best`` (once validated), else the current one."""
        if self.hparams.restore_best and self.best is not None:
            return self.best.features, self.best.targets
        return super().exported_set()

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

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
                "loss": hp.loss,
            }
        }
