"""Acquisition functions for pool-based active learning.

Plain torch, no Lightning and no dataset knowledge. The pieces are:

* uncertainty scores from class probabilities (higher score = more informative):
  :func:`max_entropy`, :func:`variation_ratios`, :func:`margin`, :func:`bald` and
  :func:`random_scores`, as used by Gal et al. (ICML 2017) and by Gudur & Thomaz;
* MC dropout: :func:`mc_dropout_probs` (all passes in one replicated forward),
  :func:`enable_mc_dropout`, :func:`has_dropout`, :func:`insert_mc_dropout` for networks without
  dropout and :func:`remove_dropout` for studies that train every network without it;
* the core-set baseline is :func:`ddlight.recipe.kcenter_greedy` (Sener & Savarese, ICLR 2018), on
  embeddings rather than probabilities;
* selection: :func:`select_top_k`, the :data:`ACQUISITIONS` registry and :func:`acquire`;
* :func:`score_pool_sharded` to split pool scoring over the ranks of a distributed job.

All logarithms are natural, so entropies and mutual information are in nats.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor, nn

#: Module types switched to train mode for MC dropout.
DROPOUT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)

#: Signature shared by the entries of :data:`ACQUISITIONS`: probabilities ``[T, N, K]`` (or
#: ``[N, K]``) and an optional generator in, one score per pool item ``[N]`` out.
ScoreFn = Callable[[Tensor, torch.Generator | None], Tensor]


def has_dropout(model: nn.Module) -> bool:
    """Whether ``model`` has a dropout module (:data:`DROPOUT_TYPES`): what MC dropout samples."""
    return any(isinstance(m, DROPOUT_TYPES) for m in model.modules())


def _check_probs(probs: Tensor, ndim: int) -> None:
    """Raise if ``probs`` does not have ``ndim`` dimensions with classes last."""
    if probs.dim() != ndim:
        raise ValueError(
            f"expected probabilities with {ndim} dimensions, got shape {tuple(probs.shape)}"
        )


def _entropy(probs: Tensor) -> Tensor:
    """Entropy over the last dimension, with ``0 * log 0 = 0``."""
    return -torch.special.xlogy(probs, probs).sum(dim=-1)


def max_entropy(probs: Tensor) -> Tensor:
    """Predictive entropy ``H[p] = -sum_k p_k log p_k`` of each pool item.

    Args:
        probs: Class probabilities ``[N, K]``.

    Returns:
        Scores ``[N]``, between 0 (one-hot) and ``log K`` (uniform).
    """
    _check_probs(probs, 2)
    return _entropy(probs)


def variation_ratios(probs: Tensor) -> Tensor:
    """Variation ratio (least confidence) ``1 - max_k p_k`` of each pool item.

    Args:
        probs: Class probabilities ``[N, K]``.

    Returns:
        Scores ``[N]``, between 0 (one-hot) and ``1 - 1/K`` (uniform).
    """
    _check_probs(probs, 2)
    return 1.0 - probs.amax(dim=-1)


def margin(probs: Tensor) -> Tensor:
    """Negative margin ``-(p_(1) - p_(2))`` between the two most probable classes.

    A smaller gap between the top two classes gives a higher score.

    Args:
        probs: Class probabilities ``[N, K]`` with ``K >= 2``.

    Returns:
        Scores ``[N]`` in ``[-1, 0]``.
    """
    _check_probs(probs, 2)
    if probs.shape[-1] < 2:
        raise ValueError(f"margin needs at least 2 classes, got {probs.shape[-1]}")
    top2 = probs.topk(2, dim=-1).values
    return top2[:, 1] - top2[:, 0]


def bald(mc_probs: Tensor) -> Tensor:
    """BALD: mutual information between the prediction and the model parameters.

    ``I[y; w | x] = H[mean_t p_t] - mean_t H[p_t]`` over ``T`` stochastic (MC dropout) passes
    (Houlsby et al., 2011). It is non-negative by concavity of the entropy; tiny negative values
    from rounding are clamped to 0.

    Args:
        mc_probs: Class probabilities of ``T >= 2`` passes, ``[T, N, K]``.

    Returns:
        Scores ``[N]``, between 0 (all passes agree) and ``log K``.
    """
    _check_probs(mc_probs, 3)
    if mc_probs.shape[0] < 2:
        raise ValueError(f"BALD needs at least 2 stochastic passes, got {mc_probs.shape[0]}")
    mutual_information = _entropy(mc_probs.mean(dim=0)) - _entropy(mc_probs).mean(dim=0)
    return mutual_information.clamp_min(0.0)


def random_scores(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform random scores in ``[0, 1)``: top-k of them is a uniformly random subset.

    Args:
        n: Number of pool items.
        generator: Random number generator, for reproducible selections.

    Returns:
        Scores ``[n]``.
    """
    return torch.rand(n, generator=generator)


