"""SynsetEvaluator: run the evaluation protocol on a distiller's synthetic set and write the report."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from ddlight.evaluation import (
    BASELINES,
    budget_ipc,
    build_report,
    evaluate_synset,
    full_recipe,
    markdown_table,
    protocol_recipe,
    resolve_recipe,
    write_report,
)
from ddlight.recipe import TrainRecipe
from ddlight.runs import run_dir


class SynsetEvaluator(Callback):
    """Train fresh networks on the distilled set and on same-size real baselines; test on real data.

    At the end of training (and every ``every_n_steps`` optimisation steps if set) it takes the set
    from ``pl_module.to_synset()`` (a :class:`~ddlight.distillers.Distiller`), the real train/test
    features from ``trainer.datamodule.split_features``, runs
    :func:`~ddlight.evaluation.evaluate_synset` (synthetic + ``baselines``, ``repeats`` networks per
    architecture, last-epoch accuracy), logs ``eval/<arch>_acc`` (and ``eval/<arch>_<baseline>_acc``) to
    the trainer's loggers, and at the end writes ``evaluation.json``/``evaluation.md`` into
    the run's folder (:func:`ddlight.runs.run_dir`) and prints the table and paths (at ``on_fit_end``, after the distiller's
    export). With a :class:`WandbLogger` it also logs a
    results table and an image grid of the synthetic features per class. Runs on rank 0 only.

    Under ``trainer.test`` (``ddlight test --ckpt_path PATH``) it evaluates the tested set the same way at
    the end of the test epoch, logs the accuracies as the test's metrics and writes the report into the
    test run's folder.

    Args:
        architectures: Networks to evaluate (names of :data:`ddlight.networks.NETWORKS`).
        repeats: Fresh networks per architecture and set.
        recipe: How every network is trained (:class:`~ddlight.recipe.TrainRecipe`: epochs, lr, batch
            size, momentum, weight decay, augmentation, seed, batched). Its ``lr: auto`` (the default)
            is the set's learned step size (MTT's ``syn_lr``, as the original evaluates), 0.01 for sets
            without one. Every set of the report (synthetic, baselines, full) is trained with it;
            ``evaluation.json`` records it. Its seed also picks the random subsets.
        baselines: Real-subset baselines (any of ``random``, ``herding``, ``kcenter``).
        every_n_steps: Also evaluate (synthetic set only, no files) every N global steps.
        network_options: Constructor options per architecture, e.g. ``{"convnet": {"width": 64}}``.
        expert_dir: Expert trajectories whose final expert embeds real data for herding / k-center
            (default: a quick ConvNet trained on the real training features).
        full: Also train on the whole real training split: the reference of the gap closure
            ``g = (synthetic - random) / (full - random)`` in the report (costly: once per run).
        full_epochs: Epochs of the full-split networks (default: ``recipe.epochs``); fewer make the
            reference cheaper but lower, which raises ``g`` (the report records it).
        full_repeats: Networks trained on the full split (default: ``repeats``).
        eval_split: Real split every network is tested on: ``test``, or ``val`` to tune settings
            without touching the test split (the report records it).
    """

    def __init__(
        self,
        architectures: list[str] | None = None,
        repeats: int = 5,
        recipe: TrainRecipe = TrainRecipe(),
        baselines: list[str] | None = None,
        every_n_steps: int | None = None,
        network_options: dict[str, dict[str, Any]] | None = None,
        expert_dir: str | None = None,
        full: bool = False,
        full_epochs: int | None = None,
        full_repeats: int | None = None,
        eval_split: Literal["test", "val"] = "test",
    ) -> None:
        baselines = list(BASELINES) if baselines is None else list(baselines)
        unknown = sorted(set(baselines) - set(BASELINES))
        if unknown:
            raise ValueError(f"unknown baselines {unknown}; valid: {', '.join(BASELINES)}")
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or None, got {every_n_steps}")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        full_recipe(recipe, repeats, full_epochs, full_repeats)  # bad counts fail here, not after distilling
        if eval_split not in ("test", "val"):
            raise ValueError(f"eval_split must be 'test' or 'val', got {eval_split!r}")
        if full and "random" not in baselines:
            warnings.warn("full: true without the random baseline trains the full split but gives no g", stacklevel=2)
        self.architectures = list(architectures or ["convnet"])
        self.repeats = repeats
        self.recipe = recipe
        self.baselines = baselines
        self.every_n_steps = every_n_steps
        self.network_options = network_options
        self.expert_dir = expert_dir
        self.full = full
        self.full_epochs = full_epochs
        self.full_repeats = full_repeats
        self.eval_split = eval_split
        self.paths: tuple[Path, Path] | None = None
        self._table = ""
        self._real: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
        self._last_step = -1

    def settings(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """The ``recipe`` entry of the report: how every network was trained, ``lr`` resolved for this set."""
        recipe = protocol_recipe(self.recipe, manifest, self.repeats, self.full_epochs, self.full_repeats)
        return recipe | {"split": self.eval_split}

    def _evaluate(
        self, trainer: L.Trainer, pl_module: L.LightningModule, baselines: list[str], full: bool = False
    ) -> tuple[Any, list, dict[str, float]]:
        """The set of ``pl_module``, the protocol's results on it and their ``eval/*`` metrics."""
        synset = pl_module.to_synset()
        device = pl_module.device
        if self._real is None:  # the real features do not change during a run: compute them once
            dm = trainer.datamodule
            self._real = (*dm.split_features("train", device=device), *dm.split_features(self.eval_split, device=device))
        train_x, train_y, test_x, test_y = self._real
        results = evaluate_synset(
            synset.features.to(device), synset.targets.to(device), train_x, train_y, test_x, test_y,
            budget_ipc(synset.manifest), resolve_recipe(self.recipe, synset.manifest),
            architectures=self.architectures, baselines=baselines, repeats=self.repeats, network_options=self.network_options,
            expert_dir=self.expert_dir, full=full, full_epochs=self.full_epochs, full_repeats=self.full_repeats,
            show_progress=trainer.progress_bar_callback is not None,
        )
        metrics = {}
        for row in results:
            for name in ["synthetic", *baselines]:
                suffix = "acc" if name == "synthetic" else f"{name}_acc"
                metrics[f"eval/{row['architecture']}_{suffix}"] = row[name]["mean"]
        return synset, results, metrics

    @staticmethod
    def _log(trainer: L.Trainer, metrics: dict[str, float]) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._real = None
        self._last_step = -1

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps is None or step == self._last_step or step % self.every_n_steps or step == 0:
            return
        self._last_step = step
        if trainer.is_global_zero:
            self._log(trainer, self._evaluate(trainer, pl_module, baselines=[])[2])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        directory = run_dir(trainer)  # on every rank: the folder is broadcast under DDP
        if not trainer.is_global_zero:
            return
        synset, results, metrics = self._evaluate(trainer, pl_module, self.baselines, full=self.full)
        self._log(trainer, metrics)
        self._report(directory, trainer, pl_module, synset, results)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._real = None

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Evaluate the tested set and log its accuracies as the test's metrics (``trainer.test`` returns them)."""
        directory = run_dir(trainer)  # on every rank: the folder is broadcast under DDP
        if not trainer.is_global_zero:
            return
        with torch.inference_mode(False), torch.enable_grad():  # the test loop runs in inference mode
            synset, results, metrics = self._evaluate(trainer, pl_module, self.baselines, full=self.full)
        pl_module.log_dict(metrics)
        self._report(directory, trainer, pl_module, synset, results)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.on_fit_end(trainer, pl_module)

    def _report(
        self, directory: Path, trainer: L.Trainer, pl_module: L.LightningModule, synset: Any, results: list
    ) -> None:
        """Write ``evaluation.json``/``.md`` into ``directory`` (and W&B's table) and keep the table to print."""
        manifest = synset.manifest
        report = build_report(
            manifest.get("dataset", "unknown"), manifest.get("method", type(pl_module).__name__.lower()),
            budget_ipc(manifest), manifest.get("features"), results, self.settings(manifest), manifest["ipc"],
        )
        self.paths = write_report(directory, report)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                _log_wandb(logger, report, synset.features, synset.labels, manifest.get("classes"))
        self._table = markdown_table(report)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Print the table and the report paths after everything else of ``fit`` (the export included) or ``test``."""
        if trainer.is_global_zero and self.paths is not None:
            print(self._table, end="")
            print(f"evaluation written to {self.paths[0]} and {self.paths[1]}")


def feature_grid_png(
    features: Tensor, labels: Tensor, classes: list[str] | None = None, per_class: int = 4
) -> bytes:
    """PNG of the first channel of up to ``per_class`` synthetic samples per class (rows: classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels.cpu()
    num_classes = int(labels.max()) + 1
    fig, axes = plt.subplots(num_classes, per_class, figsize=(1.6 * per_class, 1.2 * num_classes), squeeze=False)
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()[:per_class]
        for k, ax in enumerate(axes[c]):
            ax.set_axis_off()
            if k < len(idx):
                image = features[idx[k], 0].detach().float().cpu().numpy()
                ax.imshow(image, origin="lower", aspect="auto", cmap="magma")
        axes[c][0].set_title(classes[c] if classes else str(c), fontsize=7, loc="left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def _log_wandb(
    logger: WandbLogger, report: dict[str, Any], features: Tensor, labels: Tensor, classes: list[str] | None
) -> None:
    """A W&B table of the results and an image of the synthetic features per class."""
    import wandb
    from PIL import Image

    columns = [c for c in ("synthetic", *BASELINES) if c in report["results"][0]]
    rows = [
        [r["architecture"], *(r[c]["mean"] for c in columns), *(r[c]["std"] for c in columns)] for r in report["results"]
    ]
    table = wandb.Table(columns=["architecture", *columns, *(f"{c}_std" for c in columns)], data=rows)
    image = Image.open(io.BytesIO(feature_grid_png(features, labels, classes)))
    logger.experiment.log({"eval/results": table, "eval/synthetic_features": wandb.Image(image)})
