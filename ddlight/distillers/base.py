"""Distiller: a LightningModule whose trainable state *is* the synthetic (distilled) dataset.

The base owns everything a distillation method shares, so a method is little more than its loss:

* the set ``[num_classes * ipc, C, F, T]`` (normalised feature space of the DataModule), its labels
  (hard, or learnable soft labels) and its initialisation from real samples or noise;
* the real training split, handed once to :meth:`Distiller.hold_real_data` at fit start when the method
  overrides it (:attr:`Distiller.needs_real_data` is derived from that);
* the step loop (manual optimisation): every training step calls the method's :meth:`Distiller.loss`
  and then :meth:`Distiller.update`, which averages the gradients over DDP ranks in one all-reduce,
  skips a non-finite update (and stops after ``max_bad_steps`` in a row), steps the optimisers and logs;
* per-step random draws (:meth:`Distiller.step_seed`) derived from the seed, the step, the rank and the
  retries, so a resumed run repeats the uninterrupted one exactly;
* a clock that reads no data: the DataModule's training loader sets how many updates make an epoch but
  is never read (``training_step`` takes Lightning's ``dataloader_iter`` and leaves it alone), so no
  waveform batch is collated and no feature computed for it;
* the export of the set as ``distilled/synset.safetensors`` + ``distilled/manifest.json`` in the run
  directory (format: :class:`ddlight.io.Synset`), a real artefact that
  :class:`~ddlight.data.synset.SynsetDataModule` trains on.

``docs/extending.md`` writes a new method from scratch against this contract.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ddlight.allocator import physical_memory
from ddlight.distillers.formation import decode, encode, segment_lengths
from ddlight.evaluation.coresets import herding, random_subset
from ddlight.evaluation.suite import embedding_network
from ddlight.io import Synset, load_synset, save_synset
from ddlight.recipe import embed, soft_cross_entropy
from ddlight.runs import run_dir

__all__ = [
    "Distiller", "Synset", "average_across_ranks", "derive_seed", "load_synset", "save_synset", "soft_cross_entropy",
]

# The step loop takes Lightning's ``dataloader_iter`` only to leave it unread (Distiller.training_step): its
# warnings about consuming the iterator do not apply.
warnings.filterwarnings("ignore", message="Found `dataloader_iter` argument|You are using the `dataloader_iter` step")


def derive_seed(*parts: object) -> int:
    """A 32-bit seed hashed from ``parts`` (e.g. a purpose, the run seed, the step and the rank).

    Distinct parts give unrelated seeds, and 32 bits are all torch's CPU generator uses of a seed, so
    draws differ between purposes, steps and ranks on the CPU as on the GPU. A draw seeded from the
    step repeats exactly when a run resumes from a checkpoint, with no generator state to save.
    """
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=4).digest(), "little")


def average_across_ranks(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Mean of each tensor over all processes of the default group, in one all-reduce.

    In a single process the tensors themselves are returned. Tensors of several dtypes travel in the
    widest of them and come back in their own.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(tensors)
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    flat = torch.cat([t.detach().flatten().to(dtype) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    return [part.view_as(t).to(t.dtype) for t, part in zip(tensors, flat.split([t.numel() for t in tensors]))]


class _SkippedStep(Exception):
    """Raised by :meth:`Distiller.update` when it skips a non-finite update; ends the training step."""


#: Copies of the synthetic set a distiller holds at the least: the set, its gradient, its optimiser state.
_SET_COPIES = 3
#: How a synthetic set can start (``init``): see :class:`Distiller`.
Init = Literal["real", "herding", "noise"]
INITS: tuple[str, ...] = get_args(Init)


def _check_set_size(in_shape: tuple[int, ...], num_classes: int, ipc: int) -> None:
    """Refuse, before anything is allocated, a synthetic set too large for this machine's memory.

    Raises:
        ValueError: Naming ``ipc``, the size it asks for and what to do.
    """
    samples = num_classes * ipc
    needed = samples * math.prod(in_shape) * 4 * _SET_COPIES
    memory = physical_memory()
    if memory is not None and needed > memory:
        raise ValueError(
            f"ipc={ipc} asks for {samples:,} synthetic samples of shape {tuple(in_shape)} ({num_classes} classes): "
            f"{needed / 2**30:,.1f} GiB with the set's gradient and optimiser state, more than this machine's "
            f"{memory / 2**30:,.1f} GiB of memory; distilled sets hold a few samples per class (1 to 50 in the "
            "papers): lower ipc"
        )


class Distiller(L.LightningModule, ABC):
    """Base class of dataset distillers: the synthetic set as parameters, the step loop and the export.

    A method implements :meth:`loss` and ``configure_optimizers`` (the first optimiser's step counts the
    global step); it overrides :meth:`hold_real_data` if it draws on
    the real training split, and may override :meth:`after_update`, :meth:`export_extras` and
    :meth:`exported_set`. Every parameter that requires grad is trained (:meth:`trained_tensors`).

    Args:
        in_shape: Feature shape ``(C, F, T)`` (linked from ``data.feature_shape``).
        num_classes: Number of classes (linked from ``data.num_classes``).
        ipc: Stored synthetic samples per class (each holds ``formation`` training samples).
        init: ``real`` (random real training samples of each class), ``herding`` (each class's herding
            selection in the embedding of :meth:`init_embedding_network`: the real subset whose mean
            matches the class mean, a stronger start than a random one) or ``noise`` (standard normal).
            With ``formation`` > 1 the set starts from ``ipc × formation`` real samples per class, packed
            ``formation`` to a stored sample (:func:`~ddlight.distillers.formation.encode`).
        learn_labels: Learn soft labels (logits initialised to ``label_scale`` × one-hot).
        label_scale: Initial logit of the true class for learnable labels.
        seed: Seed of the per-step draws (:meth:`step_seed`); None uses the run's seed (``seed_everything``).
        max_bad_steps: Consecutive non-finite updates tolerated (each skipped) before training stops.
        max_grad_norm: Clip the set's gradient to this norm before each update (None: no clipping).
        formation: IDC's multi-formation in time (:mod:`ddlight.distillers.formation`): each stored sample
            holds this many segments, each stretched to a full-length training sample, so the method trains
            on, and the export holds, ``ipc × formation`` samples per class at the storage of ``ipc``
            (:meth:`training_set`). 1 (default): off.
    """

    @property
    def needs_real_data(self) -> bool:
        """Whether the method draws on the real training split: it overrides :meth:`hold_real_data`."""
        return type(self).hold_real_data is not Distiller.hold_real_data

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        ipc: int = 10,
        init: Init = "real",
        learn_labels: bool = False,
        label_scale: float = 5.0,
        seed: int | None = None,
        max_bad_steps: int = 10,
        max_grad_norm: float | None = None,
        formation: int = 1,
    ) -> None:
        super().__init__()
        if ipc < 1:
            raise ValueError(f"ipc must be >= 1, got {ipc}")
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        if max_bad_steps < 1:
            raise ValueError(f"max_bad_steps must be >= 1, got {max_bad_steps}")
        _check_set_size(tuple(in_shape), num_classes, ipc)
        segment_lengths(in_shape[-1], formation)  # refuses a factor outside [1, frames]
        self.automatic_optimization = False
        self.in_shape = tuple(in_shape)
        self.num_classes = num_classes
        self.ipc = ipc
        self.init = init
        self.seed = seed
        self.max_bad_steps = max_bad_steps
        self.max_grad_norm = max_grad_norm
        self.formation = formation
        #: Consecutive skipped updates (part of every step's seed: a skipped step retries with new draws).
        self.bad_steps = 0
        self.synthetic = nn.Parameter(torch.randn(num_classes * ipc, *self.in_shape))
        self.register_buffer("labels", torch.arange(num_classes).repeat_interleave(ipc))
        self.label_logits = (
            nn.Parameter(label_scale * F.one_hot(self.labels, num_classes).float()) if learn_labels else None
        )
        self.register_buffer("initialized", torch.tensor(False))

    # ------------------------------------------------------------------------------------- the set
    def targets(self) -> Tensor:
        """Training targets of the synthetic set: soft label distributions or hard labels."""
        if self.label_logits is not None:
            return self.label_logits.softmax(-1)
        return self.labels

    def decoded(self, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Stored samples and their targets as the training samples they hold (``formation``; differentiable).

        The ``formation`` samples decoded from stored sample ``i`` are rows ``i * formation`` onwards, each
        with sample ``i``'s target, so the decoded set stays ordered by class.
        """
        return decode(features, self.formation), targets.repeat_interleave(self.formation, dim=0)

    def training_set(self, detach: bool = False) -> tuple[Tensor, Tensor]:
        """The samples and targets a method trains on: the stored set decoded (:meth:`decoded`).

        Args:
            detach: Cut the graph to the set and its labels (a pass that needs no gradient of the set).
        """
        x, y = self.synthetic, self.targets()
        if detach:
            x, y = x.detach(), y.detach()
        return self.decoded(x, y)

    def trained_tensors(self) -> list[Tensor]:
        """The tensors being distilled: every parameter that requires grad (the set, learned labels, ...)."""
        return [p for p in self.parameters() if p.requires_grad]

    @torch.no_grad()
    def initialize_from(self, features: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> None:
        """Start from ``ipc × formation`` real samples of each class (:meth:`real_start`), ``formation`` packed
        into each stored sample."""
        real = self.real_start(features, labels, self.ipc * self.formation, generator)
        self.synthetic.copy_(encode(real, self.formation).to(self.synthetic.device))

    def real_start(
        self, features: Tensor, labels: Tensor, per_class: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """``per_class`` real samples of each class, class by class: random ones, or herding's (``init``).

        Raises:
            ValueError: If a class has fewer than ``per_class`` real samples.
        """
        counts = torch.bincount(labels.cpu(), minlength=self.num_classes)
        short = {c: int(n) for c, n in enumerate(counts.tolist()) if n < per_class}
        if short:
            wanted = f"ipc={self.ipc}" if per_class == self.ipc else f"the {per_class} a set of ipc={self.ipc} starts from"
            raise ValueError(
                f"classes {short} (class: training samples) have fewer than {wanted}; lower ipc to at most "
                f"{min(short.values()) * self.ipc // per_class}, or initialise from noise (init: noise)"
            )
        if self.init == "herding":
            chosen = herding(embed(self.init_embedding_network(features, labels), features), labels, per_class)
        else:
            chosen = random_subset(labels, per_class, generator)
        return features[chosen.to(features.device)]

    def init_embedding_network(self, features: Tensor, labels: Tensor) -> nn.Module:
        """The network whose ``embed()`` places the real samples for ``init: herding``.

        The base trains a quick width-64 ConvNet on ``features`` (the evaluation's stand-in for an
        expert, so the selection is reproducible); a method with trained networks at hand (MTT's experts)
        returns one of those instead.
        """
        return embedding_network(features, labels, self.num_classes, seed=self.seed or 0)

    def hold_real_data(self, features: Tensor, labels: Tensor) -> None:
        """Keep the normalised real training split on the device (called at fit start if :attr:`needs_real_data`).

        Args:
            features: Training features ``[N, C, F, T]``.
            labels: Their labels ``[N]``.

        The base keeps nothing: a method that needs no real data leaves this alone, and the split is then
        not computed (unless ``init: real`` needs it once).
        """

    def on_fit_start(self) -> None:
        """Resolve the seed, initialise the set once (a resumed run keeps its own) and hand over the real data."""
        if self.seed is None:
            self.seed = torch.initial_seed() % 2**63
        fresh = not bool(self.initialized)
        real = None
        if self.needs_real_data or (fresh and self.init != "noise"):
            real = self.trainer.datamodule.split_features("train", device=self.device)
        if fresh:
            if self.init != "noise":
                self.initialize_from(*real, torch.Generator().manual_seed(torch.initial_seed() % 2**63))
            self.initialized.fill_(True)
            if self.trainer.world_size > 1:  # every rank starts from rank 0's set
                self.synthetic.data.copy_(self.trainer.strategy.broadcast(self.synthetic.data, src=0))
        if self.needs_real_data:
            self.hold_real_data(*real)

    # ------------------------------------------------------------------------------------ the steps
    def step_seed(self, purpose: str, shared: bool = False) -> int:
        """Seed of this step's draws for ``purpose``, from the seed, the step, the rank and the retries.

        Args:
            purpose: Tells the draws of one step apart (e.g. ``"real batch"`` and ``"networks"``).
            shared: The same on every DDP rank (leave the rank out), e.g. for random networks all ranks use.
        """
        rank = () if shared else (self.global_rank,)
        return derive_seed(purpose, self.seed, self.global_step, *rank, self.bad_steps)

    @abstractmethod
    def loss(self) -> Tensor:
        """The method's loss of this training step.

        Either return a loss that requires grad (the base differentiates it w.r.t. :meth:`trained_tensors`),
        or fill the ``.grad`` of those tensors yourself (e.g. a checkpointed unroll) and return the loss
        detached. Draw random numbers from :meth:`step_seed`; log method-specific metrics with :meth:`log_step`.
        A method that updates the set several times per step calls :meth:`update` with ``last=False`` for
        all but the last update, whose loss it returns.
        """

    def after_update(self) -> None:
        """Called after every applied update of the set (e.g. MTT's step-size guard and moving average)."""

    def training_step(self, dataloader_iter: Iterator[Any]) -> None:
        """One update of the set: :meth:`loss`, then :meth:`update`.

        Lightning hands over the training loader's iterator instead of a batch; it is left unread, so
        the DataModule's batches only count the updates of an epoch and are never loaded.
        """
        for tensor in self.trained_tensors():
            tensor.grad = None
        try:
            self.update(self.loss())
        except _SkippedStep:
            return

    def update(self, loss: Tensor, last: bool = True) -> Tensor:
        """Apply one update of the set from ``loss`` and return the loss averaged over ranks.

        Differentiates ``loss`` if it requires grad (else the gradients are already in ``.grad``),
        averages gradients and loss over DDP ranks in one all-reduce (every rank joins, finite or not),
        skips the update if anything is non-finite, clips the set's gradient (``max_grad_norm``), steps
        the optimisers, calls :meth:`after_update` and logs ``train/loss`` and ``train/grad_norm``.

        Args:
            loss: The loss of this update (see :meth:`loss`).
            last: The last update of the training step: it goes through Lightning's first optimiser and
                advances the global step (earlier ones step the wrapped optimisers directly).

        Raises:
            RuntimeError: After ``max_bad_steps`` consecutive non-finite updates.
        """
        tensors = self.trained_tensors()
        if loss.requires_grad:
            for tensor, grad in zip(tensors, torch.autograd.grad(loss, tensors, allow_unused=True)):
                tensor.grad = grad
        tensors = [t for t in tensors if t.grad is not None]
        loss, *grads = average_across_ranks([loss.detach(), *(t.grad for t in tensors)])
        for tensor, grad in zip(tensors, grads):
            tensor.grad = grad
        finite = bool(torch.isfinite(loss)) and all(bool(torch.isfinite(g).all()) for g in grads)
        if not finite:
            self._skip()
        self.bad_steps = 0
        grad_norm = self.synthetic.grad.norm() if self.synthetic.grad is not None else None
        if self.max_grad_norm is not None and grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([self.synthetic], self.max_grad_norm)
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for i, optimizer in enumerate(optimizers):
            if last and i == 0:
                optimizer.step()  # through Lightning: one global step per training step
            else:
                optimizer.optimizer.step()
        for tensor in tensors:
            tensor.grad = None
        self.after_update()
        if last:
            self.log_step({"train/loss": loss.float()}, prog_bar=True)
            if grad_norm is not None:
                self.log_step({"train/grad_norm": grad_norm})
        return loss

    def log_step(self, metrics: dict[str, Tensor | float], prog_bar: bool = False) -> None:
        """Log metrics of this training step (a step reads no batch: Lightning wants ``batch_size`` given)."""
        self.log_dict(metrics, prog_bar=prog_bar, on_step=True, on_epoch=False, batch_size=1)

    def _skip(self) -> None:
        """Count a skipped update and end the training step; stop after ``max_bad_steps`` in a row.

        Raises:
            RuntimeError: After ``max_bad_steps`` consecutive skipped updates.
            _SkippedStep: Otherwise (caught by :meth:`training_step`).
        """
        for tensor in self.trained_tensors():
            tensor.grad = None
        self.bad_steps += 1
        name = type(self).__name__
        warnings.warn(f"{name} step {self.global_step}: non-finite loss or gradient, update skipped", stacklevel=3)
        if self.bad_steps >= self.max_bad_steps:
            raise RuntimeError(
                f"{name}: {self.bad_steps} consecutive non-finite steps (last at step {self.global_step}); lower "
                "its learning rates and rerun, or resume from the last checkpoint with lower ones"
            )
        raise _SkippedStep

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the resolved seed and the skipped-step count: a resumed run repeats the draws exactly."""
        checkpoint["distiller"] = {"seed": self.seed, "bad_steps": self.bad_steps}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore what :meth:`on_save_checkpoint` saved (if the checkpoint has it)."""
        state = checkpoint.get("distiller")
        if state is not None:
            self.seed, self.bad_steps = state["seed"], state["bad_steps"]

    # ----------------------------------------------------------------------------------- evaluation
    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Nothing per batch: ``ddlight test`` evaluates the set with the evaluation protocol
        (:class:`~ddlight.callbacks.SynsetEvaluator`, at the end of the test epoch)."""

    # -------------------------------------------------------------------------------------- export
    def export_extras(self) -> dict[str, Any]:
        """Method-specific entries for the manifest (e.g. MTT's learned step size)."""
        return {}

    def exported_set(self) -> tuple[Tensor, Tensor]:
        """Features and targets to export: the current set, decoded (subclasses may keep a better snapshot)."""
        return self.training_set(detach=True)

    def to_synset(self) -> Synset:
        """The set to export (:meth:`exported_set`) with its labels, normalisation and manifest."""
        dm = self.trainer.datamodule
        features, targets = self.exported_set()
        manifest = {
            "format": "ddlight-synset-1",
            "method": type(self).__name__.lower(),
            "ipc": len(features) // self.num_classes,  # samples per class, as exported
            "formation": self.formation,
            "stored_ipc": self.ipc,  # the storage budget: ipc × formation samples per class are exported
            "num_classes": self.num_classes,
            "soft_labels": targets.dim() == 2,
            "step": int(self.global_step),
            **dm.describe(),
            "feature_shape": list(self.in_shape),
            "hyperparameters": {k: v for k, v in self.hparams.items() if isinstance(v, (int, float, str, bool, list, type(None)))},
            **self.export_extras(),
        }
        return Synset(features, targets, dm.features.mean, dm.features.std, manifest)

    def export(self, directory: str | Path | None = None, partial: bool = False) -> Path:
        """Write the distilled set (default: ``<run dir>/distilled``) and return the folder.

        Args:
            directory: Target folder.
            partial: Mark the set as the state of an interrupted run (``"partial": true`` in the manifest).
        """
        directory = Path(directory or run_dir(self.trainer) / "distilled")
        synset = self.to_synset()
        synset.manifest["partial"] = partial
        return save_synset(directory, synset)

    def on_interrupt(self) -> None:
        """Export the current set marked partial (called by :class:`~ddlight.callbacks.SaveOnInterrupt`)."""
        directory = run_dir(self.trainer) / "distilled"  # on every rank: the folder is broadcast under DDP
        if self.trainer.is_global_zero and bool(self.initialized):
            path = self.export(directory, partial=True)
            print(f"interrupted at step {self.global_step}: partial distilled set written to {path}")

    def on_train_end(self) -> None:
        directory = run_dir(self.trainer) / "distilled"  # on every rank: the folder is broadcast under DDP
        if self.trainer.is_global_zero:
            path = self.export(directory)
            print(f"distilled set written to {path}")
