"""The whole protocol on one distilled set: synthetic set and coreset baselines, every architecture.

:func:`evaluate_synset` is the single code path behind the :class:`~ddlight.callbacks.SynsetEvaluator`
callback and ``python -m ddlight.evaluation``: it trains ``repeats`` fresh networks per architecture on
the synthetic set and on each baseline subset of the real training set (same ``ipc``, same protocol)
and returns the ``results`` list of ``evaluation.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddlight.evaluation.coresets import herding, kcenter, random_subset
from ddlight.evaluation.protocol import evaluate, num_classes_of
from ddlight.networks import AudioNetwork
from ddlight.recipe import TrainRecipe, embed, final_expert_networks, fit_network

#: Baselines :func:`evaluate_synset` knows.
BASELINES = ("random", "herding", "kcenter")
#: Learning rate of the protocol when a set has no learned one (``lr: auto`` on a non-MTT set).
DEFAULT_LR = 0.01
#: How the quick stand-in for an expert is trained when no expert folder is given (herding / k-center).
EMBEDDING_RECIPE = TrainRecipe(epochs=30, lr=DEFAULT_LR, augment=False)


def resolve_lr(lr: float | str, manifest: Mapping[str, Any]) -> float:
    """The protocol's learning rate for a set: a number as given, or ``"auto"``.

    ``auto`` takes the step size the set was distilled with (MTT's learned ``syn_lr`` in its manifest:
    the original MTT trains its evaluation networks with ``lr = syn_lr``) and falls back to
    :data:`DEFAULT_LR` for sets without one (RFAD, FRAMI, coresets).

    Raises:
        ValueError: If ``lr`` is neither a positive number nor ``"auto"``, or the manifest's ``syn_lr``
            is not a positive number.
    """
    if lr == "auto":
        value = manifest.get("syn_lr", DEFAULT_LR)
        if not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"the set's manifest has syn_lr={value!r}; pass a learning rate instead of lr auto")
        return float(value)
    if isinstance(lr, str) or not lr > 0:
        raise ValueError(f"lr must be a positive number or 'auto', got {lr!r}")
    return float(lr)


def resolve_recipe(recipe: TrainRecipe, manifest: Mapping[str, Any]) -> TrainRecipe:
    """``recipe`` with its learning rate resolved for the set of ``manifest`` (:func:`resolve_lr`)."""
    return replace(recipe, lr=resolve_lr(recipe.lr, manifest))


def protocol_recipe(
    recipe: TrainRecipe,
    manifest: Mapping[str, Any],
    repeats: int,
    full_epochs: int | None = None,
    full_repeats: int | None = None,
) -> dict[str, Any]:
    """The ``recipe`` entry of ``evaluation.json``: what every network of a report was trained with.

    ``lr`` is resolved for the set (:func:`resolve_lr`); ``lr_requested`` keeps what was asked;
    ``full_epochs`` and ``full_repeats`` are those of the full-split reference (``epochs`` and
    ``repeats`` unless set).
    """
    return {
        "lr": resolve_lr(recipe.lr, manifest), "lr_requested": recipe.lr, "epochs": recipe.epochs,
        "batch_size": recipe.batch_size, "augment": recipe.augment, "repeats": repeats, "seed": recipe.seed,
        "full_epochs": full_epochs or recipe.epochs, "full_repeats": full_repeats or repeats,
        "optimizer": recipe.optimizer, "momentum": recipe.momentum, "weight_decay": recipe.weight_decay,
        "lr_schedule": recipe.lr_schedule, "precision": recipe.precision,
    }


def full_recipe(
    recipe: TrainRecipe, repeats: int, full_epochs: int | None, full_repeats: int | None
) -> tuple[TrainRecipe, int]:
    """The recipe and number of networks of the full-split reference (``full_*`` override when set).

    Raises:
        ValueError: If a count is set below 1.
    """
    for name, value in (("full_epochs", full_epochs), ("full_repeats", full_repeats)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1 or None, got {value}")
    return replace(recipe, epochs=full_epochs or recipe.epochs), full_repeats or repeats


def gap_closure(synthetic: float, random: float, full: float) -> float | None:
    """``g = (synthetic - random) / (full - random)``: the share of the random-to-full gap the set closes.

    None when the full-data reference is not above the random subset (the ratio means nothing there).
    """
    if full <= random:
        return None
    return round((synthetic - random) / (full - random), 4)


def budget_ipc(manifest: Mapping[str, Any]) -> int:
    """Samples per class of a set's storage budget, the size its baselines get.

    A set decoded from fewer stored samples (MTT's ``formation``: ``stored_ipc`` stored, ``ipc`` decoded
    per class) is compared with real subsets of the size it occupies, as IDC and the parameterisation
    papers compare; any other set's budget is its ``ipc``.
    """
    return int(manifest.get("stored_ipc") or manifest["ipc"])


def embedding_network(
    train_x: Tensor, train_y: Tensor, num_classes: int, expert_dir: str | Path | None = None, seed: int = 0
) -> AudioNetwork:
    """The network whose ``embed()`` places real samples for herding and k-center (on ``train_x``'s device).

    The first expert of ``expert_dir`` at its final snapshot when given; otherwise a width-64 ConvNet
    trained with :data:`EMBEDDING_RECIPE` on the real training features (a quick stand-in for an expert).
    """
    if expert_dir is not None:
        return final_expert_networks(expert_dir, train_x.device)[1][0]
    recipe = replace(EMBEDDING_RECIPE, seed=seed)
    return fit_network(train_x, train_y, num_classes, recipe, "convnet", {"width": 64})


def baseline_indices(
    name: str, train_y: Tensor, ipc: int, embeddings: Tensor | None, seed: int = 0
) -> Tensor:
    """Indices of the ``name`` baseline subset (``ipc`` per class) of the real training set.

    Raises:
        ValueError: If ``name`` is unknown, or ``embeddings`` is missing for herding / k-center.
    """
    if name == "random":
        return random_subset(train_y, ipc, torch.Generator().manual_seed(seed))
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; valid: {', '.join(BASELINES)}")
    if embeddings is None:
        raise ValueError(f"the {name} baseline needs embeddings of the real training set")
    return (herding if name == "herding" else kcenter)(embeddings, train_y, ipc)


def evaluate_synset(
    synthetic_x: Tensor,
    synthetic_targets: Tensor,
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    ipc: int,
    recipe: TrainRecipe,
    architectures: Sequence[str] = ("convnet",),
    baselines: Sequence[str] = BASELINES,
    repeats: int = 5,
    network_options: Mapping[str, Mapping[str, Any]] | None = None,
    expert_dir: str | Path | None = None,
    full: bool = False,
    full_epochs: int | None = None,
    full_repeats: int | None = None,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate a synthetic set beside coreset baselines of the same size, for every architecture.

    Every set (synthetic, baselines, full training split) is trained with the same recipe, so the gap
    closure ``g`` compares like with like. Networks train on the device of the tensors.

    Args:
        synthetic_x: Synthetic features ``[K * ipc, C, F, T]``.
        synthetic_targets: Their hard labels ``[N]`` or soft labels ``[N, K]``.
        train_x: Real training features (the pool of the baselines).
        train_y: Real training labels.
        test_x: Real test features.
        test_y: Real test labels.
        ipc: Samples per class of every baseline.
        recipe: How every network is trained, ``lr`` resolved for the set (:func:`resolve_recipe`); its
            seed also picks the random subset and trains the stand-in embedding network.
        architectures: Network names.
        baselines: Any of :data:`BASELINES`.
        repeats: Fresh networks per architecture and set.
        network_options: Constructor options per architecture.
        expert_dir: Trajectories whose final expert embeds the real data for herding / k-center
            (default: a quick ConvNet trained on the real training set).
        full: Also train on the whole real training split (the reference of ``g``; costly).
        full_epochs: Epochs of the full-split networks (None: ``recipe.epochs``). Fewer epochs make the
            reference cheaper but lower, which raises ``g``: reports record it.
        full_repeats: Networks trained on the full split (None: ``repeats``).
        show_progress: Show a progress bar per set (on stderr).

    Returns:
        The ``results`` list of ``evaluation.json``: per architecture, ``{"architecture", "synthetic",
        <baseline>..., "full"}`` with ``{"mean", "std", "runs"}`` each, and ``g`` (:func:`gap_closure` of
        the means) when both ``random`` and ``full`` were run.
    """
    sets = {"synthetic": (synthetic_x, synthetic_targets)}
    embeddings = None
    if {"herding", "kcenter"} & set(baselines):
        network = embedding_network(train_x, train_y, num_classes_of(train_y, test_y), expert_dir, recipe.seed)
        embeddings = embed(network, train_x)
    for name in baselines:
        idx = baseline_indices(name, train_y, ipc, embeddings, recipe.seed).to(train_x.device)
        sets[name] = (train_x[idx], train_y[idx])
    if full:
        sets["full"] = (train_x, train_y)
    per_set = {}
    for name, (x, targets) in sets.items():
        if name == "full":
            set_recipe, set_repeats = full_recipe(recipe, repeats, full_epochs, full_repeats)
        else:
            set_recipe, set_repeats = recipe, repeats
        per_set[name] = evaluate(
            x, targets, test_x, test_y, set_recipe, architectures, set_repeats, network_options, description=name,
            show_progress=show_progress,
        )
    results = [{"architecture": arch, **{name: per_set[name][arch] for name in sets}} for arch in architectures]
    if full and "random" in sets:
        for row in results:
            row["g"] = gap_closure(row["synthetic"]["mean"], row["random"]["mean"], row["full"]["mean"])
    return results
