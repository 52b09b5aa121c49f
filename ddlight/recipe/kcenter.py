"""Greedy k-center selection (Sener & Savarese, ICLR 2018): the core set of an embedding space."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _nearest_distance(points: Tensor, centres: Tensor, block: int = 1024) -> Tensor:
    """Euclidean distance from each point to its nearest centre, ``block`` centres at a time."""
    nearest = points.new_full((points.shape[0],), math.inf)
    for part in centres.split(block):
        nearest = torch.minimum(nearest, torch.cdist(points, part).amin(dim=1))
    return nearest


def kcenter_greedy(points: Tensor, centres: Tensor, k: int) -> Tensor:
    """Pick ``k`` of ``points``, each the one farthest (Euclidean) from its nearest centre so far.

    The centres are ``centres`` plus the points picked so far: a 2-approximation of the k-center
    problem. With no centres (``M = 0``) the first pick is the point farthest from the mean of
    ``points``, so the result is deterministic. Ties go to the lowest index; no point is picked twice.

    Args:
        points: Candidates ``[N, D]``.
        centres: Points already chosen ``[M, D]`` (not candidates); ``M`` may be 0.
        k: Number of picks, ``0 <= k <= N``.

    Returns:
        Indices into ``points`` ``[k]`` (int64, on their device), distinct, in pick order.

    Raises:
        ValueError: If the shapes disagree or ``k`` is out of range.
    """
    if points.dim() != 2 or centres.dim() != 2 or points.shape[1] != centres.shape[1]:
        raise ValueError(
            f"expected points [N, D] and centres [M, D], got {tuple(points.shape)} and {tuple(centres.shape)}"
        )
    if not 0 <= k <= points.shape[0]:
        raise ValueError(f"cannot select k={k} items from a pool of {points.shape[0]}")
    has_centres = centres.shape[0] > 0
    if has_centres:
        nearest = _nearest_distance(points, centres.to(points))
    else:
        nearest = points.new_full((len(points),), math.inf)
    picks = torch.empty(k, dtype=torch.long, device=points.device)
    for i in range(k):
        if i == 0 and not has_centres:
            pick = (points - points.mean(dim=0)).norm(dim=1).argmax()
        else:
            pick = nearest.argmax()
        picks[i] = pick
        nearest = torch.minimum(nearest, (points - points[pick]).norm(dim=1))
        nearest[pick] = -math.inf  # stays -inf under minimum: no point is picked twice
    return picks
