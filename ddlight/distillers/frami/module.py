"""FRAMI: data-free distillation by feature-rich audio model inversion (Kang et al., ICASSP 2023).

No real training sample reaches a loss. From a trained teacher alone:

1. **Inversion.** Synthetic features (Mel-spectrograms or whatever front end the data config names) of
   every class are optimised — directly, or through a conditional generator — so that the teacher

   * classifies them as their target class (cross-entropy),
   * sees batch statistics equal to the running statistics of each of its batch-norm layers
     (DeepInversion, Yin et al., CVPR 2020: ``||mu_l(x) - mu_l|| + ||var_l(x) - var_l||`` per layer),
   * maps two augmented views of one sample close together and different samples apart in its
     embedding space (the feature-invariant contrastive loss: NT-Xent over the embeddings of
     ``2B`` views; it makes the samples robust to the augmentations and diverse).

2. **Knowledge distillation.** A student (by default a narrower statistics-pooling TDNN) learns from
   the teacher's softened outputs on augmented synthetic inputs and, with hidden-state reuse, from the
   teacher's hidden states before and after its statistics-pooling layer
   (:func:`ddlight.distillers.frami.kd.distil_student`).

3. **Evaluation.** :class:`~ddlight.callbacks.StudentEvaluator` (in the shipped configs) has students
   (seeds 0, 1, ...) trained by :meth:`FRAMI.train_student` and tests them on the real test split (last
   step, mean ± std) next to the teacher; ``students.json`` / ``students.md`` go to the run folder.

The synthetic set is exported like every distilled set (``distilled/synset.safetensors``), so
:mod:`ddlight.reconstruct` turns it into audio and :class:`~ddlight.callbacks.SynsetEvaluator` can train
fresh networks on it. The step loop is the :class:`~ddlight.distillers.base.Distiller`'s, whose clock
reads no data. The training split is still read once, by the DataModule, to fit the feature
normalisation; FRAMI checks that this equals the normalisation stored with the teacher.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddlight.augment import SpecAugment
from ddlight.distillers.base import Distiller, Synset
from ddlight.distillers.frami.kd import check_hidden_states, distil_student, has_hidden_states
from ddlight.distillers.frami.losses import batchnorm_statistics_loss, contrastive_loss, no_terms
from ddlight.networks import AudioNetwork, build_network
from ddlight.networks.export import load_network
from ddlight.networks.generator import FeatureGenerator
from ddlight.recipe import Progress


class FRAMI(Distiller):
    """Feature-rich audio model inversion and knowledge distillation from a teacher alone.

    Args:
        in_shape: Feature shape ``(C, F, T)`` (linked from ``data.feature_shape``).
        num_classes: Number of classes (linked from ``data.num_classes``).
        teacher: ``.safetensors`` file of a trained network written by
            :class:`~ddlight.callbacks.NetworkExport` (its folder also works: ``network_000`` is used).
        ipc: Synthetic samples per class (the exported set).
        synthesis: ``direct`` (optimise the samples themselves, DeepInversion) or ``generator`` (train
            a conditional generator; students then learn from fresh samples at every step).
        batch_size: Samples optimised per inversion step (two augmented views each).
        lr: Adam learning rate of the samples (``direct``) or of the generator.
        bn_weight: Weight of the batch-norm statistics term.
        contrastive: Use the feature-invariant contrastive term (the ablation switch).
        contrastive_weight: Its weight.
        contrastive_temperature: NT-Xent temperature (0.5 was chosen on the validation fold of the
            UrbanSound8K-layout data, against 0.1 at weights 1 and 0.2; see BENCHMARKS.md).
        contrastive_negatives: ``all`` other views, or only views of the ``same_class`` (diversity within
            each class).
        contrastive_features: Teacher representation NT-Xent compares: its segment-level ``embedding``, or
            the ``pooled`` statistics (mean and std of the frame-level states; needs a statistics-pooling
            teacher).
        projection_dim: Output size of a projection head (linear -> ReLU -> linear, trained with the
            same loss, as in contrastive model inversion) between the teacher's embedding and NT-Xent;
            ``None`` applies NT-Xent to the embedding itself.
        projection_lr: Adam learning rate of the projection head.
        views: Augmentation that makes the views (default: ``SpecAugment(p=0.8, gain=0.1, noise=0.05)``).
        latent_dim: Latent size of the generator.
        generator_width: Channels of the generator's last hidden block.
        student: Student network name (:data:`ddlight.networks.NETWORKS`).
        student_options: Its constructor options.
        student_steps: Knowledge-distillation steps of each student.
        student_batch_size: Inputs per distillation step.
        student_lr: Adam learning rate of the student (cosine schedule).
        kd_temperature: Softening temperature of the distillation loss.
        reuse_hidden: Also match the teacher's hidden states before and after statistics pooling (the
            ablation switch; needs statistics-pooling networks on both sides).
        hidden_weight: Weight of the hidden-state term.
        seed: Seed of the fixed generator latents of the exported set and of the per-step draws (batches,
            latents, views).
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        teacher: str,
        ipc: int = 20,
        synthesis: Literal["direct", "generator"] = "direct",
        batch_size: int = 128,
        lr: float = 0.05,
        bn_weight: float = 1.0,
        contrastive: bool = True,
        contrastive_weight: float = 1.0,
        contrastive_temperature: float = 0.5,
        contrastive_negatives: Literal["all", "same_class"] = "all",
        contrastive_features: Literal["embedding", "pooled"] = "embedding",
        projection_dim: int | None = None,
        projection_lr: float = 1e-3,
        views: SpecAugment | None = None,
        latent_dim: int = 64,
        generator_width: int = 64,
        student: str = "statpool",
        student_options: dict[str, Any] | None = None,
        student_steps: int = 1000,
        student_batch_size: int = 64,
        student_lr: float = 1e-3,
        kd_temperature: float = 4.0,
        reuse_hidden: bool = True,
        hidden_weight: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(in_shape, num_classes, ipc, init="noise", seed=seed)
        if synthesis not in ("direct", "generator"):
            raise ValueError(f"synthesis must be 'direct' or 'generator', got {synthesis!r}")
        if min(batch_size, student_steps, student_batch_size) < 1:
            raise ValueError("batch_size, student_steps and student_batch_size must be >= 1")
        if min(bn_weight, contrastive_weight, hidden_weight) < 0 or min(lr, student_lr, kd_temperature) <= 0:
            raise ValueError("weights must be >= 0; lr, student_lr and kd_temperature > 0")
        self.save_hyperparameters(ignore=["views"])
        self.teacher, self.teacher_header, teacher_extras = load_network(_teacher_file(teacher))
        self.teacher.requires_grad_(False)
        self._check_teacher_shape()
        self.register_buffer("teacher_mean", teacher_extras.get("feature_mean"), persistent=False)
        self.register_buffer("teacher_std", teacher_extras.get("feature_std"), persistent=False)
        if reuse_hidden:  # fail at construction, not after the inversion
            student_network = build_network(student, self.in_shape, num_classes, **(student_options or {}))
            check_hidden_states(self.teacher, student_network)
        self.views = views if views is not None else SpecAugment(p=0.8, gain=0.1, noise=0.05)
        if contrastive and contrastive_features == "pooled" and not has_hidden_states(self.teacher):
            raise ValueError(
                f"contrastive_features 'pooled' needs a statistics-pooling teacher (network 'statpool'), got "
                f"{self.teacher_header['network']!r}; use contrastive_features 'embedding'"
            )
        self.projection: nn.Module | None = None
        if projection_dim is not None:
            width = 2 * self.teacher.frame_dim if contrastive_features == "pooled" else self.teacher.embed_dim
            self.projection = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, projection_dim))
        self.generator: FeatureGenerator | None = None
        if synthesis == "generator":
            self.generator = FeatureGenerator(self.in_shape, num_classes, latent_dim, generator_width)

    def train(self, mode: bool = True) -> FRAMI:
        """Switch modes, keeping the teacher in eval mode (its batch-norm statistics are the targets)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def _check_teacher_shape(self) -> None:
        header = self.teacher_header
        if tuple(header["in_shape"]) != self.in_shape or header["num_classes"] != self.num_classes:
            raise ValueError(
                f"the teacher takes features {tuple(header['in_shape'])} with {header['num_classes']} classes, "
                f"but the data gives {self.in_shape} with {self.num_classes}: train the teacher with the same "
                "data and feature configuration"
            )

    # ---------------------------------------------------------------------------------- inversion
    def inversion_batch(self, draws: torch.Generator) -> tuple[Tensor, Tensor]:
        """A batch to invert: rows of the set (``direct``) or fresh generator samples, and their classes.

        Args:
            draws: CPU generator of the rows or latents.
        """
        n = self.hparams.batch_size
        if self.generator is None:
            index = torch.randperm(len(self.synthetic), generator=draws)[:n].to(self.device)
            return self.synthetic[index], self.labels[index]
        labels = torch.arange(n, device=self.device) % self.num_classes
        z = torch.randn(n, self.hparams.latent_dim, generator=draws).to(self.device)
        return self.generator(z, labels), labels

    def inversion_losses(self, x: Tensor, labels: Tensor, draws: torch.Generator) -> dict[str, Tensor]:
        """Class, batch-norm and contrastive terms of the teacher on two augmented views of ``x``.

        Args:
            x: Samples to invert.
            labels: Their classes.
            draws: Generator of the views' augmentation, on ``x``'s device.
        """
        hp = self.hparams
        views = self.views.train()(torch.cat([x, x]), draws)
        with batchnorm_statistics_loss(self.teacher) if hp.bn_weight > 0 else no_terms() as bn_terms:
            features, logits = self.teacher_features(views)
        losses = {"ce": F.cross_entropy(logits, torch.cat([labels, labels]))}
        losses["bn"] = torch.stack(bn_terms).sum() if bn_terms else logits.new_zeros(())
        if hp.contrastive:
            a, b = (self.projection(features) if self.projection is not None else features).chunk(2)
            same_class = labels if hp.contrastive_negatives == "same_class" else None
            losses["contrastive"] = contrastive_loss(a, b, hp.contrastive_temperature, same_class)
        else:
            losses["contrastive"] = logits.new_zeros(())
        losses["total"] = losses["ce"] + hp.bn_weight * losses["bn"] + hp.contrastive_weight * losses["contrastive"]
        losses["teacher_acc"] = (logits.argmax(-1) == torch.cat([labels, labels])).float().mean().detach()
        return losses

    def teacher_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The teacher's representation the contrastive term compares (``contrastive_features``), and its logits."""
        if self.hparams.contrastive_features == "pooled":
            states = self.teacher.hidden_states(x)
            return states.pooled, states.logits
        embeddings = self.teacher.embed(x)
        return embeddings, self.teacher.classifier(embeddings)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = self.generator.parameters() if self.generator is not None else [self.synthetic]
        groups: list[dict[str, Any]] = [{"params": list(params), "lr": self.hparams.lr}]
        if self.projection is not None:
            groups.append({"params": list(self.projection.parameters()), "lr": self.hparams.projection_lr})
        return torch.optim.Adam(groups)

    def on_fit_start(self) -> None:
        """Check that the data is normalised as the teacher's was, then start from noise."""
        dm = self.trainer.datamodule
        if self.teacher_mean is not None and not (
            torch.allclose(dm.features.mean.to(self.device), self.teacher_mean, rtol=1e-3, atol=1e-4)
            and torch.allclose(dm.features.std.to(self.device), self.teacher_std, rtol=1e-3, atol=1e-4)
        ):
            raise ValueError(
                "the DataModule normalises features differently from the data the teacher was trained on "
                f"(teacher data: {self.teacher_header['info'].get('data', {}).get('dataset')!r}); use the same "
                "dataset, splits and feature configuration as the teacher"
            )
        super().on_fit_start()

    def loss(self) -> Tensor:
        """The inversion loss of this step's batch (:meth:`inversion_batch`, :meth:`inversion_losses`)."""
        seed = self.step_seed("frami")
        x, labels = self.inversion_batch(torch.Generator().manual_seed(seed))
        losses = self.inversion_losses(x, labels, torch.Generator(self.device).manual_seed(seed))
        self.log_step({f"train/{k}": v.detach() for k, v in losses.items() if k != "total"}, prog_bar=True)
        return losses["total"]

    # ------------------------------------------------------------------------------- synthetic set
    @torch.no_grad()
    def generate(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Generator samples for ``labels`` (no gradient); latents drawn on the CPU from ``generator``."""
        assert self.generator is not None
        z = torch.randn(len(labels), self.hparams.latent_dim, generator=generator).to(self.device)
        return self.generator(z, labels)

    def to_synset(self) -> Synset:
        """The exported set; in ``generator`` mode ``ipc`` samples per class from fixed latents."""
        if self.generator is not None:
            fixed = torch.Generator().manual_seed(self.hparams.seed)
            self.synthetic.data.copy_(self.generate(self.labels, fixed))
        return super().to_synset()

    def student_inputs(self) -> Callable[[int], Tensor]:
        """Where students draw inputs: random rows of the set, or fresh balanced generator samples."""
        if self.generator is None:
            bank = self.synthetic.detach()
            return lambda n: bank[torch.randint(len(bank), (n,), device=bank.device)]
        return lambda n: self.generate(torch.randint(self.num_classes, (n,), device=self.device))

    # ----------------------------------------------------------------------------------- students
    def train_student(self, seed: int, progress: Progress | None = None) -> AudioNetwork:
        """One student distilled from the teacher on synthetic inputs (seeded, global RNG restored).

        ``progress`` is told every step (:func:`~ddlight.distillers.frami.kd.distil_student`).
        """
        hp = self.hparams
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            student = build_network(hp.student, self.in_shape, self.num_classes, **(hp.student_options or {}))
            return distil_student(
                self.teacher, student.to(self.device), self.student_inputs(), hp.student_steps, hp.student_batch_size,
                hp.student_lr, hp.kd_temperature, hp.hidden_weight if hp.reuse_hidden else 0.0, SpecAugment(),
                progress,
            )

    def student_report(self) -> dict[str, Any]:
        """How this run is described in :class:`~ddlight.callbacks.StudentEvaluator`'s ``students.json``."""
        hp = self.hparams
        return {
            "method": "frami",
            "ipc": self.ipc,
            "settings": {"synthesis": hp.synthesis, "contrastive": hp.contrastive, "reuse_hidden": hp.reuse_hidden},
            "teacher": {"network": self.teacher_header["network"]},
            "student": {"network": hp.student, "options": dict(hp.student_options or {}), "steps": hp.student_steps},
        }


def _teacher_file(path: str) -> Path:
    """The teacher's ``.safetensors`` file: ``path`` itself, or ``network_000.safetensors`` in a folder."""
    candidate = Path(path)
    if candidate.is_dir():
        candidate = candidate / "network_000.safetensors"
    if not candidate.is_file():
        raise FileNotFoundError(
            f"teacher {path} not found; train one with `ddlight fit --config configs/expert_<dataset>.yaml "
            "--config configs/model/teacher.yaml` (it writes teachers/<dataset>/network_000.safetensors)"
        )
    return candidate