@contextmanager
def enable_mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Put the dropout modules of ``model`` in train mode and everything else in eval mode.

    BatchNorm and other layers keep using their stored statistics (their running statistics are not
    updated). The train/eval flag of every module is restored on exit, even after an exception.
    Only dropout *modules* (:data:`DROPOUT_TYPES`) are detected; a functional ``F.dropout`` call
    driven by ``self.training`` is switched off like the rest of the model.

    Args:
        model: Network with at least one dropout module.

    Yields:
        The same ``model``.

    Raises:
        ValueError: If ``model`` has no dropout module.
    """
    dropouts = [m for m in model.modules() if isinstance(m, DROPOUT_TYPES)]
    if not dropouts:
        raise ValueError(
            f"MC dropout (BALD) needs dropout, but {type(model).__name__} has no dropout module; "
            "add one, e.g. with insert_mc_dropout(model, p=0.25)"
        )
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        for module in dropouts:
            module.train()
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def mc_dropout_probs(
    model: nn.Module, x: Tensor, passes: int = 20, chunk: int | None = None
) -> Tensor:
    """Class probabilities of ``passes`` MC dropout passes over a batch.

    The batch is replicated ``passes`` times along dim 0 (as ``x.repeat(passes, 1, ...)``) and
    pushed through the network in one forward, so each replica draws its own dropout mask. ``chunk``
    caps the number of rows of that replicated batch per forward to bound memory. Runs under
    ``torch.no_grad`` inside :func:`enable_mc_dropout`, so the model's modes are restored
    afterwards.

    Args:
        model: Network mapping ``[B, ...]`` inputs to logits ``[B, K]``; needs a dropout module.
        x: Batch of inputs ``[N, ...]`` on the model's device.
        passes: Number of stochastic passes ``T``.
        chunk: Maximum rows per forward (``None``: all ``T * N`` rows at once).

    Returns:
        Probabilities ``[T, N, K]`` (float32 or wider).

    Raises:
        ValueError: If ``passes`` or ``chunk`` is not positive, or the model has no dropout.
    """
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1 or None, got {chunk}")
    n = x.shape[0]
    # Row i of x.repeat(passes, 1, ...) is x[i % n]; indexing builds one chunk of it at a time.
    rows = torch.arange(passes * n, device=x.device) % n
    blocks = rows.split(chunk) if chunk is not None else (rows,)
    with enable_mc_dropout(model), torch.no_grad():
        logits = torch.cat([model(x[block]) for block in blocks])
    probs = logits.softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
    return probs.view(passes, n, -1)


def insert_mc_dropout(
    model: nn.Module, p: float = 0.25, layers: Sequence[str] | None = None
) -> nn.Module:
    """Give a network without dropout the dropout that MC dropout (BALD) needs.

    Each chosen ``nn.Linear`` is replaced, in place, by ``nn.Sequential(nn.Dropout(p), linear)``:
    the same weights, with dropout on its input features, in the linear layer's train/eval mode. In
    eval mode the network computes exactly what it did before. The parameter names change
    (``fc.weight`` becomes ``fc.1.weight``), so load checkpoints before calling this. Calling it
    twice on the same layer stacks two dropouts.

    Args:
        model: Network to modify.
        p: Dropout probability.
        layers: Qualified names of the ``nn.Linear`` submodules to wrap (``None``: the last
            ``nn.Linear`` in registration order, usually the classifier head).

    Returns:
        The same ``model``, modified.

    Raises:
        ValueError: If ``p`` is outside ``[0, 1)``, a name is not an ``nn.Linear`` submodule, or the
            model has none.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name]
    if layers is None:
        if not linears:
            raise ValueError(f"{type(model).__name__} has no nn.Linear submodule to wrap")
        layers = linears[-1:]
    for name in layers:
        if name not in linears:
            raise ValueError(f"{name!r} is not an nn.Linear submodule; choose from {linears}")
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, child_name)
        setattr(parent, child_name, nn.Sequential(nn.Dropout(p), linear).train(linear.training))
    return model


def remove_dropout(model: nn.Module) -> nn.Module:
    """Replace every dropout submodule of ``model`` (:data:`DROPOUT_TYPES`) by ``nn.Identity``, in place.

    In eval mode the network computes exactly what it did before; in train mode it drops nothing.
    Dropout has no parameters, so parameter names do not change.

    Args:
        model: Network to modify.

    Returns:
        The same ``model``, without dropout.
    """
    for name, module in list(model.named_modules()):
        if name and isinstance(module, DROPOUT_TYPES):
            parent_name, _, child_name = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child_name, nn.Identity())
    return model


def _check_k(k: int, pool_size: int) -> None:
    """Raise if ``k`` items cannot be selected from a pool of ``pool_size``."""
    if not 0 <= k <= pool_size:
        raise ValueError(f"cannot select k={k} items from a pool of {pool_size}")


