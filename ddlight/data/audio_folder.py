"""AudioFolder: your own labelled recordings, one sub-folder per class.

On-disk layout::

    root/
      <class_a>/*.wav|flac|ogg|mp3     # any mix of rates, channels and sample formats
      <class_b>/...
      ddlight_split.json                 # written on first use: the split, reused afterwards

Classes are the sorted names of the sub-folders (those starting with ``.`` or ``_`` are ignored).
Split rules: stratified per class, seeded — ``test_fraction`` of each class's files for ``test``,
``val_fraction`` for ``val`` (at least one each), the rest for ``train``. The split is written to
``root/ddlight_split.json`` the first time the data is loaded and read back on every later run, so
it stays fixed across runs (a warning tells when the requested seed or fractions differ from the
stored ones); delete the file to draw a new split.
Files added later are not used until then (a warning says so).

Licence and citation: those of your recordings.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ddlight.data.base import SPLITS
from ddlight.data.files import FileAudioDataModule, FileList
from ddlight.features import FeatureConfig
from ddlight.io import atomic_path, load_json

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
SPLIT_FILE = "ddlight_split.json"


def _is_split_record(stored: Any) -> bool:
    """Whether ``stored`` has the layout :meth:`AudioFolder.file_lists` writes to :data:`SPLIT_FILE`."""
    if not isinstance(stored, dict) or not {"classes", "settings", "splits"} <= set(stored):
        return False
    splits = stored["splits"]
    return isinstance(splits, dict) and set(splits) == set(SPLITS) and all(isinstance(v, list) for v in splits.values())


class AudioFolder(FileAudioDataModule):
    """User data laid out as ``root/<class>/<file>``, with a stratified split stored next to it.

    Args:
        root: Folder with one sub-folder of audio files per class.
        val_fraction: Fraction of each class's files used for validation.
        test_fraction: Fraction of each class's files used for testing.
        sample_rate: Target sampling rate in Hz.
        duration: Clip length in seconds; clips are cropped from the start or zero-padded.
        features: Feature front end applied on the device.
        batch_size: Batch size of all loaders.
        num_workers: DataLoader worker processes for splits served as waveforms (a cached split needs none).
        seed: Seed of the split drawn on first use.
        cache_dir: Folder of the decoded-split cache (default ``<root>/.ddlight_cache``).
        skip_bad_files: Skip undecodable files with a warning instead of failing.
        cache_features: Compute each split's features once and serve them every epoch (see
            :class:`~ddlight.data.base.AudioDataModule`); off: the front end runs on every batch.
    """

    def __init__(
        self,
        root: str,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        sample_rate: int = 16000,
        duration: float = 1.0,
        features: FeatureConfig | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        skip_bad_files: bool = False,
        cache_features: bool = True,
    ) -> None:
        super().__init__(
            root, sample_rate, duration, features, batch_size, num_workers, seed,
            cache_dir=cache_dir, skip_bad_files=skip_bad_files, cache_features=cache_features,
        )
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"val_fraction and test_fraction must be in (0, 1) with a sum below 1, got {val_fraction}, "
                f"{test_fraction}"
            )
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self._check_root()
        self.classes = sorted(p.name for p in self._class_dirs())
        self.name = re.sub(r"[^a-z0-9]+", "_", self.root.resolve().name.lower()).strip("_") or "audio_folder"

    @property
    def split_file(self) -> Path:
        """Where the split is stored."""
        return self.root / SPLIT_FILE

    def _class_dirs(self) -> list[Path]:
        return [p for p in self.root.iterdir() if p.is_dir() and p.name[0] not in "._"]

    def _check_root(self) -> None:
        if not self.root.is_dir() or len(self._class_dirs()) < 2:
            raise FileNotFoundError(
                f"{self.root} does not hold an audio folder; expected the layout <root>/<class>/<file> with "
                f"at least two class sub-folders of {'/'.join(AUDIO_EXTENSIONS)} files"
            )

    def _audio_files(self) -> list[str]:
        """Paths of every audio file, relative to ``root`` (``<class>/<file>``), sorted."""
        return sorted(
            f"{name}/{path.name}"
            for name in self.classes
            for path in (self.root / name).iterdir()
            if path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file()
        )

    def _draw_split(self, files: list[str]) -> dict[str, list[str]]:
        """Stratified seeded split of ``files`` (relative paths)."""
        rng = np.random.default_rng(self.seed)
        split: dict[str, list[str]] = {name: [] for name in SPLITS}
        for name in self.classes:
            members = [f for f in files if f.split("/", 1)[0] == name]
            num_test = max(1, round(self.test_fraction * len(members)))
            num_val = max(1, round(self.val_fraction * len(members)))
            if len(members) < num_test + num_val + 1:
                raise ValueError(
                    f"class {name!r} has {len(members)} audio files in {self.root / name}; with "
                    f"val_fraction={self.val_fraction} and test_fraction={self.test_fraction} it needs at least "
                    f"{num_test + num_val + 1} (one each for train, val and test)"
                )
            order = [members[i] for i in rng.permutation(len(members))]
            split["test"] += order[:num_test]
            split["val"] += order[num_test : num_test + num_val]
            split["train"] += order[num_test + num_val :]
        return {name: sorted(members) for name, members in split.items()}

    def _settings(self) -> dict[str, Any]:
        return {"seed": self.seed, "val_fraction": self.val_fraction, "test_fraction": self.test_fraction}

    def _stored_split(self, files: list[str]) -> dict[str, list[str]]:
        """The split read from :attr:`split_file`, checked against the current class folders.

        Raises:
            ValueError: The file is not a split record, or the class folders changed since it was drawn.
        """
        stored = load_json(self.split_file)
        if not _is_split_record(stored):
            raise ValueError(
                f"{self.split_file} is not a ddlight split record (expected the keys classes, settings and splits, "
                f"the latter with {list(SPLITS)}); delete it to draw a new split"
            )
        if stored["classes"] != self.classes:
            raise ValueError(
                f"{self.split_file} was drawn for the classes {stored['classes']}, but {self.root} now holds "
                f"{self.classes}; delete {self.split_file} to draw a new split"
            )
        if stored["settings"] != self._settings():
            warnings.warn(
                f"using the split stored in {self.split_file}, drawn with {stored['settings']} (not the "
                f"requested {self._settings()}); delete that file to draw a new one",
                stacklevel=2,
            )
        unused = sorted(set(files) - {f for members in stored["splits"].values() for f in members})
        if unused:
            warnings.warn(
                f"{len(unused)} audio files (e.g. {unused[0]}) are newer than {self.split_file} and unused; "
                "delete that file to include them in a new split",
                stacklevel=2,
            )
        return stored["splits"]

    def file_lists(self) -> dict[str, FileList]:
        files = self._audio_files()
        if self.split_file.is_file():
            split = self._stored_split(files)
        else:
            split = self._draw_split(files)
            record = {"classes": self.classes, "settings": self._settings(), "splits": split}
            with atomic_path(self.split_file) as tmp:
                tmp.write_text(json.dumps(record, indent=1))
        index = {name: label for label, name in enumerate(self.classes)}
        return {
            name: [(self.root / f, index[f.split("/", 1)[0]]) for f in members] for name, members in split.items()
        }
