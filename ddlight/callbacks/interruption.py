"""Save a run that is stopped by SIGTERM (a scheduler, ``kill``) or SIGINT (Ctrl-C) before it exits."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ddlight.runs import run_dir


class SaveOnInterrupt(Callback):
    """On SIGTERM or SIGINT during ``fit``: write ``last.ckpt`` and let the module save its partial result.

    Lightning turns SIGTERM into a ``SIGTERMException`` raised between steps and SIGINT into a
    ``KeyboardInterrupt``; both reach this callback's :meth:`on_exception` before the process exits. The
    checkpoint goes where the run's :class:`~lightning.pytorch.callbacks.ModelCheckpoint` writes (else
    ``<run dir>/checkpoints``) as ``last.ckpt``, so ``--ckpt_path last`` resumes from it. A module with an
    ``on_interrupt()`` method (every :class:`~ddlight.distillers.Distiller`: export the current set marked
    ``partial``) is then called. The ``ddlight`` command exits with status 143 after SIGTERM and 1 after
    SIGINT, never 0. Under SLURM, Lightning's own requeue on the requeue signal (``SLURMEnvironment(
    auto_requeue=True)``) saves ``hpc_ckpt_*.ckpt`` and resubmits the job instead.
    """

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)) or not trainer.training:
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        print(f"{type(exception).__name__} at step {trainer.global_step}: checkpoint written to {path}")
        on_interrupt = getattr(pl_module, "on_interrupt", None)
        if callable(on_interrupt):
            on_interrupt()

    @staticmethod
    def checkpoint_path(trainer: L.Trainer) -> Path:
        """``last.ckpt`` in the run's checkpoint folder (that of its ModelCheckpoint, if it has one)."""
        callback = trainer.checkpoint_callback
        directory = callback.dirpath if isinstance(callback, ModelCheckpoint) and callback.dirpath else None
        return Path(directory or run_dir(trainer) / "checkpoints") / "last.ckpt"
