"""The evaluation protocol: train fresh networks on a small labelled set, test them on real data.

Every accuracy of ddlight is reported this way (see DESIGN.md, "Evaluation protocol"): for each
architecture, ``repeats`` freshly initialised networks are trained on the given set (synthetic, or a
random / herding / k-center subset of real data) with one :class:`~ddlight.recipe.TrainRecipe`, and
the real-test accuracy of the **last** epoch is reported as mean ± std. Training and scoring are those
of :mod:`ddlight.recipe`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

from ddlight.networks import build_network
from ddlight.recipe import TrainRecipe, accuracy, fit_networks, summarize


def num_classes_of(train_targets: Tensor, test_y: Tensor) -> int:
    """Classes of a protocol run: the width of soft targets, or one more than the largest hard label."""
    if train_targets.dim() == 2:
        return train_targets.shape[1]
    return int(max(train_targets.max(), test_y.max())) + 1


def evaluate(
    train_x: Tensor,
    train_targets: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    recipe: TrainRecipe,
    architectures: Sequence[str] = ("convnet",),
    repeats: int = 5,
    network_options: Mapping[str, Mapping[str, Any]] | None = None,
    description: str = "evaluate",
    show_progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Train ``repeats`` fresh networks per architecture (seeds ``recipe.seed + r``) and test each one.

    Args:
        train_x: Training features ``[N, C, F, T]``; the networks train on its device.
        train_targets: Hard labels ``[N]`` or soft label distributions ``[N, K]``.
        test_x: Real test features.
        test_y: Real test labels.
        recipe: How every network is trained (numeric ``lr``).
        architectures: Network names, one result each.
        repeats: Fresh networks per architecture.
        network_options: Constructor options per architecture name (missing names: defaults).
        description: Label of the progress bar (it counts network-epochs, all architectures together).
        show_progress: Show that bar (on stderr); False keeps a run quiet.

    Returns:
        ``{architecture: {"mean": %, "std": %, "runs": [% per repeat]}}``, accuracies after the last epoch.
    """
    num_classes = num_classes_of(train_targets, test_y)
    options = network_options or {}
    results = {}
    with tqdm(total=len(architectures) * repeats * recipe.epochs, desc=description, unit="epoch", leave=False,
              disable=not show_progress) as bar:
        for arch in architectures:
            bar.set_postfix_str(arch)
            build = partial(build_network, arch, tuple(train_x.shape[1:]), num_classes, **dict(options.get(arch) or {}))
            networks = fit_networks(build, train_x, train_targets, recipe, repeats, progress=bar.update)
            results[arch] = summarize(accuracy(network, test_x, test_y) for network in networks)
    return results
