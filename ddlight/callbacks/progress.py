"""A progress bar that counts optimisation steps: what a distillation run is made of."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf


class StepProgressBar(TQDMProgressBar):
    """One bar for the whole run, ``step / max_steps``, with the logged loss (and ``syn_lr``) as postfix.

    Distillers train for ``trainer.max_steps`` updates, and their DataModule's training loader, never
    read, only sets how many updates make an epoch, so Lightning's per-epoch bar ("Epoch k: i/18") says
    nothing about how far the run is. ``ddlight`` adds this bar for distillers in place of Lightning's
    default (:meth:`ddlight.cli.DDLightCLI.instantiate_trainer`); a resumed run starts it at the restored
    step. Validation and test bars are unchanged.
    """

    def on_train_start(self, trainer: L.Trainer, *_: Any) -> None:
        self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset(total=convert_inf(trainer.max_steps if trainer.max_steps > 0 else None))
        self.train_progress_bar.initial = trainer.global_step
        self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.set_description("Steps")

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        """Keep the one bar across the loader's epochs."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        bar = self.train_progress_bar
        if bar is not None and self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Keep the one bar across the loader's epochs."""
