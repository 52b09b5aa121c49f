"""Safe file writing and the on-disk formats shared across ddlight (trajectories, tensors, JSON).

Everything is written to a temporary file in the destination folder and renamed into place, so an
interrupted run never leaves a half-written file where a complete one is expected. Tensors are stored
as safetensors (no pickle, safe to load from untrusted sources).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

MANIFEST = "manifest.json"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The parent folders are created. On any error the temporary file is deleted and ``path`` is left
    untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path`` atomically (see :func:`atomic_path`).

    Args:
        path: Final destination; its parent folders are created.
        write: Function that writes the complete file to the temporary path it is given.

    Returns:
        The destination path.
    """
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def save_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def load_json(path: str | Path) -> Any:
    """Read a JSON file, naming the file in the error if it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete or regenerate it") from err


def save_tensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write a dict of tensors as safetensors, atomically (tensors are made contiguous on the CPU)."""
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Read a safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return load_file(str(path), device=str(device))


def load_trajectories(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, Any], list[dict[str, Tensor]]]:
    """Load the expert trajectories written by :class:`~ddlight.callbacks.TrajectoryRecorder`.

    Args:
        directory: Folder holding ``manifest.json`` and ``expert_*.safetensors``.
        device: Where to put the tensors.

    Returns:
        The manifest and, per expert, a dict ``parameter name -> [epochs + 1, *shape]``.

    Raises:
        FileNotFoundError: If the folder or its manifest is missing, with the command that creates it.
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"no expert trajectories in {directory} (missing {MANIFEST}). Record them first with "
            f"`ddlight fit --config configs/expert_<dataset>.yaml` (it writes experts/<dataset>/), "
            f"or point expert_dir at the folder that holds them."
        )
    manifest = load_json(manifest_path)
    experts = [load_tensors(directory / e["file"], device) for e in manifest["experts"]]
    if not experts:
        raise FileNotFoundError(f"{manifest_path} lists no experts; record some with the expert config")
    return manifest, experts


SYNSET_FILE = "synset.safetensors"


@dataclass
class Synset:
    """A distilled set loaded from disk.

    Attributes:
        features: Synthetic features ``[N, C, F, T]`` in the normalised feature space.
        targets: Hard labels ``[N]`` (int64) or soft label distributions ``[N, K]`` (float).
        mean: Feature normalisation mean ``[C, F, 1]`` of the source data.
        std: Feature normalisation std ``[C, F, 1]``.
        manifest: Everything else (classes, feature config, ipc, method, ...).
    """

    features: Tensor
    targets: Tensor
    mean: Tensor
    std: Tensor
    manifest: dict[str, Any]

    @property
    def labels(self) -> Tensor:
        """Hard labels ``[N]`` (argmax of soft targets)."""
        return self.targets if self.targets.dim() == 1 else self.targets.argmax(-1)


def save_synset(directory: str | Path, synset: Synset) -> Path:
    """Write ``synset.safetensors`` and ``manifest.json`` into ``directory`` (atomically, each)."""
    directory = Path(directory)
    tensors = {"features": synset.features, "targets": synset.targets, "mean": synset.mean, "std": synset.std}
    save_tensors(directory / SYNSET_FILE, tensors, metadata={"format": "ddlight-synset-1"})
    save_json(directory / MANIFEST, synset.manifest)
    return directory


def load_synset(directory: str | Path) -> Synset:
    """Read a distilled set written by :func:`save_synset` (no pickle: safetensors + JSON).

    Raises:
        FileNotFoundError: If ``directory`` lacks the synset or its manifest.
        ValueError: If the tensors disagree with the manifest.
    """
    directory = Path(directory)
    for name in (SYNSET_FILE, MANIFEST):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"{directory / name} not found: a distilled set folder holds {SYNSET_FILE} and {MANIFEST} "
                f"(written to <run dir>/distilled/ by every distillation run)"
            )
    tensors = load_tensors(directory / SYNSET_FILE)
    manifest = load_json(directory / MANIFEST)
    missing = {"features", "targets", "mean", "std"} - set(tensors)
    if missing:
        raise ValueError(f"{directory / SYNSET_FILE} lacks tensors {sorted(missing)}")
    synset = Synset(tensors["features"], tensors["targets"], tensors["mean"], tensors["std"], manifest)
    expected = tuple(manifest.get("feature_shape", synset.features.shape[1:]))
    if tuple(synset.features.shape[1:]) != expected or len(synset.features) != len(synset.targets):
        raise ValueError(
            f"{directory}: features {tuple(synset.features.shape)} and targets {tuple(synset.targets.shape)} "
            f"do not match the manifest's feature_shape {expected}"
        )
    return synset
