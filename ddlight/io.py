"""Safe file writing and the on-disk formats shared across ddlight (trajectories, tensors, JSON).

Everything is written to a temporary file in the destination folder and renamed into place, so an
interrupted run never leaves a half-written file where a complete one is expected. Tensors are stored
as safetensors (no pickle, safe to load from untrusted sources). Reading checks what it reads: a
truncated or foreign tensor file, an expert folder whose manifest misses keys, whose trajectories do not
fit the network the manifest describes or hold NaN, and a distilled set whose manifest disagrees with
its tensors are refused with an error naming the file and what to do.
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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

MANIFEST = "manifest.json"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The parent folders are created. On any error the temporary file is deleted and ``path`` is left
    untouched. The file gets the permissions a plain ``open`` would give it (``0o666`` less the umask,
    e.g. readable by the group), not the ``0o600`` of a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask (reading it means setting it: it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


def _json_text(path: Path, data: Any) -> str:
    """``data`` as indented JSON text for ``path``.

    Raises:
        TypeError: ``data`` holds something JSON cannot store (naming ``path``).
    """
    try:
        return json.dumps(data, indent=2, sort_keys=False) + "\n"
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"cannot write {path}: {err}; store numbers, strings, lists and dicts only (e.g. tensor.tolist())"
        ) from err


def save_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically (nothing is written if it cannot be serialised)."""
    text = _json_text(Path(path), data)
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def load_json(path: str | Path) -> Any:
    """Read a JSON file, naming the file in the error if it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete or regenerate it") from err


def save_tensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write a dict of tensors as safetensors, atomically (tensors are made contiguous on the CPU)."""
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Read a safetensors file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is truncated or not a safetensors file (naming it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as err:
        raise ValueError(
            f"{path} is truncated or not a safetensors file ({err}); restore it, or delete it and run again "
            "the command that wrote it"
        ) from err


# ------------------------------------------------------------------------------------------ experts
#: Manifest keys of an expert folder: the network the trajectories belong to, and the trajectory files.
EXPERT_KEYS = ("network", "in_shape", "num_classes", "experts")
_RECORD_AGAIN = "record experts again with `ddlight fit --config configs/expert_<dataset>.yaml` into an empty folder"


def load_trajectories(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, Any], list[dict[str, Tensor]]]:
    """Load the expert trajectories written by :class:`~ddlight.callbacks.TrajectoryRecorder`.

    Every trajectory is checked against the network its manifest describes (parameter names and
    shapes), against the manifest's snapshot count, and for NaN or infinite values.

    Args:
        directory: Folder holding ``manifest.json`` and ``expert_*.safetensors``.
        device: Where to put the tensors.

    Returns:
        The manifest and, per expert, a dict ``parameter name -> [epochs + 1, *shape]``.

    Raises:
        FileNotFoundError: If the folder, its manifest or a listed expert file is missing, with the
            command that creates them.
        ValueError: If the manifest lacks keys, or an expert file is truncated, not safetensors, does not
            fit the manifest's network or holds NaN/inf (naming the file).
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
    _check_expert_manifest(manifest_path, manifest)
    shapes = _network_shapes(manifest_path, manifest)
    experts = [_load_expert(directory, entry, shapes, device) for entry in manifest["experts"]]
    return manifest, experts


def _check_expert_manifest(path: Path, manifest: Any) -> None:
    """Raise unless ``manifest`` has :data:`EXPERT_KEYS` and names a file for each of its experts."""
    missing = [key for key in EXPERT_KEYS if not isinstance(manifest, dict) or key not in manifest]
    if missing:
        raise ValueError(f"{path} lacks {missing}, so it is not a complete expert manifest; {_RECORD_AGAIN}")
    entries = manifest["experts"]
    if not isinstance(entries, list) or not entries:
        raise FileNotFoundError(f"{path} lists no experts; record some with the expert config")
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise ValueError(f"{path}: experts entry {k} names no file ({entry!r}); {_RECORD_AGAIN}")


def _network_shapes(path: Path, manifest: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the network ``manifest`` describes, built aside (the global RNG is untouched).

    Raises:
        ValueError: The manifest describes no network that can be built (naming ``path``).
    """
    from ddlight.networks import build_network  # not at the top: ddlight.networks.export imports this module

    options = manifest.get("network_options") or {}
    try:
        with torch.random.fork_rng(devices=[]):
            network = build_network(manifest["network"], manifest["in_shape"], manifest["num_classes"], **options)
    except (ValueError, TypeError, KeyError, RuntimeError) as err:
        raise ValueError(f"{path} describes no network that can be built ({err}); {_RECORD_AGAIN}") from err
    return {name: tuple(p.shape) for name, p in network.named_parameters()}


