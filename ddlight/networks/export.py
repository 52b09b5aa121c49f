"""Save a trained network as one self-describing safetensors file, and build it back.

The file holds the network's ``state_dict`` (parameters *and* buffers such as batch-norm running
statistics) under ``network.<name>``, optional extra tensors under ``extra.<name>`` (e.g. the feature
normalisation it was trained with), and in its metadata the JSON of everything needed to rebuild it:
the registry name, its options, ``in_shape``, ``num_classes`` and free-form information. No pickle is
involved, so a file from anywhere is safe to load.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from ddlight.io import save_tensors
from ddlight.networks import AudioNetwork, build_network

#: Format tag written into every exported network.
FORMAT = "ddlight-network-1"


def save_network(
    path: str | Path,
    network: AudioNetwork,
    name: str,
    options: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
    extras: Mapping[str, Tensor] | None = None,
) -> Path:
    """Write ``network`` atomically to ``path`` (a ``.safetensors`` file).

    Args:
        path: Destination file.
        network: A network of :data:`ddlight.networks.NETWORKS`.
        name: Its registry name (what :func:`~ddlight.networks.build_network` takes).
        options: The options it was built with.
        info: JSON-serialisable information kept in the metadata (data description, accuracy, ...).
        extras: Additional tensors stored next to the weights.

    Returns:
        The destination path.
    """
    tensors = {f"network.{k}": v for k, v in network.state_dict().items()}
    tensors.update({f"extra.{k}": v for k, v in (extras or {}).items()})
    header = {
        "format": FORMAT,
        "network": name,
        "network_options": dict(options or {}),
        "in_shape": list(network.in_shape),
        "num_classes": network.num_classes,
        "info": dict(info or {}),
    }
    return save_tensors(path, tensors, metadata={"ddlight": json.dumps(header)})


def load_network(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[AudioNetwork, dict[str, Any], dict[str, Tensor]]:
    """Rebuild a network written by :func:`save_network`, in eval mode.

    Args:
        path: The ``.safetensors`` file.
        device: Where to put the network and the extra tensors.

    Returns:
        The network, its header (``network``, ``network_options``, ``in_shape``, ``num_classes``,
        ``info``) and the extra tensors.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If ``path`` is not a network exported by ddlight.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"network file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for malformed files
        raise ValueError(f"{path} is not a safetensors file ({err})") from err
    header = json.loads(metadata.get("ddlight", "{}"))
    if header.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a network exported by ddlight (format {header.get('format')!r}, expected "
            f"{FORMAT!r}); export one with the NetworkExport callback (callbacks/network_export.yaml)"
        )
    network = build_network(header["network"], header["in_shape"], header["num_classes"], **header["network_options"])
    state = {k.removeprefix("network."): v for k, v in tensors.items() if k.startswith("network.")}
    network.load_state_dict(state)
    extras = {k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")}
    return network.to(device).eval(), header, extras
