"""Coreset baselines on hand-made embeddings: known picks, per-class counts, clear errors."""

from __future__ import annotations

import pytest
import torch

from ddlight.evaluation import herding, kcenter, random_subset

# one class on a line: points 0, 1, 2, 3, 10 (mean 3.2)
LINE = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])


def test_kcenter_starts_at_mean_then_farthest() -> None:
    labels = torch.zeros(5, dtype=torch.long)
    # closest to the mean 3.2 is 3 (index 3); farthest from {3} is 10 (index 4); farthest from {3, 10} is 0
    assert kcenter(LINE, labels, 3).tolist() == [3, 4, 0]


def test_herding_matches_the_mean_greedily() -> None:
    labels = torch.zeros(5, dtype=torch.long)
    # k=1: the point closest to the mean 3.2 is 3 (index 3)
    # k=2: means (3 + z) / 2 for z = 0, 1, 2, 10 are 1.5, 2, 2.5, 6.5 -> z = 2 (index 2)
    # k=3: means (5 + z) / 3 for z = 0, 1, 10 are 1.67, 2, 5 -> z = 1 (index 1), not the far 10
    assert herding(LINE, labels, 3).tolist() == [3, 2, 1]


def test_selection_is_per_class() -> None:
    embeddings = torch.cat([LINE, LINE + 100])
    labels = torch.tensor([0] * 5 + [1] * 5)
    for select in (herding, kcenter):
        picks = select(embeddings, labels, 2)
        assert labels[picks].tolist() == [0, 0, 1, 1]
    picks = random_subset(labels, 2, torch.Generator().manual_seed(0))
    assert labels[picks].tolist() == [0, 0, 1, 1] and len(set(picks.tolist())) == 4
    assert torch.equal(picks, random_subset(labels, 2, torch.Generator().manual_seed(0)))


def test_too_few_samples_is_a_clear_error() -> None:
    labels = torch.tensor([0, 0, 0, 1])
    for call in (lambda: random_subset(labels, 2), lambda: herding(torch.randn(4, 2), labels, 2),
                 lambda: kcenter(torch.randn(4, 2), labels, 2)):
        with pytest.raises(ValueError, match=r"\{1: 1\}.*ipc=2"):
            call()
