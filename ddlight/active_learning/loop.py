"""Pool-based active learning as a LightningModule: ``ddlight fit --config configs/al_<dataset>.yaml``.

The protocol of Gudur & Thomaz ("Dataset Distillation for Audio Classification: A Data-Efficient
Alternative to Active Learning", Section 4.1 and Tables 1-2). The training split of any
:class:`~ddlight.data.base.AudioDataModule` is the unlabelled *pool*; its test split measures accuracy.

* **Budgets** are shares of the pool (``budget_unit: percent``): the paper reports 20, 30, 40 and
  60 % for every dataset (:data:`PAPER_BUDGETS`, the default) plus one tiny budget per dataset, the
  distilled set's share (:data:`PAPER_TINY_BUDGETS`: 0.029 % GSC, 0.063 % US8K, 0.15 % ESC-50). A
  budget that amounts to fewer samples than there are classes is skipped with a warning naming it
  (:func:`resolve_budgets`); on clip-level pools the tiny budgets usually are.
* **Acquisition in increments**: starting from a stratified, seeded initial set
  (``initial_per_class`` per class), every round acquires at most ``increment`` pool items (same unit
  as the budgets) with the network trained on the current labelled set, then a fresh network is
  trained on the grown set; the round before a budget is shortened to land on it
  (:func:`acquisition_schedule`). Reaching 20 % with the default 5 % increment takes four
  acquire -> retrain rounds. The network trained at a budget is tested and recorded.
* **One network for every strategy**: with ``network_dropout: mc`` (the default) every strategy
  (max entropy, variation ratios, BALD, random, ...) and the total-training-data row train the same
  network: BALD's MC-dropout network. A network without dropout (e.g. ``resnet18``) gets
  ``nn.Dropout(mc_dropout)`` in front of its last linear layer
  (:func:`~ddlight.active_learning.acquisition.insert_mc_dropout`, with a warning), active while
  training; uncertainty scores use the predictive distribution of ``mc_passes`` MC-dropout passes.
  With ``network_dropout: none`` every dropout module is removed from every network, scoring is one
  deterministic pass and BALD is refused (it needs dropout). Within a repeat and round every strategy
  also starts from the same initialisation and batch order (one seed).
* **Total training data**: the first round trains each network on the whole pool (``repeats``
  times, same recipe and network) and reports it as the paper's "Total Training Data" row.

A Lightning epoch is one round (round 0: total training data; then one round per labelled-set size
of the schedule): the round runs in the epoch's first training step and the epoch's remaining
batches are skipped; the fit stops itself after the last round, so the configs set
``trainer.max_epochs: -1``. Everything lives in the module, so checkpointing, logging and DDP work as
in every other stage:

* the labelled indices, results and round counter are the module's *extra state*
  (:meth:`~torch.nn.Module.get_extra_state`), so they travel in ``state_dict()`` and checkpoints and a
  resumed fit continues with the next round;
* under DDP every rank runs the same (seeded) training, and the pool scoring is split across the
  ranks with :func:`~ddlight.active_learning.acquisition.score_pool_sharded`, so each rank scores
  ``1 / world_size`` of the pool and all ranks acquire the same items.

Features of the pool and the test split are computed once per fit on the module's device
(``AudioDataModule.split_features``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor, nn
from tqdm.auto import tqdm

from ddlight.active_learning.acquisition import (
    ACQUISITIONS,
    acquisition_scores,
    has_dropout,
    insert_mc_dropout,
    mc_dropout_probs,
    random_scores,
    remove_dropout,
    score_pool_sharded,
    select_top_k,
)
from ddlight.active_learning.report import TOTAL, build_results, write_results
from ddlight.networks import build_network
from ddlight.recipe import Progress, TrainRecipe, accuracy, embed, fit_networks, kcenter_greedy
from ddlight.runs import run_dir

#: Budgets (% of the pool) of every dataset in Tables 1-2 of Gudur & Thomaz.
PAPER_BUDGETS: tuple[float, ...] = (20.0, 30.0, 40.0, 60.0)

#: The tiny budget (% of the pool) per dataset in Tables 1-3 of Gudur & Thomaz: the share of their
#: largest distilled set (50, 50 and 5 samples per class).
PAPER_TINY_BUDGETS: dict[str, float] = {"gsc": 0.029, "us8k": 0.063, "esc50": 0.15}

BUDGET_UNITS = ("percent", "count")
NETWORK_DROPOUT = ("mc", "none")

#: Strategies of the loop: the score-based acquisition functions plus the embedding-based core set.
STRATEGIES = (*ACQUISITIONS, "kcenter")

#: How every network of a study is trained unless the config says otherwise: the evaluation protocol's
#: SGD with fewer epochs, smaller batches and no augmentation (Gudur & Thomaz give no recipe).
AL_RECIPE = TrainRecipe(epochs=50, lr=0.01, batch_size=64, augment=False)


def _to_samples(value: float, pool_size: int, unit: str) -> int:
    """``value`` in ``unit`` as a number of pool items (percentages rounded to the nearest item)."""
    return round(value * pool_size / 100) if unit == "percent" else int(value)


def _shown(value: float, unit: str) -> str:
    """``value`` as written in messages: ``0.15%`` or ``11``."""
    return f"{value:g}%" if unit == "percent" else f"{value:g}"


def resolve_budgets(
    budgets: Sequence[float],
    pool_size: int,
    unit: Literal["percent", "count"],
    num_classes: int,
    initial_size: int,
) -> tuple[list[int], list[str]]:
    """Turn budgets into labelled-set sizes, skipping those under one sample per class.

    Args:
        budgets: Budgets in ``unit``, giving strictly increasing sizes.
        pool_size: Number of items in the pool (the training split).
        unit: ``"percent"`` (of the pool, rounded to the nearest item) or ``"count"``.
        num_classes: Number of classes; a budget of fewer samples is skipped.
        initial_size: Size of the initial labelled set; no kept budget may be smaller.

    Returns:
        The sizes of the budgets kept, and one message per budget skipped.

    Raises:
        ValueError: If the pool is empty, ``unit`` is unknown, there is no budget or none is kept, a
            kept budget is smaller than the initial set or larger than the pool, or the kept sizes
            are not strictly increasing.
    """
    if pool_size < 1:
        raise ValueError("the pool (training split) is empty; active learning needs unlabelled data")
    if unit not in BUDGET_UNITS:
        raise ValueError(f"budget_unit must be one of {BUDGET_UNITS}, got {unit!r}")
    if not budgets:
        raise ValueError("budgets is empty; give at least one pool percentage or count")
    sizes, skipped = [], []
    for budget in budgets:
        size, shown = _to_samples(budget, pool_size, unit), _shown(budget, unit)
        if size < num_classes:
            skipped.append(
                f"budget {shown} of the pool of {pool_size} is {size} sample(s), fewer than one per class "
                f"({num_classes} classes); skipped"
            )
        elif size > pool_size:
            raise ValueError(f"budget {shown} = {size} samples is larger than the pool of {pool_size}")
        elif size < initial_size:
            raise ValueError(
                f"budget {shown} = {size} samples is smaller than the initial labelled set of "
                f"{initial_size} (initial_per_class x classes); raise the budget or lower initial_per_class"
            )
        else:
            sizes.append(size)
    if not sizes:
        raise ValueError(f"every budget of {list(budgets)} is below one sample per class: {'; '.join(skipped)}")
    if any(b >= a for b, a in zip(sizes, sizes[1:])):
        raise ValueError(f"budgets must give strictly increasing labelled-set sizes, got {sizes} from {list(budgets)}")
    return sizes, skipped


def resolve_increment(increment: float, pool_size: int, unit: Literal["percent", "count"]) -> int:
    """The most pool items one acquisition round adds: ``increment`` in ``unit`` as a count.

    Raises:
        ValueError: If it amounts to less than one item.
    """
    size = _to_samples(increment, pool_size, unit)
    if size < 1:
        raise ValueError(
            f"increment {_shown(increment, unit)} of the pool of {pool_size} is {size} samples; "
            "every acquisition round must acquire at least 1"
        )
    return size


def acquisition_schedule(budgets: Sequence[int], initial_size: int, increment: int) -> list[int]:
    """Labelled-set sizes of the acquisition rounds, from the initial set to the last budget.

    Each round adds at most ``increment`` items; the round before a budget is shortened to land on
    it, so every budget is a round. ``acquisition_schedule([20, 30], 11, 5)`` is
    ``[11, 16, 20, 25, 30]``.

    Args:
        budgets: Strictly increasing labelled-set sizes, none below ``initial_size``.
        initial_size: Size of the initial labelled set (the first round).
        increment: Most items acquired per round, ``>= 1``.

    Returns:
        Strictly increasing sizes, one per round.
    """
    sizes = [initial_size]
    for budget in budgets:
        while sizes[-1] < budget:
            sizes.append(min(sizes[-1] + increment, budget))
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


class ActiveLearner(L.LightningModule):
    """Pool-based active learning of Gudur & Thomaz: one Lightning epoch per round, every network x strategy x repeat.

    See the module docstring for the protocol: budgets as % of the pool (below one sample per class:
    skipped), acquisition in increments with a fresh network trained after each, one network (by
    default BALD's MC-dropout network) for every strategy, and the total-training-data row.

    Args:
        in_shape: Feature shape ``(C, F, T)`` (linked from ``data.feature_shape``).
        num_classes: Number of classes (linked from ``data.num_classes``).
        networks: Network names (:data:`ddlight.networks.NETWORKS`), e.g. ``["resnet18", "cnn4"]``.
        network_options: Constructor options per network name (missing names: defaults).
        strategies: Acquisition functions (keys of
            :data:`~ddlight.active_learning.acquisition.ACQUISITIONS`, or ``kcenter``: the core-set
            baseline, greedy k-center in the trained network's embedding space).
        budgets: Labelled-set sizes to report, in ``budget_unit`` (default :data:`PAPER_BUDGETS`, the
            paper's 20/30/40/60 %; the configs add the dataset's tiny budget of
            :data:`PAPER_TINY_BUDGETS`). Budgets under one sample per class are skipped with a warning.
        budget_unit: ``"percent"`` of the pool or absolute ``"count"``.
        increment: Most pool items acquired per acquire -> retrain round, in ``budget_unit`` (default
            5 % of the pool; the paper gives none). The round before a budget is shortened to land on it.
        initial_per_class: Labelled items per class before the first acquisition (stratified, seeded).
        repeats: Runs per network and strategy; repeat ``r`` uses seed ``recipe.seed + r``.
        network_dropout: ``"mc"``: every strategy (and the total-training-data row) trains BALD's
            MC-dropout network (dropout inserted where a network has none) and scores with
            ``mc_passes`` MC-dropout passes; ``"none"``: every dropout module is removed from every
            network, scoring is one deterministic pass, and BALD is refused.
        mc_passes: MC-dropout passes per pool item (``>= 2`` with ``network_dropout="mc"``).
        mc_dropout: Probability of the dropout inserted into networks without one (``"mc"`` only).
        recipe: How every fresh network is trained (:class:`~ddlight.recipe.TrainRecipe`, the recipe of
            the evaluation protocol; default :data:`AL_RECIPE`); ``lr`` must be a number. Every round
            retrains from scratch. Its seed is that of the first repeat (initial sets,
            initialisations, batch order, MC masks); the network of repeat ``r`` in round ``k`` is
            trained with seed ``seed + r + 1000 k``.
        score_batch_size: Pool items per scoring forward (times ``mc_passes`` rows).
        output_dir: Where ``al_results.json``/``.md``/``.png`` go (``None``: the run's folder, :func:`ddlight.runs.run_dir`).

    Raises:
        ValueError: If a strategy, network, ``network_dropout`` or count is invalid, or BALD is asked
            for without MC dropout.
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
        increment: float = 5.0,
        initial_per_class: int = 1,
        repeats: int = 3,
        network_dropout: Literal["mc", "none"] = "mc",
        mc_passes: int = 20,
        mc_dropout: float = 0.25,
        recipe: TrainRecipe = AL_RECIPE,
        score_batch_size: int = 256,
        output_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        #: The training recipe (under LightningCLI ``hparams`` holds the config's dict, not the object).
        self.recipe = recipe
        self.networks = list(networks or ["cnn4"])
        self.strategies = list(strategies or ["max_entropy", "variation_ratios", "bald", "random"])
        self.budgets = list(budgets or PAPER_BUDGETS)
        self._check_arguments()
        for name in self.networks:  # fail (or warn) at construction, not after the first round
            self._announce_dropout(name)
        #: Labelled pool indices per run key ``network/strategy/repeat``, in acquisition order.
        self.labelled: dict[str, list[int]] = {}
        #: One record per run and budget (and per network and repeat of the total-training-data row,
        #: strategy :data:`~ddlight.active_learning.report.TOTAL`): network, strategy, repeat,
        #: labelled, accuracy.
        self.records: list[dict[str, Any]] = []
        self.rounds_done = 0
        # Lightning counts optimiser steps as global steps (they drive checkpointing) and DDP needs a
        # trainable parameter: one zero-lr step per round on this placeholder provides both.
        self.round_clock = nn.Parameter(torch.zeros(()))
        self.pool_size = 0
        self.sizes: list[int] = []
        self.schedule: list[int] = []
        self.skipped: list[str] = []

    def _check_arguments(self) -> None:
        """Raise a ``ValueError`` naming the first invalid argument."""
        hp = self.hparams
        unknown = sorted(set(self.strategies) - set(STRATEGIES))
        if unknown:
            raise ValueError(f"unknown strategies {unknown}; choose from {sorted(STRATEGIES)}")
        if hp.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {hp.repeats}")
        if self.recipe.lr == "auto":
            raise ValueError(
                "recipe.lr 'auto' is the learned step size of a distilled set; active learning trains on real "
                "data: give recipe.lr a number"
            )
        if hp.increment <= 0:
            raise ValueError(f"increment must be > 0 ({hp.budget_unit}), got {hp.increment}")
        if not 0.0 <= hp.mc_dropout < 1.0:
            raise ValueError(f"mc_dropout must be in [0, 1), got {hp.mc_dropout}")
        if hp.network_dropout not in NETWORK_DROPOUT:
            raise ValueError(f"network_dropout must be one of {NETWORK_DROPOUT}, got {hp.network_dropout!r}")
        if hp.network_dropout == "none" and "bald" in self.strategies:
            raise ValueError(
                "BALD needs MC dropout, but network_dropout='none' trains every strategy without dropout; "
                "set network_dropout='mc' or remove 'bald' from strategies"
            )
        if hp.network_dropout == "mc" and hp.mc_passes < 2:
            raise ValueError(
                f"network_dropout='mc' scores with MC dropout and needs mc_passes >= 2, got {hp.mc_passes}"
            )

    def _announce_dropout(self, network: str) -> None:
        """Build ``network`` once (unknown names fail here) and warn if ``"mc"`` inserts dropout into it."""
        hp = self.hparams
        plain = build_network(network, hp.in_shape, hp.num_classes, **self._options(network))
        if hp.network_dropout == "mc" and not has_dropout(plain):
            rank_zero_warn(
                f"{network} has no dropout module; network_dropout='mc' inserts nn.Dropout({hp.mc_dropout}) "
                "before its last linear layer for every strategy and the total-training-data row "
                "(also active while training)"
            )

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
        """Constructor options of ``network`` from ``network_options``."""
        return dict((self.hparams.network_options or {}).get(network, {}))

    def build(self, network: str) -> nn.Module:
        """A fresh ``network`` with the study's dropout: the one network every strategy trains.

        ``network_dropout="mc"`` inserts ``nn.Dropout(mc_dropout)`` before the last linear layer of a
        network without dropout; ``"none"`` removes every dropout module.
        """
        hp = self.hparams
        model = build_network(network, hp.in_shape, hp.num_classes, **self._options(network))
        if hp.network_dropout == "none":
            return remove_dropout(model)
        return model if has_dropout(model) else insert_mc_dropout(model, hp.mc_dropout)

    def runs(self) -> list[tuple[str, str, int]]:
        """Every ``(network, strategy, repeat)`` of the study, in execution order."""
        return [(n, s, r) for n in self.networks for s in self.strategies for r in range(self.hparams.repeats)]

    @property
    def num_rounds(self) -> int:
        """Rounds of the fit: the total-training-data round plus one per size of :attr:`schedule`."""
        return 1 + len(self.schedule)

    def on_fit_start(self) -> None:
        """Compute features, resolve budgets (warning about skipped ones) and the schedule, draw initial sets."""
        datamodule = self.trainer.datamodule
        self.pool_x, self.pool_y = datamodule.split_features("train", self.device)
        self.test_x, self.test_y = datamodule.split_features("test", self.device)
        hp = self.hparams
        self.pool_size = len(self.pool_y)
        initial_size = hp.initial_per_class * hp.num_classes
        self.sizes, self.skipped = resolve_budgets(
            self.budgets, self.pool_size, hp.budget_unit, hp.num_classes, initial_size
        )
        for message in self.skipped:
            rank_zero_warn(message)
        increment = resolve_increment(hp.increment, self.pool_size, hp.budget_unit)
        self.schedule = acquisition_schedule(self.sizes, initial_size, increment)
        for network, strategy, repeat in self.runs():
            key = f"{network}/{strategy}/{repeat}"
            if key not in self.labelled:  # same initial set for every network and strategy of a repeat
                generator = torch.Generator().manual_seed(self.recipe.seed + repeat)
                self.labelled[key] = initial_indices(self.pool_y, hp.num_classes, hp.initial_per_class, generator)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The round clock's zero-lr optimiser; every round trains fresh networks in its own inner loop."""
        return torch.optim.SGD([self.round_clock], lr=0.0)

    # ------------------------------------------------------------------------------------ rounds
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        """Skip the epoch after its first step: one epoch is one round."""
        return -1 if batch_idx > 0 or self.rounds_done >= self.num_rounds else None

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """Run round ``rounds_done``: round 0 trains on the whole pool, the others acquire and retrain."""
        if self.rounds_done == 0:
            labelled, accuracies = self.pool_size, self._total_round()
        else:
            step = self.rounds_done - 1
            labelled, accuracies = self.schedule[step], self._acquisition_round(step)
        self.rounds_done += 1
        self.optimizers().step()
        self.log("al/labelled", float(labelled), on_step=False, on_epoch=True)
        self.log_dict({k: sum(v) / len(v) for k, v in accuracies.items()}, on_step=False, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        """Stop the fit once every round has been done."""
        if self.rounds_done >= self.num_rounds:
            self.trainer.should_stop = True

    def _seed(self, repeat: int) -> int:
        """Seed of ``repeat`` in the current round: ``recipe.seed + repeat + 1000 * round``."""
        return self.recipe.seed + repeat + 1000 * self.rounds_done

    @contextmanager
    def _seeded(self, repeat: int) -> Iterator[None]:
        """Seed the global RNG with :meth:`_seed` (MC-dropout masks), restoring its state afterwards."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self._seed(repeat))
            yield

    def _record(self, network: str, strategy: str, repeat: int, labelled: int, accuracy: float) -> None:
        """Append one result to :attr:`records` (part of the checkpointed state)."""
        self.records.append(
            {"network": network, "strategy": strategy, "repeat": repeat, "labelled": labelled, "accuracy": accuracy}
        )

    def _bar(self, total: int, description: str) -> tqdm:
        """A bar over the network-epochs of the current round (rank zero, when the trainer shows bars)."""
        trainer = self._trainer
        shown = trainer is not None and trainer.is_global_zero and trainer.progress_bar_callback is not None
        return tqdm(total=total, desc=f"round {self.rounds_done + 1}/{self.num_rounds}: {description}",
                    unit="epoch", leave=False, disable=not shown)

    def _total_round(self) -> dict[str, list[float]]:
        """The "Total Training Data" row: every network trained on the whole pool, ``repeats`` times.

        The repeats of a network train together (seeds ``recipe.seed + r``, as in every other round).
        """
        accuracies: dict[str, list[float]] = {}
        repeats = self.hparams.repeats
        with self._bar(len(self.networks) * repeats * self.recipe.epochs, "total training data") as bar:
            for network in self.networks:
                bar.set_postfix_str(f"{network}: training")
                models = self._fit(network, list(range(self.pool_size)), 0, repeats, bar.update)
                for repeat, model in enumerate(models):
                    score = accuracy(model, self.test_x, self.test_y)
                    self._record(network, TOTAL, repeat, self.pool_size, score)
                    accuracies.setdefault(f"al/{network}/{TOTAL}", []).append(score)
        return accuracies

    def _acquisition_round(self, step: int) -> dict[str, list[float]]:
        """Round ``step`` of the schedule for every run: train on the labelled set, test at a budget, acquire.

        The network trained on the current labelled set is tested when its size is a budget and
        scores the pool for the next round's increment (``random`` trains only at budgets).
        """
        size = self.schedule[step]
        at_budget = size in self.sizes
        grow = self.schedule[step + 1] - size if step + 1 < len(self.schedule) else 0
        accuracies: dict[str, list[float]] = {}
        trains = sum(at_budget or strategy != "random" for _, strategy, _ in self.runs())  # random: at budgets only
        with self._bar(trains * self.recipe.epochs, f"{size} labelled") as bar:
            for network, strategy, repeat in self.runs():
                key = f"{network}/{strategy}/{repeat}"
                labelled = self.labelled[key]
                if len(labelled) != size:
                    raise RuntimeError(
                        f"run {key} has {len(labelled)} labelled items in the round of size {size}; the state "
                        "comes from a study with other budgets, increment or initial_per_class"
                    )
                bar.set_postfix_str(f"{key}: training")
                trained = at_budget or strategy != "random"
                model = self._fit(network, labelled, repeat, 1, bar.update)[0] if trained else None
                if at_budget:
                    score = accuracy(model, self.test_x, self.test_y)
                    self._record(network, strategy, repeat, size, score)
                    accuracies.setdefault(f"al/{network}/{strategy}", []).append(score)
                if grow:
                    bar.set_postfix_str(f"{key}: scoring the pool")
                    with self._seeded(repeat):
                        labelled += self.acquire_from_pool(model, strategy, labelled, grow, repeat)
        return accuracies

    def _fit(
        self, network: str, labelled: list[int], repeat: int, repeats: int = 1, progress: Progress | None = None
    ) -> list[nn.Module]:
        """Fresh :meth:`build` s of ``network`` trained on the labelled items with the recipe of every row.

        The first is seeded :meth:`_seed` of ``repeat``, the next ones ``+ 1``, ``+ 2``, ...; ``progress``
        is told every epoch trained (:func:`~ddlight.recipe.fit_networks`).
        """
        index = torch.tensor(labelled, device=self.device)
        recipe = replace(self.recipe, seed=self._seed(repeat))
        build = partial(self.build, network)
        return fit_networks(build, self.pool_x[index], self.pool_y[index], recipe, repeats, progress=progress)

    def acquire_from_pool(
        self, model: nn.Module | None, strategy: str, labelled: Sequence[int], k: int, repeat: int
    ) -> list[int]:
        """Pool indices of the ``k`` unlabelled items that ``strategy`` scores highest under ``model``.

        The unlabelled pool is scored with :func:`score_pool_sharded` (one shard per DDP rank, results
        all-gathered), so every rank returns the same indices. ``random`` needs no network (``model``
        may be ``None``) and draws from a generator seeded by ``seed``, ``repeat`` and the round.

        Args:
            model: Network trained on the labelled items.
            strategy: Key of :data:`~ddlight.active_learning.acquisition.ACQUISITIONS` or ``kcenter``.
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
            generator = torch.Generator().manual_seed(self._seed(repeat))
            scores = random_scores(len(unlabelled), generator)
        elif strategy == "kcenter":
            embeddings = embed(model, self.pool_x, self.hparams.score_batch_size)
            picks = kcenter_greedy(embeddings[unlabelled.to(self.device)], embeddings[list(labelled)], k)
            return unlabelled[picks.cpu()].tolist()
        else:
            pool = self.pool_x[unlabelled.to(self.device)]
            scores = score_pool_sharded(lambda x: self.score(model, strategy, x), pool).cpu()
        return unlabelled[select_top_k(scores, k)].tolist()

    @torch.no_grad()
    def score(self, model: nn.Module, strategy: str, x: Tensor) -> Tensor:
        """Acquisition scores ``[N]`` of items ``x`` under ``model``.

        With ``network_dropout="mc"`` every strategy scores the predictive distribution of
        ``mc_passes`` MC-dropout passes (BALD their disagreement); with ``"none"`` one eval-mode pass.

        Args:
            model: Trained network.
            strategy: Key of :data:`~ddlight.active_learning.acquisition.ACQUISITIONS`.
            x: Pool features ``[N, C, F, T]``.
        """
        scores = []
        for chunk in x.split(self.hparams.score_batch_size):
            if self.hparams.network_dropout == "mc":
                probs = mc_dropout_probs(model, chunk, self.hparams.mc_passes)
            else:
                probs = model.eval()(chunk).softmax(-1)
            scores.append(acquisition_scores(strategy, probs))
        return torch.cat(scores) if scores else x.new_zeros(0)

    # ----------------------------------------------------------------------------------- results
    def on_fit_end(self) -> None:
        """Write ``al_results.json``/``.md``/``.png`` (rank zero) and log the plot to W&B if attached."""
        if not self.records:
            return
        if self.rounds_done < self.num_rounds:
            rank_zero_warn(
                f"fit ended after {self.rounds_done} of {self.num_rounds} rounds (set trainer.max_epochs to -1 "
                f"or at least {self.num_rounds}); the results cover the budgets done"
            )
        # run_dir is a collective under DDP: every rank asks, rank zero writes
        self._write_results(Path(self.hparams.output_dir or run_dir(self.trainer)))

    def _protocol(self) -> dict[str, Any]:
        """The settings the results depend on, for ``al_results.json``."""
        keys = (
            "budget_unit", "increment", "repeats", "initial_per_class", "network_dropout", "mc_passes", "mc_dropout",
            "network_options",
        )
        recipe = {k: v for k, v in asdict(self.recipe).items() if k != "batched"}  # batched: speed only
        return {
            "budgets": self.budgets,
            **{k: self.hparams[k] for k in keys},
            **recipe,
            "schedule": self.schedule,
            "skipped_budgets": self.skipped,
        }

    @rank_zero_only
    def _write_results(self, directory: Path) -> None:
        datamodule = self.trainer.datamodule
        results = build_results(
            dataset=getattr(datamodule, "name", type(datamodule).__name__),
            features=datamodule.features.config() if hasattr(datamodule, "features") else None,
            pool_size=self.pool_size,
            num_classes=self.hparams.num_classes,
            records=self.records,
            protocol=self._protocol(),
        )
        paths = write_results(directory, results)
        for logger in self.trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                logger.log_image(key="al/accuracy_vs_labelled", images=[str(paths[2])])
        print(f"active learning results: {paths[0]} ({paths[1].name}, {paths[2].name})")