def _load_expert(
    directory: Path, entry: dict[str, Any], shapes: dict[str, tuple[int, ...]], device: str | torch.device
) -> dict[str, Tensor]:
    """One expert's trajectories, checked (see :func:`_check_trajectory`)."""
    path = directory / entry["file"]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is listed in {directory / MANIFEST} but missing; restore it, or {_RECORD_AGAIN}"
        )
    trajectory = load_tensors(path, device)
    _check_trajectory(path, trajectory, shapes, entry.get("snapshots"))
    return trajectory


def _check_trajectory(
    path: Path, trajectory: dict[str, Tensor], shapes: dict[str, tuple[int, ...]], snapshots: int | None
) -> None:
    """Raise unless ``trajectory`` holds ``[S, *shape]`` for exactly the parameters ``shapes``, all finite.

    Args:
        path: The expert file (named in messages).
        trajectory: Parameter name → snapshots.
        shapes: Parameter name → shape, of the network the manifest describes.
        snapshots: Snapshot count the manifest records (``None``: not recorded).

    Raises:
        ValueError: Naming the file, the parameter and what is wrong.
    """
    if set(trajectory) != set(shapes):
        raise ValueError(
            f"{path} does not hold the parameters of the network its manifest describes (missing "
            f"{sorted(set(shapes) - set(trajectory))}, unexpected {sorted(set(trajectory) - set(shapes))}); "
            f"the manifest or the file was changed: {_RECORD_AGAIN}"
        )
    for name, snaps in trajectory.items():
        if snaps.dim() == 0 or tuple(snaps.shape[1:]) != shapes[name]:
            raise ValueError(
                f"{path}: parameter {name!r} has snapshots of shape {tuple(snaps.shape[1:])}, but the network its "
                f"manifest describes has {shapes[name]}; the manifest or the file was changed: {_RECORD_AGAIN}"
            )
    lengths = sorted({len(snaps) for snaps in trajectory.values()})
    if len(lengths) > 1 or (snapshots is not None and lengths != [snapshots]):
        raise ValueError(
            f"{path} holds {lengths} snapshots per parameter but its manifest entry says {snapshots}; the file is "
            f"incomplete or was changed: {_RECORD_AGAIN}"
        )
    for name, snaps in trajectory.items():
        finite = torch.isfinite(snaps.reshape(len(snaps), -1)).all(dim=1)
        if not bool(finite.all()):
            first = int((~finite).nonzero()[0])
            raise ValueError(
                f"{path}: parameter {name!r} is NaN or infinite at snapshot {first} of {len(snaps)} (the expert "
                f"diverged); delete {path.name} and its entry in {MANIFEST}, or {_RECORD_AGAIN} with a lower "
                "learning rate"
            )


# ------------------------------------------------------------------------------------------ synsets
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


def synset_problems(synset: Synset) -> list[str]:
    """What in ``synset`` disagrees: tensor shapes with each other, the manifest with the tensors.

    Checked: features ``[N, C, F, T]``; targets ``[N]`` (integer labels) or ``[N, K]``; ``mean``/``std``
    broadcast to ``[C, F, T]``; and where the manifest records them, ``feature_shape``, ``classes`` /
    ``num_classes`` (the labels' range or the soft labels' width) and ``ipc`` (``N = ipc × classes``, and
    ``ipc`` hard labels per class).

    Returns:
        One line per problem; empty when the set is consistent.
    """
    features = synset.features
    if features.dim() != 4:
        return [f"features have shape {tuple(features.shape)}, not [N, C, F, T]"]
    problems = []
    if synset.targets.dim() not in (1, 2) or len(synset.targets) != len(features):
        problems.append(f"targets {tuple(synset.targets.shape)} do not fit {len(features)} samples")
    recorded = synset.manifest.get("feature_shape")
    if recorded is not None and list(recorded) != list(features.shape[1:]):
        problems.append(f"manifest feature_shape {list(recorded)} but features {list(features.shape[1:])}")
    for name, stat in (("mean", synset.mean), ("std", synset.std)):
        if not _broadcasts(stat.shape, features.shape[1:]):
            problems.append(f"{name} {tuple(stat.shape)} does not fit features {tuple(features.shape[1:])}")
    return problems or _label_problems(synset)


