"""DataModules over audio files on disk: listing, decoding once, and a memory-mapped cache.

A :class:`FileAudioDataModule` subclass only says *which* files make up each split
(:meth:`~FileAudioDataModule.file_lists`) and what its on-disk layout looks like
(:meth:`~FileAudioDataModule._check_root`). This module does the rest: every file is decoded once (a
thread pool, a progress bar), resampled and cut to the clip length, and each split is stored as one
float32 ``.npy`` array in a cache folder, keyed by a hash of the file list (paths, sizes, modification
times, labels), the sample rate and the clip length, next to a ``.labels.npy`` array and a ``.json``
record (row count, clip length, files skipped as undecodable). Later runs memory-map that array and
decode nothing; change any key part and the split is rebuilt. Cache files are written to a temporary
name and renamed into place (the record last), so an error never leaves a half-written cache behind; a
cache file damaged later (truncated, another shape) is reported and rebuilt. A cache built under
``skip_bad_files`` is reused only under ``skip_bad_files`` (warning again about every skipped file);
without it the split is decoded again, which names the bad files.

Shared helpers for the dataset modules live here too: :func:`read_csv` (metadata with required
columns) and :func:`fold_splits` / :func:`check_disjoint` (predefined folds, never reshuffled).
"""

from __future__ import annotations

from abc import abstractmethod
import csv
import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tqdm.auto import tqdm

from ddlight.data.audio_io import AudioDecodeError, load_audio
from ddlight.data.base import SPLITS, AudioDataModule, WaveformSet
from ddlight.data.download import DownloadInfo, download_and_extract
from ddlight.features import FeatureConfig
from ddlight.io import atomic_path, load_json, save_json

#: ``(path, label)`` pairs of one split.
FileList = list[tuple[Path, int]]

_DECODE_THREADS = min(8, os.cpu_count() or 1)


