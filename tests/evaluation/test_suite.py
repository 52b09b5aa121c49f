"""evaluate_synset pieces: baseline choice, the recipe entry of the report, the full-split reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddlight.evaluation import baseline_indices, full_recipe, protocol_recipe, resolve_recipe
from ddlight.evaluation.suite import evaluate_synset
from ddlight.io import save_json, save_tensors
from ddlight.networks import build_network
from ddlight.recipe import TrainRecipe, accuracy


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
        "weight_decay": 5e-4, "lr_schedule": "step",
    }


def test_full_recipe() -> None:
    recipe = TrainRecipe(epochs=20, lr=0.1)
    assert full_recipe(recipe, 5, None, None) == (recipe, 5)
    assert full_recipe(recipe, 5, 7, 1) == (TrainRecipe(epochs=7, lr=0.1), 1)
    with pytest.raises(ValueError, match="full_epochs must be >= 1 or None, got 0"):
        full_recipe(recipe, 5, 0, None)


def test_full_reference_from_the_experts(tmp_path: Path) -> None:
    """``full: experts`` scores the final experts (no training) for their architecture, and gives g."""
    torch.manual_seed(0)
    shape, options = (1, 8, 8), {"width": 4, "depth": 1}
    experts = [build_network("convnet", shape, 2, **options) for _ in range(2)]
    manifest = {"network": "convnet", "network_options": options, "in_shape": list(shape), "num_classes": 2,
                "every_n_epochs": 1, "experts": []}
    for i, network in enumerate(experts):
        save_tensors(tmp_path / f"expert_{i}.safetensors", {n: torch.stack([p.detach()] * 4) for n, p in network.named_parameters()})
        manifest["experts"].append({"file": f"expert_{i}.safetensors", "snapshots": 4})
    save_json(tmp_path / "manifest.json", manifest)
    x, y = torch.randn(12, *shape), torch.arange(2).repeat(6)
    recipe = TrainRecipe(epochs=1, lr=0.01, augment=False)
    rows = evaluate_synset(x[:2], y[:2], x, y, x, y, 1, recipe, architectures=["convnet", "mlp"], baselines=["random"],
                           repeats=1, network_options={"convnet": options}, expert_dir=tmp_path, full="experts")
    convnet, mlp = rows
    expected = [accuracy(network, x, y) for network in experts]
    assert convnet["full"]["runs"] == pytest.approx(expected, abs=1e-3) and convnet["full"]["source"] == "experts"
    assert convnet["full"]["epochs"] == 3 and "g" in convnet
    assert "full" not in mlp and "g" not in mlp  # the experts are no reference for another network
    with pytest.raises(ValueError, match="full: experts needs the experts' folder"):
        evaluate_synset(x[:2], y[:2], x, y, x, y, 1, recipe, baselines=["random"], repeats=1, full="experts")
