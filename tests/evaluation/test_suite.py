"""evaluate_synset pieces: the final expert as embedding network, baseline choice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddlight.evaluation import baseline_indices, expert_network
from ddlight.io import save_json, save_tensors
from ddlight.networks import build_network


def test_expert_network_takes_the_last_snapshot(tmp_path: Path) -> None:
    torch.manual_seed(0)
    start, end = (build_network("convnet", (1, 8, 8), 3, width=4, depth=1) for _ in range(2))
    trajectory = {n: torch.stack([p0.detach(), p1.detach()]) for (n, p0), (_, p1) in
                  zip(start.named_parameters(), end.named_parameters())}
    save_tensors(tmp_path / "expert_000.safetensors", trajectory)
    save_json(tmp_path / "manifest.json", {"network": "convnet", "network_options": {"width": 4, "depth": 1},
                                           "in_shape": [1, 8, 8], "num_classes": 3,
                                           "experts": [{"file": "expert_000.safetensors"}]})
    network = expert_network(tmp_path)
    x = torch.randn(5, 1, 8, 8)
    assert torch.allclose(network.embed(x), end.eval().embed(x))


def test_baseline_indices() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    assert labels[baseline_indices("random", labels, 2, None)].tolist() == [0, 0, 1, 1]
    embeddings = torch.tensor([[0.0], [1.0], [5.0], [0.0], [1.0], [5.0]])
    assert baseline_indices("kcenter", labels, 2, embeddings).tolist() == [1, 2, 4, 5]
    with pytest.raises(ValueError, match="needs embeddings"):
        baseline_indices("herding", labels, 2, None)
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_indices("forgetting", labels, 2, embeddings)