# ------------------------------------------------------------------------------------------ helpers
def read_csv(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a metadata CSV, after checking that it exists and has the required columns.

    A UTF-8 byte-order mark (as spreadsheet programs write it) is read as such, not as part of the first
    column's name.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: A required column is missing.
    """
    if not path.is_file():
        raise FileNotFoundError(f"metadata file {path} not found")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path} lacks the columns {missing}; expected at least {list(columns)}: download the metadata again"
            )
        return list(reader)


def check_disjoint(groups: dict[str, set[Any]], what: str = "folds") -> None:
    """Raise if any two groups (e.g. the folds of train, val and test) share a member.

    Raises:
        ValueError: Naming the shared members and the two groups.
    """
    for (a, members_a), (b, members_b) in combinations(groups.items(), 2):
        shared = members_a & members_b
        if shared:
            raise ValueError(
                f"{what} {sorted(shared)[:10]} are in both {a} and {b}; splits must not overlap: remove them from one"
            )


def fold_splits(folds: Iterable[int], test_fold: int, val_fold: int) -> dict[str, set[int]]:
    """Assign predefined folds to splits: one test fold, one validation fold, the rest for training.

    Raises:
        ValueError: A fold does not exist, or ``val_fold`` equals ``test_fold``.
    """
    folds = set(folds)
    for arg, fold in (("test_fold", test_fold), ("val_fold", val_fold)):
        if fold not in folds:
            raise ValueError(f"{arg}={fold} is not a fold of this dataset; choose from {sorted(folds)}")
    if test_fold == val_fold:
        raise ValueError(f"val_fold and test_fold must differ, both are {test_fold}; choose another val_fold")
    splits = {"train": folds - {test_fold, val_fold}, "val": {val_fold}, "test": {test_fold}}
    check_disjoint(splits)
    return splits


def csv_int(metadata: Path, line: int, column: str, value: str | None) -> int:
    """The ``column`` entry ``value`` on ``line`` of ``metadata``, as an integer.

    Raises:
        ValueError: Naming the file, line, column and value.
    """
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(
            f"{metadata}, line {line}: {column} is {value!r}, not an integer; fix that line or download the "
            "metadata again"
        ) from None


def _check_listed_once(metadata: Path, line: int, name: str, first_line: dict[str, int]) -> None:
    """Record that ``name`` is on ``line``; raise if an earlier line listed it already."""
    if name in first_line:
        raise ValueError(
            f"{metadata}, line {line}: {name} is listed again (first on line {first_line[name]}); remove the "
            "duplicate line: each clip belongs to exactly one fold and is used once"
        )
    first_line[name] = line


def folded_rows(
    metadata: Path, columns: Sequence[str], classes: Sequence[str], folds: dict[str, set[int]]
) -> Iterator[tuple[dict[str, str], str, int]]:
    """Rows of a metadata CSV with predefined folds, each with its split and label.

    Args:
        metadata: CSV file.
        columns: Names of the file, fold, label and class-name columns, in that order.
        classes: Class names, index = label; each row's class name must match its label.
        folds: Split name → folds, as returned by :func:`fold_splits`.

    Raises:
        ValueError: A row lists a file an earlier row listed, has a fold or label that is not an integer,
            a fold outside ``folds`` or a label that does not name its class (naming the file and line).
    """
    file_col, fold_col, label_col, class_col = columns
    split_of = {fold: split for split, members in folds.items() for fold in members}
    first_line: dict[str, int] = {}
    for line, row in enumerate(read_csv(metadata, columns), start=2):
        _check_listed_once(metadata, line, row[file_col], first_line)
        fold, label = (csv_int(metadata, line, column, row[column]) for column in (fold_col, label_col))
        if fold not in split_of or not 0 <= label < len(classes) or classes[label] != row[class_col]:
            raise ValueError(
                f"{metadata}, line {line}: unexpected row {row[file_col]} (fold {fold}, label {label}, class "
                f"{row[class_col]!r}); expected folds {sorted(split_of)} and classes {list(enumerate(classes))}: "
                "fix that line or download the metadata again"
            )
        yield row, split_of[fold], label


def _labels_path(waves_path: Path) -> Path:
    """The labels array of the cached split whose waveforms are at ``waves_path``."""
    return waves_path.with_suffix(".labels.npy")


def _record_path(waves_path: Path) -> Path:
    """The record (rows, clip length, skipped files) of the cached split at ``waves_path``; written last."""
    return waves_path.with_suffix(".json")


def _load_npy(path: Path, shape: tuple, dtype: type, mmap: bool) -> np.ndarray:
    """A cached ``.npy`` array, checked to have ``shape`` and ``dtype``.

    Raises:
        ValueError: The file is missing, truncated, damaged or holds another array (naming it).
    """
    try:
        array = np.load(path, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path} is unreadable ({err})") from err
    if array.shape != shape or array.dtype != dtype:
        raise ValueError(f"{path} holds {array.dtype} {array.shape}, expected {np.dtype(dtype)} {shape}")
    return array


def _truncate_npy(path: Path, rows: int) -> None:
    """Rewrite the ``.npy`` array at ``path`` keeping only its first ``rows`` rows."""
    source = np.load(path, mmap_mode="r")
    with atomic_path(path) as tmp:
        target = np.lib.format.open_memmap(tmp, mode="w+", dtype=source.dtype, shape=(rows, *source.shape[1:]))
        for start in range(0, rows, 1024):
            target[start : start + 1024] = source[start : min(rows, start + 1024)]
        target.flush()
        del target
    del source


# ------------------------------------------------------------------------------------ DataModule
class FileAudioDataModule(AudioDataModule):
    """Base of the DataModules that read audio files from ``root``, with a decode-once cache.

    Subclasses set :attr:`classes` in ``__init__`` and implement :meth:`file_lists` and
    :meth:`_check_root`; those that synthesise extra clips (Speech Commands' silence) override
    :meth:`generated_clips` and :meth:`generated_key`.

    Args:
        root: Dataset folder.
        sample_rate: Target sampling rate in Hz; every clip is resampled to it.
        duration: Clip length in seconds; clips are cropped from the start or zero-padded.
        features: Feature front end applied on the device.
        batch_size: Batch size of all loaders.
        num_workers: DataLoader worker processes for splits served as waveforms (a cached split needs none).
        seed: Seed of anything random in loading.
        cache_dir: Folder of the decoded-split cache (default ``<root>/.ddlight_cache``).
        skip_bad_files: Skip (with a warning naming each) files that are missing or cannot be decoded,
            instead of stopping with an error.
        download: Download and unpack the dataset into ``root`` in ``prepare_data()`` if it is not there.
        cache_features: Compute each split's features once and serve them every epoch (see
            :class:`~ddlight.data.base.AudioDataModule`); off: the front end runs on every batch.
    """

    #: Official archive of the dataset (``None``: cannot be downloaded).
    DOWNLOAD_INFO: ClassVar[DownloadInfo | None] = None

    def __init__(
        self,
        root: str,
        sample_rate: int = 16000,
        duration: float = 1.0,
        features: FeatureConfig | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        skip_bad_files: bool = False,
        download: bool = False,
        cache_features: bool = True,
    ) -> None:
        super().__init__(sample_rate, duration, features, batch_size, num_workers, seed, cache_features)
        self.root = Path(root).expanduser()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else self.root / ".ddlight_cache"
        self.skip_bad_files = skip_bad_files
        self.download = download
        self._file_lists: dict[str, FileList] | None = None

    # ------------------------------------------------------------------------------ subclass hooks
    @abstractmethod
    def file_lists(self) -> dict[str, FileList]:
        """``(path, label)`` pairs of each split (``train``, ``val``, ``test``)."""

    @abstractmethod
    def _check_root(self) -> None:
        """Raise :class:`FileNotFoundError` naming the expected layout if ``root`` does not hold it."""

    def generated_clips(self, split: str, labels: np.ndarray) -> WaveformSet | None:
        """Clips synthesised rather than read, appended to ``split`` (none by default).

        Args:
            split: Split name.
            labels: Labels of the split's files (as listed, before any is skipped).
        """
        return None

    def generated_key(self, split: str) -> Any:
        """JSON-able description of :meth:`generated_clips` for the cache key (``None``: none)."""
        return None

    # ------------------------------------------------------------------------------------- loading
    def prepare_data(self) -> None:
        """Download and unpack the dataset if ``download`` is set and ``root`` does not hold it yet."""
        if not self.download:
            return
        try:
            self._check_root()
            return
        except FileNotFoundError:
            pass
        if self.DOWNLOAD_INFO is None:
            raise ValueError(f"{type(self).__name__} has no official download; put the files in {self.root}")
        download_and_extract(self.DOWNLOAD_INFO, self.root)
        self._check_root()

    def _lists(self) -> dict[str, FileList]:
        """The file lists, checked, sorted by path and computed once."""
        if self._file_lists is None:
            self._check_root()
            lists = self.file_lists()
            self._file_lists = {split: sorted(lists.get(split, [])) for split in SPLITS}
            self._check_not_empty(self._file_lists)
        return self._file_lists

    def _check_not_empty(self, lists: dict[str, FileList]) -> None:
        """Raise if a split lists no file (a split rule that matched nothing must not pass silently)."""
        empty = [split for split in SPLITS if not lists[split]]
        if empty:
            raise ValueError(
                f"no file of {self.root} falls into the {' and '.join(empty)} split; check the dataset's "
                f"metadata and split lists against the layout {type(self).__name__} expects (see its docs), or "
                "download the dataset again"
            )

    def load_splits(self) -> dict[str, WaveformSet]:
        return {split: self._load_split(split, files) for split, files in self._lists().items()}

    def _relative(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def _existing(self, files: FileList) -> tuple[FileList, list[tuple[str, int, int, int]]]:
        """Files that exist, with ``(path, size, mtime_ns, label)`` entries for the cache key.

        A missing file is an error, or skipped with a warning under ``skip_bad_files``.
        """
        kept, entries = [], []
        for path, label in files:
            try:
                stat = path.stat()
            except FileNotFoundError:
                error = AudioDecodeError(path, "file not found (listed in the dataset's metadata)")
                if not self.skip_bad_files:
                    raise error from None
                warnings.warn(f"skipping {path}: {error.reason}", stacklevel=3)
                continue
            kept.append((path, label))
            entries.append((self._relative(path), stat.st_size, stat.st_mtime_ns, label))
        return kept, entries

    def _cache_path(self, split: str, entries: list[tuple[str, int, int, int]]) -> Path:
        key = {
            "files": entries,
            "sample_rate": self.sample_rate,
            "num_samples": self.num_samples,
            "generated": self.generated_key(split),
        }
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return self.cache_dir / f"{self.name}_{split}_{digest}.npy"

    def _load_split(self, split: str, files: FileList) -> WaveformSet:
        """One split from the cache, decoding and caching it first if needed (or if the cache is unusable)."""
        files, entries = self._existing(files)
        waves_path = self._cache_path(split, entries)
        cached = self._reused_cache(split, waves_path)
        if cached is not None:
            return cached
        self._build_cache(split, files, waves_path)
        return self._open_cache(waves_path)[0]

    def _reused_cache(self, split: str, waves_path: Path) -> WaveformSet | None:
        """The cached split, or ``None`` when it must be decoded (again).

        ``None`` when there is no complete cache, when a cache file is damaged (with a warning naming it),
        or when the cache lacks files skipped as undecodable and ``skip_bad_files`` is now off. Reused
        under ``skip_bad_files``, a cache warns again about every file it skipped.
        """
        if not _record_path(waves_path).is_file():
            return None
        try:
            data, skipped = self._open_cache(waves_path)
        except ValueError as err:
            warnings.warn(f"the cache of the {split} split is damaged: {err}; decoding the split again", stacklevel=4)
            return None
        if skipped and not self.skip_bad_files:
            return None
        for path, reason in skipped:
            warnings.warn(f"skipping {path}: {reason} (as when the cache was built)", stacklevel=4)
        return data

    def _open_cache(self, waves_path: Path) -> tuple[WaveformSet, list[list[str]]]:
        """The split and its skipped ``[path, reason]`` pairs, from a cache written by :meth:`_build_cache`.

        Raises:
            ValueError: A cache file is missing, truncated, damaged or of another shape (naming it).
        """
        record = load_json(_record_path(waves_path))
        if not isinstance(record, dict):
            raise ValueError(f"{_record_path(waves_path)} is not a cache record")
        rows = (record.get("rows"),)
        waves = _load_npy(waves_path, (*rows, self.num_samples), np.float32, mmap=True)
        labels = _load_npy(_labels_path(waves_path), rows, np.int64, mmap=False)
        return WaveformSet(waves, labels), list(record.get("skipped", []))

    def _decoded(self, split: str, files: FileList, skipped: list[list[str]]) -> Iterator[tuple[np.ndarray, int]]:
        """Decoded ``(waveform, label)`` pairs in order.

        Under ``skip_bad_files`` an undecodable file is skipped with a warning and added to ``skipped``.
        """

        def decode(path: Path) -> np.ndarray | AudioDecodeError:
            try:
                return load_audio(path, self.sample_rate, self.num_samples)
            except AudioDecodeError as error:
                if not self.skip_bad_files:
                    raise
                return error

        pool = ThreadPoolExecutor(_DECODE_THREADS)
        try:
            results = pool.map(decode, [path for path, _ in files])
            bar = tqdm(results, total=len(files), desc=f"decode {self.name} {split}", unit="clip",
                       disable=not self.show_progress)
            for (path, label), result in zip(files, bar):
                if isinstance(result, AudioDecodeError):
                    warnings.warn(f"skipping {path}: {result.reason}", stacklevel=2)
                    skipped.append([str(path), result.reason])
                    continue
                yield result, label
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _build_cache(self, split: str, files: FileList, waves_path: Path) -> None:
        """Decode ``files`` (then append generated clips) into the cache at ``waves_path``, atomically.

        An older cache of the same key stays intact until decoding has succeeded. The record is written
        last, so a cache without one is incomplete and never reused.
        """
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        extra = self.generated_clips(split, np.array([label for _, label in files], dtype=np.int64))
        num_extra = 0 if extra is None else len(extra)
        rows = len(files) + num_extra
        labels: list[int] = []
        skipped: list[list[str]] = []
        with atomic_path(waves_path) as tmp:
            waves = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, self.num_samples))
            for wave, label in self._decoded(split, files, skipped):
                waves[len(labels)] = wave
                labels.append(label)
            if extra is not None:
                waves[len(labels) : len(labels) + num_extra] = extra.waves
                labels.extend(int(label) for label in extra.labels)
            waves.flush()
            del waves
            if len(labels) < rows:
                _truncate_npy(tmp, len(labels))
            _record_path(waves_path).unlink(missing_ok=True)  # decoded: an older cache of this key is replaced
            with atomic_path(_labels_path(waves_path)) as tmp_labels, tmp_labels.open("wb") as f:
                np.save(f, np.asarray(labels, dtype=np.int64))
        save_json(_record_path(waves_path), {"rows": len(labels), "num_samples": self.num_samples, "skipped": skipped})

    # ---------------------------------------------------------------------------------- identity
    def fingerprint(self) -> str:
        """Short hash of the dataset, classes, audio settings and every split's file list and labels."""
        payload = {
            "dataset": self.name,
            "classes": list(self.classes),
            "sample_rate": self.sample_rate,
            "duration": self.duration,
            "files": {s: [(self._relative(p), y) for p, y in files] for s, files in self._lists().items()},
            "generated": {s: self.generated_key(s) for s in SPLITS},
        }
        return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
