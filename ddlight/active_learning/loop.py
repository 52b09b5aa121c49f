"""Pool-based active learning as a LightningModule: ``ddlight fit --config configs/al_<dataset>.yaml``.

The training split of any :class:`~ddlight.data.base.AudioDataModule` is the unlabelled *pool*; its
test split measures accuracy. For every network × strategy × repeat ("run"), the
:class:`ActiveLearner` draws a stratified, seeded initial labelled set and then, one Lightning epoch
per budget, (1) tops the labelled set up to the budget with the acquisition function (scoring the
unlabelled pool with the network trained on the current labelled set), (2) trains a fresh network on
the labelled features with a plain inner loop and (3) records its test accuracy. Everything lives in
the module, so checkpointing, logging and DDP work as in every other stage:

* the labelled indices, results and round counter are the module's *extra state*
  (:meth:`~torch.nn.Module.get_extra_state`), so they travel in ``state_dict()`` and checkpoints and a
  resumed fit continues with the next budget;
* under DDP every rank runs the same (seeded) training, and the pool scoring is split across the
  ranks with :func:`~ddlight.active_learning.acquisition.score_pool_sharded`, so each rank scores
  ``1 / world_size`` of the pool and all ranks acquire the same items.

A Lightning epoch is one acquisition round: the round runs in the epoch's first training step and
the epoch's remaining batches are skipped. Features of the pool and the test split are computed once
per fit on the module's device (``AudioDataModule.split_features``).

BALD needs MC dropout. A network without a dropout module (e.g. ``resnet18``) gets one in front of its
classifier (:func:`~ddlight.active_learning.acquisition.insert_mc_dropout`, probability
``mc_dropout``) with a warning, for the BALD runs only; it is then also active while training. The
other uncertainty strategies average ``mc_passes`` MC dropout passes when the network has dropout and
use one deterministic pass otherwise.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn

from ddlight.active_learning.acquisition import (
    ACQUISITIONS,
    DROPOUT_TYPES,
    acquisition_scores,
    insert_mc_dropout,
    kcenter_greedy,
    mc_dropout_probs,
    random_scores,
    score_pool_sharded,
    select_top_k,
)
from ddlight.active_learning.report import build_results, write_results
from ddlight.networks import build_network


def resolve_budgets(
    budgets: Sequence[float], pool_size: int, unit: Literal["percent", "count"], initial_size: int
) -> list[int]:
    """Turn budgets (percentages of the pool or absolute counts) into labelled-set sizes.

    Args:
        budgets: Strictly increasing budgets, in ``unit``.
        pool_size: Number of items in the pool (the training split).
        unit: ``"percent"`` (of the pool, rounded to the nearest item) or ``"count"``.
        initial_size: Size of the initial labelled set; no budget may be smaller.

    Returns:
        Labelled-set sizes, one per budget.

    Raises:
        ValueError: If the pool is empty, there is no budget, the budgets are not strictly
            increasing, or one is smaller than the initial set or larger than the pool.
    """
    if pool_size < 1:
        raise ValueError("the pool (training split) is empty; active learning needs unlabelled data")
    if not budgets:
        raise ValueError("budgets is empty; give at least one pool percentage or count")
    sizes = [round(b * pool_size / 100) if unit == "percent" else int(b) for b in budgets]
    shown = [f"{b}{'%' if unit == 'percent' else ''}" for b in budgets]
    for budget, size in zip(shown, sizes):
        if size > pool_size:
            raise ValueError(f"budget {budget} = {size} samples is larger than the pool of {pool_size}")
        if size < initial_size:
            raise ValueError(
                f"budget {budget} = {size} samples is smaller than the initial labelled set of "
                f"{initial_size} (initial_per_class x classes); raise the budget or lower initial_per_class"
            )
    if any(b >= a for b, a in zip(sizes, sizes[1:])):
        raise ValueError(f"budgets must give strictly increasing labelled-set sizes, got {sizes} from {shown}")
    return sizes


def initial_indices(labels: Tensor, num_classes: int, per_class: int, generator: torch.Generator) -> list[int]:
    """A stratified random initial labelled set: ``per_class`` pool items of every class.

    Args:
        labels: Pool labels ``[N]``.
        num_classes: Number of classes; every one must be represented.
        per_class: Items per class, ``>= 1``.
        generator: Random number generator (seeded: the same seed gives the same set).

    Returns:
        Pool indices, class by class.

    Raises:
        ValueError: If ``per_class < 1`` or a class has fewer than ``per_class`` pool items.
    """
    if per_class < 1:
        raise ValueError(f"initial_per_class must be >= 1 so every class is labelled, got {per_class}")
    labels = labels.cpu()
    counts = torch.bincount(labels, minlength=num_classes)
    short = [f"class {k} has {int(counts[k])}" for k in range(num_classes) if counts[k] < per_class]
    if short:
        raise ValueError(
            f"the initial labelled set misses classes: it needs {per_class} pool item(s) of each of the "
            f"{num_classes} classes, but {', '.join(short)}"
        )
    picks = []
    for k in range(num_classes):
        members = (labels == k).nonzero().squeeze(1)
        picks += members[torch.randperm(len(members), generator=generator)[:per_class]].tolist()
    return picks


def has_dropout(network: nn.Module) -> bool:
    """Whether ``network`` has a dropout module (what MC dropout samples)."""
    return any(isinstance(m, DROPOUT_TYPES) for m in network.modules())


def train_network(
    network: nn.Module,
    x: Tensor,
    y: Tensor,
    epochs: int,
    lr: float,
    batch_size: int,
    momentum: float,
    weight_decay: float,
) -> nn.Module:
    """Train ``network`` on ``(x, y)`` with SGD, lr x0.1 after ``epochs // 2`` epochs (the evaluation recipe).

    Uses the global RNG for the batch order; seed it (inside :func:`torch.random.fork_rng`) for
    reproducibility.

    Returns:
        The same ``network``, in eval mode.
    """
    optimizer = torch.optim.SGD(network.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [max(1, epochs // 2)], gamma=0.1)
    network.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), device=x.device).split(batch_size):
            if len(batch) < 2 and len(x) > 1:  # a single item breaks batch norm; it is seen next epoch
                continue
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(network(x[batch]), y[batch]).backward()
            optimizer.step()
        schedule.step()
    return network.eval()


@torch.no_grad()
def test_accuracy(network: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Accuracy in percent of ``network`` (eval mode) on ``(x, y)``."""
    network.eval()
    correct = sum(int((network(xb).argmax(-1) == yb).sum()) for xb, yb in zip(x.split(batch_size), y.split(batch_size)))
    return 100.0 * correct / len(x)


