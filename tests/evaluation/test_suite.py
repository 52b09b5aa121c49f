"""evaluate_synset pieces: baseline choice, the recipe entry of the report, the full-split reference."""

from __future__ import annotations

import pytest
import torch

from ddlight.evaluation import baseline_indices, full_recipe, protocol_recipe, resolve_recipe
from ddlight.recipe import TrainRecipe


def test_baseline_indices() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    assert labels[baseline_indices("random", labels, 2, None)].tolist() == [0, 0, 1, 1]
    embeddings = torch.tensor([[0.0], [1.0], [5.0], [0.0], [1.0], [5.0]])
    assert baseline_indices("kcenter", labels, 2, embeddings).tolist() == [1, 2, 4, 5]
    with pytest.raises(ValueError, match="needs embeddings"):
        baseline_indices("herding", labels, 2, None)
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_indices("forgetting", labels, 2, embeddings)


def test_the_report_records_the_recipe_with_the_resolved_lr() -> None:
    recipe = TrainRecipe(epochs=20, batch_size=32, seed=4)
    assert resolve_recipe(recipe, {"syn_lr": 0.02}) == TrainRecipe(epochs=20, lr=0.02, batch_size=32, seed=4)
    assert protocol_recipe(recipe, {"syn_lr": 0.02}, repeats=3, full_epochs=5) == {
        "lr": 0.02, "lr_requested": "auto", "epochs": 20, "batch_size": 32, "augment": True, "repeats": 3,
        "seed": 4, "full_epochs": 5, "full_repeats": 3, "optimizer": "sgd", "momentum": 0.9,
        "weight_decay": 5e-4, "lr_schedule": "step", "precision": "32-true",
    }


def test_full_recipe() -> None:
    recipe = TrainRecipe(epochs=20, lr=0.1)
    assert full_recipe(recipe, 5, None, None) == (recipe, 5)
    assert full_recipe(recipe, 5, 7, 1) == (TrainRecipe(epochs=7, lr=0.1), 1)
    with pytest.raises(ValueError, match="full_epochs must be >= 1 or None, got 0"):
        full_recipe(recipe, 5, 0, None)