def select_top_k(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest scores, ties broken by the lower index.

    Args:
        scores: One score per pool item ``[N]``; no NaN.
        k: Number of items, ``0 <= k <= N``.

    Returns:
        Indices ``[k]`` (int64) in descending order of score.

    Raises:
        ValueError: If ``scores`` is not 1-D, contains NaN, or ``k`` is out of range.
    """
    if scores.dim() != 1:
        raise ValueError(f"expected scores [N], got shape {tuple(scores.shape)}")
    if scores.isnan().any():
        raise ValueError("scores contain NaN")
    _check_k(k, scores.shape[0])
    return scores.sort(descending=True, stable=True).indices[:k]


def _as_passes(probs: Tensor) -> Tensor:
    """View probabilities ``[N, K]`` as one pass ``[1, N, K]``; leave ``[T, N, K]`` as is."""
    return probs.unsqueeze(0) if probs.dim() == 2 else probs


def _on_mean_probs(score: Callable[[Tensor], Tensor]) -> ScoreFn:
    """Make a ``[N, K]`` score into a :data:`ScoreFn` on the probabilities averaged over passes."""

    def score_fn(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return score(_as_passes(probs).mean(dim=0))

    score_fn.__name__ = score.__name__
    return score_fn


def _bald_score(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """:func:`bald` as a :data:`ScoreFn`."""
    return bald(probs)


def _random_score(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """:func:`random_scores` as a :data:`ScoreFn`, one score per item of ``probs``."""
    return random_scores(probs.shape[-2], generator).to(probs.device)


#: Acquisition functions by name. Each takes probabilities ``[T, N, K]`` (``T`` MC dropout passes)
#: or ``[N, K]`` (one deterministic pass) and a generator, and returns scores ``[N]``, higher = pick
#: first. Entropy, variation ratios and margin use the probabilities averaged over the passes (the
#: MC dropout predictive distribution of Gal et al., 2017); BALD needs ``T >= 2``; random ignores
#: the values. The core-set baseline works on embeddings instead: see :func:`ddlight.recipe.kcenter_greedy`.
ACQUISITIONS: dict[str, ScoreFn] = {
    "max_entropy": _on_mean_probs(max_entropy),
    "variation_ratios": _on_mean_probs(variation_ratios),
    "margin": _on_mean_probs(margin),
    "bald": _bald_score,
    "random": _random_score,
}


def acquisition_scores(
    name: str, probs: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Score pool items with the acquisition function called ``name``.

    Args:
        name: Key of :data:`ACQUISITIONS`.
        probs: Probabilities ``[T, N, K]`` or ``[N, K]``.
        generator: Random number generator (used by ``"random"``).

    Returns:
        Scores ``[N]``.

    Raises:
        ValueError: If ``name`` is unknown.
    """
    if name not in ACQUISITIONS:
        raise ValueError(
            f"unknown acquisition function {name!r}; choose from {sorted(ACQUISITIONS)}"
        )
    return ACQUISITIONS[name](probs, generator)


def acquire(name: str, probs: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """Pick the ``k`` pool items that the acquisition function ``name`` scores highest.

    Args:
        name: Key of :data:`ACQUISITIONS`.
        probs: Probabilities ``[T, N, K]`` or ``[N, K]``.
        k: Number of items, ``0 <= k <= N``.
        generator: Random number generator (used by ``"random"``).

    Returns:
        Pool indices ``[k]`` (int64), best first, ties broken by the lower index.
    """
    return select_top_k(acquisition_scores(name, probs, generator), k)


def score_pool_sharded(
    score_fn: Callable[[Tensor], Tensor],
    pool_x: Tensor,
    rank: int | None = None,
    world_size: int | None = None,
) -> Tensor:
    """Score the whole pool with each rank of a distributed job scoring one contiguous shard.

    The pool is cut into ``world_size`` shards of ``ceil(N / world_size)`` items; the last shards
    are padded with copies of the last pool item, so every rank scores the same number of items,
    the results are all-gathered (on the device ``score_fn`` returns them on) and trimmed back to
    ``N``. When ``torch.distributed`` is not initialised (or has one rank) the whole pool is scored
    in this process. Every rank must call this with the same pool.

    Args:
        score_fn: Maps items ``[B, ...]`` to scores ``[B, ...]`` (one row per item).
        pool_x: The whole pool ``[N, ...]``.
        rank: This process's rank (``None``: from ``torch.distributed``).
        world_size: Number of ranks (``None``: from ``torch.distributed``).

    Returns:
        Scores of the whole pool, in pool order, identical on every rank.

    Raises:
        ValueError: If ``world_size > 1`` without an initialised process group, or the given rank or
            world size disagree with it.
    """
    if not (dist.is_available() and dist.is_initialized()):
        if world_size not in (None, 1) or rank not in (None, 0):
            raise ValueError(
                f"torch.distributed is not initialised; cannot score as rank {rank} of {world_size}"
            )
        return score_fn(pool_x)
    rank = dist.get_rank() if rank is None else rank
    world_size = dist.get_world_size() if world_size is None else world_size
    if (rank, world_size) != (dist.get_rank(), dist.get_world_size()):
        raise ValueError(
            f"rank {rank} of {world_size} disagrees with the process group "
            f"(rank {dist.get_rank()} of {dist.get_world_size()})"
        )
    if world_size == 1:
        return score_fn(pool_x)
    n = pool_x.shape[0]
    shard = math.ceil(n / world_size)
    index = torch.arange(rank * shard, (rank + 1) * shard, device=pool_x.device).clamp_max(n - 1)
    local = score_fn(pool_x[index]).contiguous()
    gathered = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(gathered, local)
    return torch.cat(gathered)[:n]
