"""MTT: dataset distillation by Matching Training Trajectories (Cazenavette et al., CVPR 2022).

The distiller of DDFAD (Jiang et al. 2024): FD-MFCC features distilled by trajectory matching. Expert
trajectories are recorded beforehand by :class:`~ddlight.callbacks.TrajectoryRecorder`
(``ddlight fit --config configs/expert_<dataset>.yaml``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ddlight.augment import SpecAugment
from ddlight.distillers.base import Distiller, Init, soft_cross_entropy
from ddlight.evaluation.suite import embedding_network
from ddlight.io import load_trajectories
from ddlight.networks import for_unrolling
from ddlight.recipe import build_expert_network


def trajectory_loss(student: Tensor, start: Tensor, target: Tensor) -> Tensor:
    """Normalised parameter matching loss ``‖θ̂_N − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖²``.

    Args:
        student: Student parameters after the unroll ``θ̂_N`` (flat vector).
        start: Expert parameters at the start epoch ``θ*_t`` (flat vector).
        target: Expert parameters ``M`` epochs later ``θ*_{t+M}`` (flat vector).

    Returns:
        Scalar loss: 1 means the student got nowhere, 0 means it landed on the target.
    """
    return (student - target).pow(2).sum() / (start - target).pow(2).sum()


class MTT(Distiller):
    """Matching Training Trajectories, with DATM soft labels and an FTD exponential moving average.

    Each training step samples an expert and a start epoch ``t`` in ``[min_start_epoch, max_start_epoch)``,
    starts a student network at the expert's parameters ``θ*_t``, takes ``syn_steps`` differentiable SGD steps on
    (augmented) minibatches of the synthetic set with the learnable step size ``syn_lr`` and minimises
    :func:`trajectory_loss` against ``θ*_{t+expert_epochs}``. The synthetic set is updated with SGD
    (momentum ``momentum``), ``syn_lr`` with its own SGD, soft labels (``learn_labels``) with a third.
    Real data is not used. The step loop is the :class:`~ddlight.distillers.base.Distiller`'s: under DDP
    every rank samples its own expert, start epoch and minibatches against the same synthetic set and
    the gradients are averaged; a non-finite step is skipped (``max_bad_steps`` in a row stop the run).

    Guard of the step size:

    * ``syn_lr`` falling below ``min_syn_lr`` (or negative) is clamped back to ``min_syn_lr`` with a
      warning; rising above ``max_syn_lr`` stops training with a ``RuntimeError``: lower ``lr_lr``
      (or ``lr_img``) and rerun, or resume from the last checkpoint with the lower value.

    Memory: ``unroll="full"`` keeps the graph of the whole unroll for the backward pass, so memory grows
    linearly with ``syn_steps`` (about 1.1 GiB per student step at the UrbanSound8K feature shape, ipc
    10). ``unroll="checkpointed"`` computes the same meta-gradient in bounded memory: a first pass runs
    the ``syn_steps`` student steps without a graph and keeps the parameters every ``segment`` steps;
    the backward pass then rebuilds the graph of one segment at a time, last to first, replaying each
    step's minibatch and augmentation draw, and carries the adjoint ``∂L/∂θ`` from segment to segment.
    Memory is that of ``segment`` steps plus one parameter vector per segment, whatever ``syn_steps``;
    the price is one extra first-order pass (about a third more time). The gradient is exact (equal to
    the full unroll's up to the summation order of floating point); TESLA's (Cui et al. 2023) per-step
    accumulation is not used because it drops the dependence of later student steps on earlier
    batches.

    Args:
        in_shape: Feature shape ``(C, F, T)`` (linked from ``data.feature_shape``).
        num_classes: Number of classes (linked from ``data.num_classes``).
        ipc: Stored synthetic samples per class (each holds ``formation`` training samples).
        init: ``real`` (random real samples per class), ``herding`` (in the first expert's final embedding) or
            ``noise``; with ``formation`` > 1 the set starts from ``ipc × formation`` real samples per class, packed
            ``formation`` to a stored sample (:func:`~ddlight.distillers.formation.encode`).
        learn_labels: Learn soft labels (DATM).
        label_scale: Initial logit of the true class for learnable labels (``label_init="onehot"``).
        label_init: Initial logits of learnable labels: ``onehot`` (``label_scale`` × one-hot) or ``experts``
            (DATM: per sample, the mean of the final experts' logits over the experts that classify it
            correctly; ``label_scale`` × one-hot where none does). Computed once on the initial set.
        expert_dir: Folder of expert trajectories written by the expert config.
        syn_steps: Differentiable student steps ``N`` per update.
        expert_epochs: Expert epochs ``M`` the student must cover.
        max_start_epoch: Start epochs are drawn from ``[min_start_epoch, max_start_epoch)`` (clipped to what
            the experts recorded, with a warning).
        min_start_epoch: The window's first start epoch: 0 in the original MTT; DATM moves the window to
            later epochs for larger sets (the later segments carry the harder patterns that more samples
            per class can hold).
        lr_img: Learning rate of the synthetic features (normalised feature space).
        lr_lr: Learning rate of ``syn_lr``.
        lr_label: Learning rate of the soft-label logits.
        momentum: SGD momentum of the synthetic features and labels.
        syn_lr_init: Initial student step size; None uses the experts' learning rate.
        batch_syn: Synthetic minibatch size per student step (decoded samples); None uses the whole set.
        formation: IDC's multi-formation in time (:mod:`ddlight.distillers.formation`): each stored sample
            holds this many segments, each stretched to a full-length training sample, so the student and the
            exported set have ``ipc × formation`` samples per class at the storage of ``ipc``. 1 (default): off.
        augment: Apply differentiable :class:`~ddlight.augment.SpecAugment` to every student batch.
        ema_decay: Decay of an exponential moving average of the set (FTD); when set, the average is
            what gets exported and evaluated.
        max_grad_norm: Clip the synthetic set's gradient to this norm (None: no clipping).
        max_bad_steps: Consecutive non-finite steps tolerated before stopping.
        min_syn_lr: Lower clamp of ``syn_lr``.
        max_syn_lr: ``syn_lr`` above this stops training.
        allow_augment_mismatch: Match trajectories recorded with another augmentation setting than
            ``augment`` (by default that is refused: the original's experts train with the very
            augmentation the student sees).
        unroll: ``full`` (keep the whole unroll's graph) or ``checkpointed`` (bounded memory, see above).
        segment: Student steps per recomputed segment of the checkpointed unroll.
        seed: Seed of the per-step draws (expert, start epoch, minibatches, augmentation); None uses the
            run's seed (``seed_everything``). Each step's draws are derived from the seed, the step and
            the rank, so a resumed run repeats the uninterrupted run's draws exactly.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        ipc: int = 10,
        init: Init = "real",
        learn_labels: bool = False,
        label_scale: float = 5.0,
        label_init: Literal["onehot", "experts"] = "onehot",
        expert_dir: str = "experts/synthetic",
        syn_steps: int = 20,
        expert_epochs: int = 2,
        max_start_epoch: int = 10,
        min_start_epoch: int = 0,
        lr_img: float = 100.0,
        lr_lr: float = 1e-5,
        lr_label: float = 2.0,
        momentum: float = 0.5,
        syn_lr_init: float | None = None,
        batch_syn: int | None = None,
        formation: int = 1,
        augment: bool = True,
        ema_decay: float | None = None,
        max_grad_norm: float | None = None,
        max_bad_steps: int = 10,
        min_syn_lr: float = 1e-5,
        max_syn_lr: float = 1.0,
        allow_augment_mismatch: bool = False,
        unroll: Literal["full", "checkpointed"] = "full",
        segment: int = 4,
        seed: int | None = None,
    ) -> None:
        super().__init__(in_shape, num_classes, ipc, init, learn_labels, label_scale, seed, max_bad_steps, max_grad_norm,
                         formation)
        if syn_steps < 1 or expert_epochs < 1 or max_start_epoch < 1 or segment < 1:
            raise ValueError("syn_steps, expert_epochs, max_start_epoch and segment must be >= 1")
        if not 0 <= min_start_epoch < max_start_epoch:
            raise ValueError(f"need 0 <= min_start_epoch < max_start_epoch, got {min_start_epoch}, {max_start_epoch} "
                             "(a config may set min_start_epoch: override both)")
        if label_init not in ("onehot", "experts"):
            raise ValueError(f"label_init must be 'onehot' or 'experts', got {label_init!r}")
        if label_init == "experts" and not learn_labels:
            raise ValueError("label_init='experts' initialises learnable soft labels: set learn_labels true "
                             "(lr_label 0 keeps them at the experts' logits)")
        if unroll not in ("full", "checkpointed"):
            raise ValueError(f"unroll must be 'full' or 'checkpointed', got {unroll!r}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {ema_decay}")
        if not 0.0 < min_syn_lr < max_syn_lr:
            raise ValueError(f"need 0 < min_syn_lr < max_syn_lr, got {min_syn_lr}, {max_syn_lr}")
        self.save_hyperparameters()
        self.syn_lr = nn.Parameter(torch.tensor(syn_lr_init if syn_lr_init is not None else 0.01))
        self.augment = SpecAugment(enabled=augment)
        self.register_buffer("synthetic_ema", torch.zeros_like(self.synthetic) if ema_decay else None)
        self.experts: list[dict[str, Tensor]] = []
        self.student: nn.Module | None = None
        self.augment_generator = torch.Generator()  # reseeded per student step; moved to the device in on_fit_start
        self.max_start = max_start_epoch  # clipped to what the experts recorded in setup()

    # ------------------------------------------------------------------------------------ experts
    def setup(self, stage: str) -> None:
        """Load the experts, check them against the data and build the student network."""
        if stage != "fit":
            return
        manifest, experts = load_trajectories(self.hparams.expert_dir)
        self.check_experts(manifest, self.trainer.datamodule.describe())
        snapshots = min(len(next(iter(e.values()))) for e in experts)
        if snapshots <= self.hparams.expert_epochs:
            raise ValueError(
                f"experts in {self.hparams.expert_dir} have {snapshots - 1} epochs, fewer than "
                f"expert_epochs={self.hparams.expert_epochs}; record longer experts"
            )
        self.max_start = min(self.hparams.max_start_epoch, snapshots - self.hparams.expert_epochs)
        recorded = (f"experts in {self.hparams.expert_dir} have {snapshots - 1} epochs: with expert_epochs="
                    f"{self.hparams.expert_epochs}")
        if self.hparams.min_start_epoch >= self.max_start:
            raise ValueError(
                f"{recorded} the last start epoch is {self.max_start - 1}, below min_start_epoch="
                f"{self.hparams.min_start_epoch}; lower it or record longer experts"
            )
        if self.max_start < self.hparams.max_start_epoch:
            warnings.warn(
                f"{recorded} start epochs are drawn from [{self.hparams.min_start_epoch}, {self.max_start}), not up "
                f"to max_start_epoch={self.hparams.max_start_epoch}; record longer experts to use the whole window",
                stacklevel=2,
            )
        self.experts = experts
        self.build_student(manifest)
        if self.hparams.syn_lr_init is None:
            self.syn_lr.data.fill_(float(manifest["optimizer"]["lr"]))

    def init_embedding_network(self, features: Tensor, labels: Tensor) -> nn.Module:
        """The first expert at its final snapshot (``init: herding`` then picks the evaluation's herding subset)."""
        return embedding_network(features, labels, self.num_classes, expert_dir=self.hparams.expert_dir)

    def build_student(self, manifest: dict[str, Any]) -> None:
        """Build the student network the experts were trained as (its own weights are never used)."""
        self.student = for_unrolling(build_expert_network(manifest)).requires_grad_(False)
        self.shapes = {name: p.shape for name, p in self.student.named_parameters()}

    def check_experts(self, manifest: dict[str, Any], data: dict[str, Any]) -> None:
        """Check that experts were recorded on this data with this feature configuration.

        Args:
            manifest: The experts' manifest.
            data: The datamodule's ``describe()``.

        Raises:
            ValueError: Naming every entry that differs and the command that regenerates the experts.
        """
        recorded = manifest.get("data") or {}
        expected = {
            "in_shape": (list(manifest.get("in_shape", [])), list(self.in_shape)),
            "num_classes": (manifest.get("num_classes"), self.num_classes),
        }
        expected |= {key: (recorded.get(key), data.get(key)) for key in ("dataset", "features", "fingerprint")}
        clashes = [f"{key}: experts {old!r} vs data {new!r}" for key, (old, new) in expected.items() if old != new]
        if clashes:
            raise ValueError(
                f"experts in {self.hparams.expert_dir} do not match this data ({'; '.join(clashes)}). "
                f"Regenerate them with `ddlight fit --config configs/expert_{data.get('dataset')}.yaml` using the "
                f"same data options, or point expert_dir at matching experts."
            )
        recorded_augment, augment = manifest.get("augment"), self.augment.config()
        if recorded_augment != augment and not self.hparams.allow_augment_mismatch:
            raise ValueError(
                f"experts in {self.hparams.expert_dir} were trained with augmentation {recorded_augment} but this "
                f"distillation augments with {augment}: the student must see what the experts saw. Record experts "
                f"with --model.init_args.augment {str(augment is not None).lower()} (configs/expert_*.yaml), set "
                f"augment to match, or pass --model.init_args.allow_augment_mismatch true."
            )

    def flat(self, expert: dict[str, Tensor], epoch: int) -> Tensor:
        """Expert parameters at ``epoch`` as one flat vector (student parameter order)."""
        return torch.cat([expert[name][epoch].flatten() for name in self.shapes]).to(self.device)

    def unflatten(self, params: Tensor) -> dict[str, Tensor]:
        """Split a flat parameter vector into the student's named parameter tensors."""
        sizes = [math.prod(shape) for shape in self.shapes.values()]
        return {name: p.view(shape) for (name, shape), p in zip(self.shapes.items(), params.split(sizes))}

    # -------------------------------------------------------------------------------------- unroll
    def minibatches(self, generator: torch.Generator) -> list[Tensor]:
        """Index minibatches of the ``syn_steps`` student steps, as in the original MTT.

        Each pass over the set is a fresh permutation cut into chunks of ``batch_syn`` (the last chunk of
        a pass may be smaller); a chunk never spans two passes, so no step sees a sample twice and a
        ``batch_syn`` of at least the set size uses the whole set once per step.
        """
        n = len(self.synthetic) * self.formation
        batch = min(self.hparams.batch_syn or n, n)
        chunks: list[Tensor] = []
        while len(chunks) < self.hparams.syn_steps:
            chunks.extend(torch.randperm(n, generator=generator).split(batch))
        return chunks[: self.hparams.syn_steps]

    def plan(self, generator: torch.Generator) -> list[tuple[Tensor, int]]:
        """The ``syn_steps`` student steps to take: minibatch indices and augmentation seed of each."""
        return [(idx, int(torch.randint(2**62, (1,), generator=generator))) for idx in self.minibatches(generator)]

    def student_step(
        self, params: Tensor, step: tuple[Tensor, int], x: Tensor, y: Tensor, lr: Tensor, create_graph: bool
    ) -> Tensor:
        """One SGD step of the student on the minibatch ``step`` of ``(x, y)``: ``θ − lr ∇ℓ(θ)``.

        Args:
            params: Flat student parameters (must require grad).
            step: Minibatch indices and the seed of its augmentation draw (replayed exactly).
            x: Synthetic features.
            y: Their targets.
            lr: Student step size.
            create_graph: Keep the graph of the gradient (for the meta-gradient).
        """
        idx, seed = step
        idx = idx.to(x.device)
        inputs = self.augment(x[idx], self.augment_generator.manual_seed(seed))
        loss = soft_cross_entropy(functional_call(self.student, self.unflatten(params), (inputs,)), y[idx])
        (grad,) = torch.autograd.grad(loss, params, create_graph=create_graph)
        return params - lr * grad

    def unroll(self, start: Tensor, plan: list[tuple[Tensor, int]]) -> Tensor:
        """Take the student steps of ``plan`` from ``start``, differentiably.

        Returns:
            The final flat parameters, differentiable w.r.t. the set, ``syn_lr`` and the labels.
        """
        x, y = self.training_set()
        params = start.detach().requires_grad_(True)
        for step in plan:
            params = self.student_step(params, step, x, y, self.syn_lr, create_graph=True)
        return params

    def checkpointed_backward(self, start: Tensor, target: Tensor, plan: list[tuple[Tensor, int]]) -> Tensor:
        """Matching loss of ``plan`` from ``start``; its gradient is accumulated into the trained tensors.

        The memory-bounded equivalent of ``trajectory_loss(self.unroll(start, plan), start, target)``
        followed by a backward pass (see the class docstring).
        """
        (x, y), lr = self.training_set(detach=True), self.syn_lr.detach()
        segment = self.hparams.segment
        checkpoints, params = [], start.detach()
        for i, step in enumerate(plan):  # first pass: no graph, keep the start of every segment
            if i % segment == 0:
                checkpoints.append(params)
            params = self.student_step(params.requires_grad_(True), step, x, y, lr, create_graph=False).detach()
        final = params.requires_grad_(True)
        loss = trajectory_loss(final, start, target)
        (adjoint,) = torch.autograd.grad(loss, final)
        trained = self.trained_tensors()
        for k in reversed(range(len(checkpoints))):  # backward: one segment's graph at a time
            begin = checkpoints[k].requires_grad_(True)
            params, (x, y) = begin, self.training_set()
            for step in plan[k * segment : (k + 1) * segment]:
                params = self.student_step(params, step, x, y, self.syn_lr, create_graph=True)
            inputs = trained + [begin] if k else trained
            grads = torch.autograd.grad(params, inputs, grad_outputs=adjoint)
            for tensor, grad in zip(trained, grads):
                tensor.grad = grad if tensor.grad is None else tensor.grad.add_(grad)
            adjoint = grads[-1]
        return loss.detach()

    def sample_segment(self, generator: torch.Generator) -> tuple[Tensor, Tensor, int]:
        """Sample an expert and a start epoch ``t`` in ``[min_start_epoch, max_start)``.

        Returns:
            The flat expert parameters ``θ*_t`` and ``θ*_{t+expert_epochs}``, and ``t``.
        """
        expert = self.experts[int(torch.randint(len(self.experts), (1,), generator=generator))]
        start = int(torch.randint(self.hparams.min_start_epoch, self.max_start, (1,), generator=generator))
        return self.flat(expert, start), self.flat(expert, start + self.hparams.expert_epochs), start

    # ------------------------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        """Initialise the set (base), its labels and average (a resumed run keeps them); the student on the device."""
        fresh = not bool(self.initialized)
        super().on_fit_start()
        self.student.to(self.device)
        self.augment_generator = torch.Generator(self.device)
        if fresh and self.hparams.label_init == "experts":
            self.label_logits.data.copy_(self.expert_label_logits())
        if self.synthetic_ema is not None and fresh:
            self.synthetic_ema.copy_(self.synthetic.detach())

    @torch.no_grad()
    def expert_label_logits(self) -> Tensor:
        """DATM's soft-label initialisation: the final experts' mean logits on the set, over the correct experts.

        Per sample, the logits of the experts (each at its last snapshot) whose prediction is the sample's
        class are averaged; a sample no expert gets right keeps its initial logits (``label_scale`` × one-hot).

        Returns:
            Logits ``[num_classes * ipc, num_classes]``.
        """
        decoded, _ = self.training_set(detach=True)
        logits = torch.stack([
            torch.cat([functional_call(self.student, self.unflatten(self.flat(expert, -1)), (chunk,))
                       for chunk in decoded.split(256)])
            for expert in self.experts
        ])  # [experts, N × formation, K], each expert at its own last snapshot
        # a stored sample's decoded samples vote as further experts: [experts × formation, N, K]
        logits = logits.unflatten(1, (len(self.synthetic), -1)).transpose(1, 2).flatten(0, 1)
        correct = (logits.argmax(-1) == self.labels).unsqueeze(-1)
        count = correct.sum(0)
        mean = (logits * correct).sum(0) / count.clamp(min=1)
        agree = float((count > 0).float().mean())
        self.print(f"MTT: soft labels from {len(self.experts)} experts' logits; {agree:.0%} of the set classified "
                   "correctly by at least one expert (the rest keep one-hot labels)")
        return torch.where(count > 0, mean, self.label_logits.detach())  # a fresh run's: label_scale × one-hot

    def loss(self) -> Tensor:
        """The matching loss of a sampled segment (:meth:`sample_segment`) after a sampled :meth:`plan`.

        With ``unroll="checkpointed"`` the gradients are computed here (:meth:`checkpointed_backward`)
        and the loss comes back detached.
        """
        generator = torch.Generator().manual_seed(self.step_seed("mtt"))
        theta, target, start = self.sample_segment(generator)
        plan = self.plan(generator)
        self.log_step({"train/start_epoch": float(start)})
        if self.hparams.unroll == "checkpointed":
            return self.checkpointed_backward(theta, target, plan)
        return trajectory_loss(self.unroll(theta, plan), theta, target)

    def after_update(self) -> None:
        """Guard ``syn_lr`` (:meth:`guard_syn_lr`), move the set's average (``ema_decay``) and log ``syn_lr``."""
        self.guard_syn_lr()
        if self.synthetic_ema is not None:
            self.synthetic_ema.lerp_(self.synthetic.detach(), 1 - self.hparams.ema_decay)
        self.log_step({"train/syn_lr": self.syn_lr.detach()}, prog_bar=True)

    @torch.no_grad()
    def guard_syn_lr(self) -> None:
        """Clamp ``syn_lr`` to ``min_syn_lr``; stop if it left the range ``(0, max_syn_lr]`` upwards."""
        value = float(self.syn_lr)
        if not math.isfinite(value) or value > self.hparams.max_syn_lr:
            raise RuntimeError(
                f"MTT: syn_lr exploded to {value} at step {self.global_step} (max_syn_lr="
                f"{self.hparams.max_syn_lr}); lower lr_lr (now {self.hparams.lr_lr}) and rerun"
            )
        if value < self.hparams.min_syn_lr:
            warnings.warn(f"MTT step {self.global_step}: syn_lr {value:.3g} clamped to {self.hparams.min_syn_lr}", stacklevel=2)
            self.syn_lr.fill_(self.hparams.min_syn_lr)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        optimizers = [
            torch.optim.SGD([self.synthetic], lr=hp.lr_img, momentum=hp.momentum),
            torch.optim.SGD([self.syn_lr], lr=hp.lr_lr, momentum=hp.momentum),
        ]
        if self.label_logits is not None:
            optimizers.append(torch.optim.SGD([self.label_logits], lr=hp.lr_label, momentum=hp.momentum))
        return optimizers

    # -------------------------------------------------------------------------------------- export
    def exported_set(self) -> tuple[Tensor, Tensor]:
        """The decoded set (``formation``); with ``ema_decay`` the decoded moving average."""
        if self.synthetic_ema is None:
            return self.training_set(detach=True)
        return self.decoded(self.synthetic_ema.clone(), self.targets().detach())

    def export_extras(self) -> dict[str, Any]:
        hp = self.hparams
        return {
            "syn_lr": float(self.syn_lr.detach()),
            "expert_dir": hp.expert_dir,
            "syn_steps": hp.syn_steps,
            "expert_epochs": hp.expert_epochs,
            "max_start_epoch": hp.max_start_epoch,
            "min_start_epoch": hp.min_start_epoch,
            "start_epochs": [hp.min_start_epoch, self.max_start],  # drawn from [min, max): what the experts allowed
            "ema": hp.ema_decay is not None,
            "label_init": hp.label_init if hp.learn_labels else None,
        }
