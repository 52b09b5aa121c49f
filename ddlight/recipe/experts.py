"""Networks rebuilt from recorded expert trajectories (``experts/<dataset>/``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ddlight.io import load_trajectories
from ddlight.networks import AudioNetwork, build_network


def build_expert_network(manifest: dict[str, Any]) -> AudioNetwork:
    """A fresh network of the architecture a trajectory manifest records (``network``, ``network_options``,
    ``in_shape``, ``num_classes``)."""
    options = manifest.get("network_options") or {}
    return build_network(manifest["network"], manifest["in_shape"], manifest["num_classes"], **options)


def final_expert_networks(
    expert_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, Any], list[AudioNetwork]]:
    """Every expert of ``expert_dir`` at its last snapshot, in the manifest's order, in eval mode.

    Only parameters are recorded, so buffers (batch-norm running statistics) keep their initial values.

    Args:
        expert_dir: Folder of trajectories (``manifest.json`` + ``expert_*.safetensors``).
        device: Where to put the networks.

    Returns:
        The trajectory manifest and one network per expert.

    Raises:
        FileNotFoundError: If the folder holds no trajectories.
        ValueError: If a trajectory does not hold the parameters of the recorded architecture
            (:func:`~ddlight.io.load_trajectories` checks them).
    """
    manifest, experts = load_trajectories(expert_dir, device)
    networks = []
    for trajectory in experts:
        network = build_expert_network(manifest).to(device)
        network.load_state_dict({name: snapshots[-1] for name, snapshots in trajectory.items()}, strict=False)
        networks.append(network.eval())
    return manifest, networks