def _broadcasts(shape: torch.Size, target: torch.Size) -> bool:
    """Whether a tensor of ``shape`` broadcasts to exactly ``target``."""
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def _label_problems(synset: Synset) -> list[str]:
    """Disagreements of the targets with the manifest's ``classes``/``num_classes`` and ``ipc``."""
    manifest, targets = synset.manifest, synset.targets
    classes, num_classes = manifest.get("classes"), manifest.get("num_classes")
    if classes is not None and num_classes is not None and len(classes) != num_classes:
        return [f"manifest lists {len(classes)} classes but num_classes {num_classes}"]
    k = len(classes) if classes is not None else num_classes
    if k is None:
        return []
    if targets.dim() == 2 and targets.shape[1] != k:
        return [f"soft labels over {targets.shape[1]} classes but the manifest has {k}"]
    if targets.dim() == 1 and not _labels_in_range(targets, k):
        return [f"hard labels must be integers in 0..{k - 1}, got {targets.dtype} {sorted(set(targets.tolist()))}"]
    ipc = manifest.get("ipc")
    if ipc is None:
        return []
    if len(synset.features) != ipc * k:
        return [f"{len(synset.features)} samples but the manifest's ipc {ipc} × {k} classes = {ipc * k}"]
    counts = torch.bincount(targets, minlength=k).tolist() if targets.dim() == 1 else [ipc] * k
    if counts != [ipc] * k:
        return [f"labels give {counts} samples per class but the manifest's ipc is {ipc}"]
    return []


def _labels_in_range(labels: Tensor, num_classes: int) -> bool:
    """Whether ``labels`` are integers in ``0..num_classes-1``."""
    if labels.is_floating_point():
        return False
    return len(labels) == 0 or 0 <= int(labels.min()) <= int(labels.max()) < num_classes


def save_synset(directory: str | Path, synset: Synset) -> Path:
    """Write ``synset.safetensors`` and ``manifest.json`` into ``directory`` (atomically, each).

    Nothing is written (a set already there stays intact) if the set is inconsistent
    (:func:`synset_problems`) or its manifest cannot be stored as JSON.

    Raises:
        ValueError: The set is inconsistent.
        TypeError: The manifest holds something JSON cannot store.
    """
    directory = Path(directory)
    problems = synset_problems(synset)
    if problems:
        raise ValueError(
            f"refusing to write an inconsistent distilled set to {directory} ({'; '.join(problems)}); "
            "nothing was written"
        )
    text = _json_text(directory / MANIFEST, synset.manifest)
    tensors = {"features": synset.features, "targets": synset.targets, "mean": synset.mean, "std": synset.std}
    save_tensors(directory / SYNSET_FILE, tensors, metadata={"format": "ddlight-synset-1"})
    atomic_write(directory / MANIFEST, lambda tmp: tmp.write_text(text))
    return directory


def load_synset(directory: str | Path) -> Synset:
    """Read a distilled set written by :func:`save_synset` (no pickle: safetensors + JSON).

    Raises:
        FileNotFoundError: If ``directory`` lacks the synset or its manifest.
        ValueError: If a file is truncated or not of its format, or the tensors disagree with each other
            or with the manifest (:func:`synset_problems`).
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
    if not isinstance(manifest, dict):
        raise ValueError(
            f"{directory / MANIFEST} is not a distilled-set manifest (a JSON object); restore it or distil again"
        )
    missing = {"features", "targets", "mean", "std"} - set(tensors)
    if missing:
        raise ValueError(f"{directory / SYNSET_FILE} lacks tensors {sorted(missing)}; restore it or distil again")
    synset = Synset(tensors["features"], tensors["targets"], tensors["mean"], tensors["std"], manifest)
    problems = synset_problems(synset)
    if problems:
        raise ValueError(
            f"{directory} holds an inconsistent distilled set ({'; '.join(problems)}): {SYNSET_FILE} and "
            f"{MANIFEST} were changed or mixed up after they were written; restore them or distil the set again"
        )
    return synset
