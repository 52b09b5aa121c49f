"""The ``ddlight`` command: a LightningCLI over every ddlight DataModule and LightningModule.

    ddlight fit --config configs/expert_synthetic.yaml
    ddlight fit --config configs/mtt_us8k.yaml --data.root /data/UrbanSound8K

The DataModule's ``num_classes`` and ``feature_shape`` are linked into the model's ``num_classes`` and
``in_shape``, so no config hard-codes them. After ``fit`` the test split is evaluated
(``--test_after_fit false`` turns that off); a distiller's set is evaluated by its
:class:`~ddlight.callbacks.SynsetEvaluator` at the end of ``fit`` instead, and
``ddlight test --config ... --ckpt_path PATH`` evaluates the set of a checkpoint the same way. When a model or DataModule refuses its arguments (an absurd
``ipc``, a folder that holds no distilled set, ...), its own error is raised, not the argument parser's
dump of every class it tried.
"""

from __future__ import annotations

import signal
import sys
from types import TracebackType
from typing import Any

import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.model_helpers import is_overridden

from ddlight import active_learning, data, tasks  # noqa: F401  (see below)
from ddlight.allocator import keep_freed_memory
from ddlight.callbacks import SaveOnInterrupt, StepProgressBar, SynsetEvaluator
from ddlight.distillers import Distiller
from ddlight.runs import check_logger_folders, run_dir

# Every ddlight LightningModule and DataModule is imported above, so jsonargparse lists them in
# `ddlight fit --help` and resolves their short names: `--model MTT`, `--model.help RFAD`, `--data ESC50`.


