"""AudioReconstruction: turn the distilled set back into audio at the end of (and during) distillation."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

from ddlight.reconstruct import AUDIO, GRID, format_summary, reconstruct, synset_front_end
from ddlight.runs import run_dir

#: Most rebuilt clips per class sent to Weights & Biases (all are written to disk).
WANDB_AUDIO_PER_CLASS = 4


class AudioReconstruction(Callback):
    """Write the distilled set as WAV files, a feature grid and quality measures.

    Takes ``pl_module.to_synset()`` (any :class:`~ddlight.distillers.base.Distiller`) and runs
    :func:`ddlight.reconstruct.reconstruct` on it: ``<run dir>/distilled/audio/<class>/<class>_<i>.wav``,
    ``distilled/spectrograms.png`` and ``distilled/reconstruction.json`` (spectral convergence, feature
    relative error and, with experts, their accuracy on distilled vs re-extracted features; see
    :mod:`ddlight.reconstruct`). Runs on rank 0 at the end of training and, if asked, every
    ``every_n_steps`` training batches into ``distilled/step_<k>/``. The means are logged as
    ``reconstruction/*`` metrics to every logger; with a :class:`~lightning.pytorch.loggers.WandbLogger`
    the clips (capped per class) and the grid are logged as media too. A set that cannot be rebuilt
    (a front end whose STFT windows do not overlap) is refused when fitting starts.

    Args:
        n_iter: Griffin-Lim iterations.
        every_n_steps: Also reconstruct every this many training batches (``None``: only at the end).
        max_per_class: Rebuild only the first this many samples of each class (``None``: all).
        expert_dir: Expert trajectories for the accuracy check (``None``: the module's own
            ``expert_dir`` attribute or hyperparameter if it has one, e.g. MTT's; else no check).
        log_media: Log audio and the grid to Weights & Biases when its logger is attached.
    """

    def __init__(
        self,
        n_iter: int = 32,
        every_n_steps: int | None = None,
        max_per_class: int | None = None,
        expert_dir: str | None = None,
        log_media: bool = True,
    ) -> None:
        if n_iter < 1:
            raise ValueError(f"n_iter must be >= 1, got {n_iter}")
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or None, got {every_n_steps}")
        if max_per_class is not None and max_per_class < 1:
            raise ValueError(f"max_per_class must be >= 1 or None, got {max_per_class}")
        self.n_iter = n_iter
        self.every_n_steps = every_n_steps
        self.max_per_class = max_per_class
        self.expert_dir = expert_dir
        self.log_media = log_media

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule, out_dir: Path) -> dict[str, Any]:
        expert_dir = (
            self.expert_dir or getattr(pl_module, "expert_dir", None) or pl_module.hparams.get("expert_dir")
        )
        report = reconstruct(pl_module.to_synset(), out_dir, self.n_iter, self.max_per_class, expert_dir)
        print(format_summary(report, out_dir))
        self._log(trainer, report, out_dir)
        return report

    def _log(self, trainer: L.Trainer, report: dict[str, Any], out_dir: Path) -> None:
        metrics = {
            f"reconstruction/{key}": report[key]["mean"]
            for key in ("spectral_convergence", "feature_relative_error")
            if report[key]["mean"] is not None
        }
        expert = report["expert_accuracy"]
        if expert and "skipped" not in expert:
            metrics["reconstruction/expert_acc_distilled"] = expert["distilled_features"]
            metrics["reconstruction/expert_acc_audio"] = expert["reconstructed_audio"]
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if not self.log_media:
            return
        per_class: dict[str, int] = defaultdict(int)
        files = []
        for sample in report["samples"]:
            per_class[sample["class"]] += 1
            if per_class[sample["class"]] <= WANDB_AUDIO_PER_CLASS:
                files.append(sample["file"])
        step, captions = trainer.global_step, [Path(file).stem for file in files]
        for logger in (lg for lg in trainer.loggers if isinstance(lg, WandbLogger)):
            logger.log_audio("reconstruction/audio", [str(out_dir / f) for f in files], step=step, caption=captions)
            logger.log_image("reconstruction/spectrograms", [str(out_dir / GRID)], step=step)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Fail before distilling, not after, if the set cannot be turned into audio."""
        synset_front_end(pl_module.to_synset())

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        done = trainer.fit_loop.total_batch_idx + 1
        if self.every_n_steps and done % self.every_n_steps == 0:
            out_dir = run_dir(trainer) / "distilled" / f"step_{done}"  # on every rank (broadcast under DDP)
            if trainer.is_global_zero:
                self._run(trainer, pl_module, out_dir)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out_dir = run_dir(trainer) / "distilled"  # on every rank: the folder is broadcast under DDP
        if trainer.is_global_zero:
            self._run(trainer, pl_module, out_dir)
            print(f"distilled audio written to {out_dir / AUDIO}")