#: Strategies of the loop: the score-based acquisition functions plus the embedding-based core set.
STRATEGIES = (*ACQUISITIONS, "kcenter")


class ActiveLearner(L.LightningModule):
    """Pool-based active learning: one Lightning epoch per budget, every network x strategy x repeat.

    Args:
        in_shape: Feature shape ``(C, F, T)`` (linked from ``data.feature_shape``).
        num_classes: Number of classes (linked from ``data.num_classes``).
        networks: Network names (:data:`ddlight.networks.NETWORKS`), e.g. ``["resnet18", "cnn4"]``.
        network_options: Constructor options per network name (missing names: defaults).
        strategies: Acquisition functions (keys of
            :data:`~ddlight.active_learning.acquisition.ACQUISITIONS`, or ``kcenter``: the core-set
            baseline, greedy k-center in the trained network's embedding space).
        budgets: Labelled-set sizes to report, strictly increasing, in ``budget_unit``.
        budget_unit: ``"percent"`` of the pool or absolute ``"count"``.
        initial_per_class: Labelled items per class before the first acquisition (stratified, seeded).
        repeats: Runs per network and strategy; repeat ``r`` uses seed ``seed + r``.
        seed: Seed of the first repeat (initial sets, initialisations, batch order, MC masks).
        mc_passes: MC dropout passes per pool item for networks with dropout (BALD needs ``>= 2``).
        mc_dropout: Dropout probability inserted for BALD into networks without dropout.
        epochs: Training epochs of each fresh network (every round retrains from scratch).
        lr: Initial SGD learning rate (x0.1 at half the epochs).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        batch_size: Minibatch size of the inner training loop.
        score_batch_size: Pool items per scoring forward (times ``mc_passes`` rows).
        output_dir: Where ``al_results.json``/``.md``/``.png`` go (``None``: the trainer's log dir).
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        networks: list[str] | None = None,
        network_options: dict[str, dict[str, Any]] | None = None,
        strategies: list[str] | None = None,
        budgets: list[float] | None = None,
        budget_unit: Literal["percent", "count"] = "percent",
        initial_per_class: int = 1,
        repeats: int = 3,
        seed: int = 0,
        mc_passes: int = 20,
        mc_dropout: float = 0.25,
        epochs: int = 50,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        batch_size: int = 64,
        score_batch_size: int = 256,
        output_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.networks = list(networks or ["cnn4"])
        self.strategies = list(strategies or ["max_entropy", "variation_ratios", "bald", "random"])
        self.budgets = list(budgets or [20, 30, 40, 60])
        unknown = sorted(set(self.strategies) - set(STRATEGIES))
        if unknown:
            raise ValueError(f"unknown strategies {unknown}; choose from {sorted(STRATEGIES)}")
        if repeats < 1 or epochs < 1:
            raise ValueError(f"repeats and epochs must be >= 1, got {repeats} and {epochs}")
        if "bald" in self.strategies and mc_passes < 2:
            raise ValueError(f"BALD needs mc_passes >= 2, got {mc_passes}")
        for name in self.networks:  # fail at construction, not after the first round
            build_network(name, in_shape, num_classes, **self._options(name))
        #: Labelled pool indices per run key ``network/strategy/repeat``, in acquisition order.
        self.labelled: dict[str, list[int]] = {}
        #: One record per run and budget: network, strategy, repeat, labelled, accuracy.
        self.records: list[dict[str, Any]] = []
        self.rounds_done = 0
        # Lightning counts optimiser steps as global steps (they drive checkpointing) and DDP needs a
        # trainable parameter: one zero-lr step per round on this placeholder provides both.
        self.round_clock = nn.Parameter(torch.zeros(()))
        self.pool_size = 0
        self.sizes: list[int] = []

    # ------------------------------------------------------------------------------------ state
    def get_extra_state(self) -> dict[str, Any]:
        """Labelled indices, results and progress: part of ``state_dict()`` and every checkpoint."""
        return {
            "labelled": {k: list(v) for k, v in self.labelled.items()},
            "records": [dict(r) for r in self.records],
            "rounds_done": self.rounds_done,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_extra_state` saved."""
        self.labelled = {k: list(v) for k, v in state["labelled"].items()}
        self.records = [dict(r) for r in state["records"]]
        self.rounds_done = int(state["rounds_done"])

    # ------------------------------------------------------------------------------------ set-up
    def _options(self, network: str) -> dict[str, Any]:
        return dict((self.hparams.network_options or {}).get(network, {}))

    def runs(self) -> list[tuple[str, str, int]]:
        """Every ``(network, strategy, repeat)`` of the study, in execution order."""
        return [(n, s, r) for n in self.networks for s in self.strategies for r in range(self.hparams.repeats)]

    def on_fit_start(self) -> None:
        """Compute pool and test features, check the budgets and draw the initial labelled sets."""
        datamodule = self.trainer.datamodule
        self.pool_x, self.pool_y = datamodule.split_features("train", self.device)
        self.test_x, self.test_y = datamodule.split_features("test", self.device)
        hp = self.hparams
        self.pool_size = len(self.pool_y)
        if self.pool_size == 0:
            raise ValueError("the pool (training split) is empty; active learning needs unlabelled data")
        self.sizes = resolve_budgets(self.budgets, self.pool_size, hp.budget_unit, hp.initial_per_class * hp.num_classes)
        for network, strategy, repeat in self.runs():
            key = f"{network}/{strategy}/{repeat}"
            if key not in self.labelled:  # same initial set for every network and strategy of a repeat
                generator = torch.Generator().manual_seed(hp.seed + repeat)
                self.labelled[key] = initial_indices(self.pool_y, hp.num_classes, hp.initial_per_class, generator)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The round clock's zero-lr optimiser; every round trains fresh networks in its own inner loop."""
        return torch.optim.SGD([self.round_clock], lr=0.0)

    # ------------------------------------------------------------------------------------ rounds
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        """Skip the epoch after its first step: one epoch is one acquisition round."""
        return -1 if batch_idx > 0 or self.rounds_done >= len(self.sizes) else None

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """Run acquisition round ``rounds_done``: acquire up to its budget, retrain, test, record."""
        size = self.sizes[self.rounds_done]
        accuracies: dict[str, list[float]] = {}
        for network, strategy, repeat in self.runs():
            accuracy = self._run_round(network, strategy, repeat, size)
            accuracies.setdefault(f"al/{network}/{strategy}", []).append(accuracy)
        self.rounds_done += 1
        self.optimizers().step()
        self.log("al/labelled", float(size), on_step=False, on_epoch=True)
        self.log_dict({k: sum(v) / len(v) for k, v in accuracies.items()}, on_step=False, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        """Stop the fit once every budget has been done."""
        if self.rounds_done >= len(self.sizes):
            self.trainer.should_stop = True

    def _run_round(self, network: str, strategy: str, repeat: int, size: int) -> float:
        key = f"{network}/{strategy}/{repeat}"
        labelled = self.labelled[key]
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.hparams.seed + repeat + 1000 * self.rounds_done)
            if len(labelled) < size:
                model = self._fit(network, strategy, labelled)
                labelled += self.acquire_from_pool(model, strategy, labelled, size - len(labelled), repeat)
            accuracy = test_accuracy(self._fit(network, strategy, labelled), self.test_x, self.test_y)
        self.records.append(
            {"network": network, "strategy": strategy, "repeat": repeat, "labelled": size, "accuracy": accuracy}
        )
        return accuracy

    def _fit(self, network: str, strategy: str, labelled: list[int]) -> nn.Module:
        """A fresh network trained on the labelled items (MC dropout inserted for BALD if needed)."""
        hp = self.hparams
        model = build_network(network, hp.in_shape, hp.num_classes, **self._options(network))
        if strategy == "bald" and not has_dropout(model):
            warnings.warn(
                f"{network} has no dropout module; BALD inserts nn.Dropout({hp.mc_dropout}) before its "
                "last linear layer (also active while training)",
                stacklevel=1,
            )
            insert_mc_dropout(model, hp.mc_dropout)
        index = torch.tensor(labelled, device=self.device)
        return train_network(
            model.to(self.device), self.pool_x[index], self.pool_y[index], hp.epochs, hp.lr, hp.batch_size,
            hp.momentum, hp.weight_decay,
        )

    def acquire_from_pool(
        self, model: nn.Module, strategy: str, labelled: Sequence[int], k: int, repeat: int
    ) -> list[int]:
        """Pool indices of the ``k`` unlabelled items that ``strategy`` scores highest under ``model``.

        The unlabelled pool is scored with :func:`score_pool_sharded` (one shard per DDP rank, results
        all-gathered), so every rank returns the same indices. ``random`` needs no network and draws
        from a generator seeded by ``seed``, ``repeat`` and the round.

        Args:
            model: Network trained on the labelled items.
            strategy: Key of :data:`~ddlight.active_learning.acquisition.ACQUISITIONS`.
            labelled: Pool indices already labelled (never returned).
            k: Number of items to acquire.
            repeat: Repeat index (seeds ``random``).

        Returns:
            ``k`` distinct pool indices, best first.
        """
        mask = torch.ones(self.pool_size, dtype=torch.bool)
        mask[list(labelled)] = False
        unlabelled = mask.nonzero().squeeze(1)
        if strategy == "random":  # needs no network: the same draw on every rank
            generator = torch.Generator().manual_seed(self.hparams.seed + repeat + 1000 * self.rounds_done)
            scores = random_scores(len(unlabelled), generator)
        elif strategy == "kcenter":
            embeddings = self.embed(model, self.pool_x)
            picks = kcenter_greedy(embeddings[unlabelled.to(self.device)], embeddings[list(labelled)], k)
            return unlabelled[picks.cpu()].tolist()
        else:
            pool = self.pool_x[unlabelled.to(self.device)]
            scores = score_pool_sharded(lambda x: self.score(model, strategy, x), pool).cpu()
        return unlabelled[select_top_k(scores, k)].tolist()

    @torch.no_grad()
    def embed(self, model: nn.Module, x: Tensor) -> Tensor:
        """Embeddings ``model.embed(x)`` in eval mode, ``score_batch_size`` items at a time."""
        model.eval()
        return torch.cat([model.embed(chunk) for chunk in x.split(self.hparams.score_batch_size)])

    @torch.no_grad()
    def score(self, model: nn.Module, strategy: str, x: Tensor) -> Tensor:
        """Acquisition scores ``[N]`` of items ``x`` under ``model`` (MC dropout passes when it has dropout).

        Args:
            model: Trained network.
            strategy: Key of :data:`~ddlight.active_learning.acquisition.ACQUISITIONS`.
            x: Pool features ``[N, C, F, T]``.
        """
        passes = self.hparams.mc_passes
        scores = []
        for chunk in x.split(self.hparams.score_batch_size):
            if passes > 1 and has_dropout(model):
                probs = mc_dropout_probs(model, chunk, passes)
            else:
                probs = model.eval()(chunk).softmax(-1)
            scores.append(acquisition_scores(strategy, probs))
        return torch.cat(scores) if scores else x.new_zeros(0)

    # ----------------------------------------------------------------------------------- results
    def on_fit_end(self) -> None:
        """Write ``al_results.json``/``.md``/``.png`` (rank zero) and log the plot to W&B if attached."""
        if not self.records:
            return
        if self.rounds_done < len(self.sizes):
            warnings.warn(
                f"fit ended after {self.rounds_done} of {len(self.sizes)} budgets (raise trainer.max_epochs "
                "to at least the number of budgets); the results cover the budgets done",
                stacklevel=2,
            )
        # trainer.log_dir is a collective under DDP: every rank asks, rank zero writes
        self._write_results(Path(self.hparams.output_dir or self.trainer.log_dir or self.trainer.default_root_dir))

    @rank_zero_only
    def _write_results(self, directory: Path) -> None:
        datamodule = self.trainer.datamodule
        results = build_results(
            dataset=getattr(datamodule, "name", type(datamodule).__name__),
            features=datamodule.features.config() if hasattr(datamodule, "features") else None,
            pool_size=self.pool_size,
            num_classes=self.hparams.num_classes,
            records=self.records,
            protocol={
                k: self.hparams[k]
                for k in ("repeats", "epochs", "lr", "momentum", "weight_decay", "batch_size", "initial_per_class",
                          "mc_passes", "seed", "network_options")
            },
        )
        paths = write_results(directory, results)
        for logger in self.trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                logger.log_image(key="al/accuracy_vs_labelled", images=[str(paths[2])])
        print(f"active learning results: {paths[0]} ({paths[1].name}, {paths[2].name})")