class SaveRunConfig(SaveConfigCallback):
    """``config.yaml`` in the run's own folder (:func:`~ddlight.runs.run_dir`, also under W&B), and the
    whole resolved config (data, trainer, model, seed) in every logger's hyperparameters (the W&B run's
    config, the CSV logger's ``hparams.yaml``), with the run folder's path under ``run_dir``."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        directory = run_dir(trainer)  # on every rank: broadcast under DDP
        if trainer.is_global_zero:
            directory.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, str(directory / self.config_filename), skip_none=False, overwrite=True,
                             multifile=self.multifile)
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            for logger in trainer.loggers:
                logger.log_hyperparams({"config": config, "run_dir": str(directory.resolve())})
        self.already_saved = trainer.strategy.broadcast(True)


class DDLightCLI(LightningCLI):
    """LightningCLI in subclass mode with ddlight's argument links and a test pass after ``fit``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.feature_shape", "model.init_args.in_shape", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit", type=bool, default=True, help="Run the test split after fit."
        )

    def instantiate_classes(self) -> None:
        """Instantiate as LightningCLI does, re-raising a class's own refusal instead of the parser's wrapper."""
        try:
            super().instantiate_classes()
        except ValueError as err:
            cause = _own_error(err)
            if cause is err:
                raise
            raise cause.with_traceback(cause.__traceback__) from None

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The configured trainer, with ``last.ckpt`` checkpointing unless the config turns it off.

        Without a ``ModelCheckpoint`` of its own, a run that checkpoints (Lightning's default) saves
        ``last.ckpt`` (and Lightning's latest ``epoch=E-step=S.ckpt``) at the end of every epoch of its
        training loader (for distillers, whose loader is never read, every ``len(train loader)`` updates)
        and on SIGTERM/SIGINT
        (:class:`~ddlight.callbacks.SaveOnInterrupt`), into ``<run dir>/checkpoints``. Resume with
        ``--ckpt_path last`` and the logger's version of that run
        (``--trainer.logger.init_args.version N`` for the CSV and TensorBoard loggers). A distiller's
        progress bar counts updates out of ``max_steps`` (:class:`~ddlight.callbacks.StepProgressBar`).
        """
        trainer_config = self._get(self.config_init, "trainer", default={}) or {}
        configured = trainer_config.get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        added: list[Callback] = []
        if trainer_config.get("enable_checkpointing") is not False and not any(isinstance(c, ModelCheckpoint) for c in configured):
            added.append(ModelCheckpoint(save_last=True))
        if isinstance(self.model, Distiller) and trainer_config.get("enable_progress_bar") is not False:
            added.append(StepProgressBar())  # distillers count updates, not batches of their unread loader
        if added:
            kwargs["callbacks"] = [*configured, *added]
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        """Check that every logger can write its run folder, before any data is loaded or epoch run."""
        check_logger_folders(self.trainer)

    def after_fit(self) -> None:
        """Evaluate on the test split once training is done (the accuracy every run reports).

        Not for a distiller: its SynsetEvaluator has evaluated the set at the end of training already.
        """
        if isinstance(self.model, Distiller) or self.trainer.interrupted:
            return
        if self.config[self.subcommand].get("test_after_fit"):
            self.trainer.test(self.model, datamodule=self.datamodule, verbose=True)

    def before_test(self) -> None:
        """A distiller is tested on the set of a checkpoint, by its SynsetEvaluator: refuse without either."""
        if not isinstance(self.model, Distiller):
            return
        self._require_checkpoint("test")
        if not any(isinstance(callback, SynsetEvaluator) for callback in self.trainer.callbacks):
            sys.exit(f"{type(self.model).__name__}: `ddlight test` evaluates the set with the SynsetEvaluator callback; "
                     "add it: --trainer.callbacks+=callbacks/synset_evaluator.yaml")

    def before_validate(self) -> None:
        """A distiller is validated by its own measure, on the set of a checkpoint: refuse without either."""
        if not isinstance(self.model, Distiller):
            return
        if not is_overridden("validation_step", self.model):
            sys.exit(f"{type(self.model).__name__} has no validation measure of its own; "
                     "`ddlight test --ckpt_path PATH` evaluates its set with the evaluation protocol")
        self._require_checkpoint("validate")

    def before_predict(self) -> None:
        """Distillers do not predict: refuse in one line."""
        if isinstance(self.model, Distiller):
            sys.exit(f"{type(self.model).__name__} does not predict: a distiller's output is its distilled set "
                     "(distilled/synset.safetensors); train a network on it with configs/synset_eval.yaml")

    def _require_checkpoint(self, subcommand: str) -> None:
        """Exit with one line unless ``--ckpt_path`` names the checkpoint whose set is to be evaluated."""
        if self.config[subcommand].get("ckpt_path") is None:
            sys.exit(f"{type(self.model).__name__}: this set was never trained; pass --ckpt_path PATH, a checkpoint "
                     f"of its fit (e.g. runs/<run>/checkpoints/last.ckpt), to {subcommand} the set it holds")


def _raised_in_jsonargparse(traceback: TracebackType | None) -> bool:
    """Whether the innermost frame of ``traceback`` belongs to jsonargparse."""
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    return traceback is not None and "jsonargparse" in traceback.tb_frame.f_code.co_filename


def _own_error(error: BaseException) -> BaseException:
    """The error a class raised under jsonargparse's wrapping errors (``error`` itself if none)."""
    while error.__cause__ is not None and _raised_in_jsonargparse(error.__traceback__):
        error = error.__cause__
    return error


def main(args: ArgsType = None) -> None:
    """Entry point of the ``ddlight`` command (``args`` lets tests call it in-process).

    Every ``fit`` gets :class:`~ddlight.callbacks.SaveOnInterrupt`; a run stopped by SIGTERM exits with
    status 143 (128 + SIGTERM) after saving, where Lightning alone would exit 0 with nothing saved. CPU
    memory freed during the run is kept for reuse (:func:`~ddlight.allocator.keep_freed_memory`).
    """
    keep_freed_memory()
    try:
        DDLightCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveRunConfig,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"callbacks": [SaveOnInterrupt()]},
            auto_configure_optimizers=False,
            args=args,
        )
    except SIGTERMException:
        sys.exit(128 + signal.SIGTERM)
