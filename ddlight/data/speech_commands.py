"""Google Speech Commands v0.02 (GSC): one-second spoken words, 35 words, 2,618 speakers.

On-disk layout (the official archive unpacked into ``root``)::

    root/
      validation_list.txt          # one "<word>/<file>.wav" per line
      testing_list.txt
      _background_noise_/*.wav     # six long noise recordings (used for the _silence_ class)
      yes/<speaker>_nohash_<n>.wav
      no/...                       # 35 word folders in all

Split rules (official, by speaker hash): files listed in ``testing_list.txt`` are ``test``, those in
``validation_list.txt`` are ``val``, every other file is ``train``. List entries are paths relative to
``root``; a ``./`` prefix or Windows separators are normalised away, and an entry that names no file is
an error (a warning under ``skip_bad_files``), so a list that matches nothing never trains on everything.
Classes: the ten keywords ``yes no up down left right on off stop go`` (default) or all 35 words
(``all_words``); optionally
``_unknown_`` (a seeded subset of the other words, as many per split as the average keyword class)
and ``_silence_`` (seeded one-second crops of the background noise at a random gain, a tenth of the
average class count per split).

Licence: Creative Commons BY 4.0.

Citation: P. Warden, "Speech Commands: A Dataset for Limited-Vocabulary Speech Recognition",
arXiv:1804.03209, 2018.
"""

from __future__ import annotations

import warnings
from pathlib import Path, PurePosixPath

import numpy as np

from ddlight.data.audio_io import fix_length, read_audio
from ddlight.data.base import SPLITS, WaveformSet
from ddlight.data.download import DownloadInfo
from ddlight.data.files import FileAudioDataModule, FileList, check_disjoint
from ddlight.features import FeatureConfig

URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
DOWNLOAD_INFO = DownloadInfo(
    url=URL,
    filename="speech_commands_v0.02.tar.gz",
    sha256="af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58",
)
KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
ALL_WORDS = sorted(
    KEYWORDS
    + ["backward", "bed", "bird", "cat", "dog", "eight", "five", "follow", "forward", "four", "happy"]
    + ["house", "learn", "marvin", "nine", "one", "seven", "sheila", "six", "three", "tree", "two"]
    + ["visual", "wow", "zero"]
)
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
NOISE_DIR = "_background_noise_"


def _read_list(path: Path) -> set[str]:
    """Entries of a split list as ``<word>/<file>.wav``: ``./`` prefixes and ``\\`` separators normalised."""
    lines = (line.strip().replace("\\", "/") for line in path.read_text(encoding="utf-8-sig").splitlines())
    return {PurePosixPath(line).as_posix() for line in lines if line}


class SpeechCommands(FileAudioDataModule):
    """Google Speech Commands v0.02 keyword spotting, official validation/testing lists.

    Args:
        root: Folder holding the unpacked v0.02 archive (word folders and the two list files).
        all_words: Use all 35 words as classes instead of the ten keywords.
        unknown: Add an ``_unknown_`` class drawn from the words that are not classes.
        silence: Add a ``_silence_`` class of background-noise crops.
        sample_rate: Target sampling rate in Hz (the recordings are 16 kHz).
        duration: Clip length in seconds.
        features: Feature front end applied on the device.
        batch_size: Batch size of all loaders.
        num_workers: DataLoader worker processes for splits served as waveforms (a cached split needs none).
        seed: Seed of the ``_unknown_`` subset and the ``_silence_`` crops.
        cache_dir: Folder of the decoded-split cache (default ``<root>/.ddlight_cache``).
        skip_bad_files: Skip undecodable files, and ignore split-list entries that name no file, with a
            warning instead of failing.
        download: Download the archive (2.3 GB) into ``root`` in ``prepare_data()`` if missing.
        cache_features: Compute each split's features once and serve them every epoch (see
            :class:`~ddlight.data.base.AudioDataModule`); off: the front end runs on every batch.
    """

    name = "gsc"
    DOWNLOAD_INFO = DOWNLOAD_INFO

    def __init__(
        self,
        root: str,
        all_words: bool = False,
        unknown: bool = False,
        silence: bool = False,
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
        super().__init__(
            root, sample_rate, duration, features, batch_size, num_workers, seed,
            cache_dir=cache_dir, skip_bad_files=skip_bad_files, download=download, cache_features=cache_features,
        )
        if all_words and unknown:
            raise ValueError("unknown=True needs words outside the classes; it cannot be combined with all_words")
        self.words = ALL_WORDS if all_words else KEYWORDS
        self.unknown = unknown
        self.silence = silence
        self.classes = self.words + [UNKNOWN] * unknown + [SILENCE] * silence

    def _check_root(self) -> None:
        required = ["validation_list.txt", "testing_list.txt", *self.words]
        if self.silence:
            required.append(NOISE_DIR)
        missing = [name for name in required if not (self.root / name).exists()]
        if missing:
            raise FileNotFoundError(
                f"{self.root} does not hold Speech Commands v0.02 (missing {missing[:5]}); expected the "
                "layout <root>/<word>/<speaker>_nohash_<n>.wav with validation_list.txt, testing_list.txt "
                f"and {NOISE_DIR}/. Download {URL} and unpack it into root, or pass --data.download true"
            )

    def file_lists(self) -> dict[str, FileList]:
        test = self._split_list("testing_list.txt")
        val = self._split_list("validation_list.txt")
        check_disjoint({"validation_list.txt": val, "testing_list.txt": test}, what="files")
        index = {word: label for label, word in enumerate(self.words)}
        lists: dict[str, FileList] = {split: [] for split in SPLITS}
        others: dict[str, list[Path]] = {split: [] for split in SPLITS}
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name[0] not in "._"):
            if folder.name not in index and not self.unknown:
                continue
            for path in sorted(folder.glob("*.wav")):
                relative = f"{folder.name}/{path.name}"
                split = "test" if relative in test else "val" if relative in val else "train"
                if folder.name in index:
                    lists[split].append((path, index[folder.name]))
                else:
                    others[split].append(path)
        if self.unknown:
            for i, split in enumerate(SPLITS):
                lists[split] += self._unknown_subset(others[split], len(lists[split]), i)
        return lists

    def _split_list(self, name: str) -> set[str]:
        """The entries of the split list ``name``, each checked to name a file under ``root``.

        Raises:
            ValueError: Entries name no file (a warning instead under ``skip_bad_files``).
        """
        path = self.root / name
        entries = _read_list(path)
        unmatched = sorted(entry for entry in entries if not (self.root / entry).is_file())
        if unmatched:
            message = (
                f"{path}: {len(unmatched)} of {len(entries)} entries name no file under {self.root} (e.g. "
                f"{unmatched[0]!r}); each line must be <word>/<file>.wav relative to root, as in the official archive"
            )
            if not self.skip_bad_files:
                raise ValueError(
                    f"{message}: fix the list or restore the files, or pass skip_bad_files=True to ignore them"
                )
            warnings.warn(f"{message}; ignoring them", stacklevel=3)
        return entries

    def _unknown_subset(self, candidates: list[Path], num_word_files: int, stream: int) -> FileList:
        """A seeded subset of other words, as large as the average keyword class of the split."""
        count = min(len(candidates), round(num_word_files / len(self.words)))
        rng = np.random.default_rng([self.seed, stream])
        chosen = sorted(rng.choice(len(candidates), size=count, replace=False))
        label = self.classes.index(UNKNOWN)
        return [(candidates[i], label) for i in chosen]

    # ------------------------------------------------------------------------------------- silence
    def _noise_files(self) -> list[Path]:
        files = sorted((self.root / NOISE_DIR).glob("*.wav"))
        if not files:
            raise FileNotFoundError(f"silence=True needs background noise recordings in {self.root / NOISE_DIR}")
        return files

    def generated_key(self, split: str) -> dict | None:
        if not self.silence:
            return None
        return {"seed": self.seed, "noise": [[p.name, p.stat().st_size] for p in self._noise_files()]}

    def generated_clips(self, split: str, labels: np.ndarray) -> WaveformSet | None:
        """``_silence_`` clips: seeded crops of the background noise at a uniform random gain in [0, 1)."""
        if not self.silence:
            return None
        count = max(1, round(len(labels) / (self.num_classes - 1) / 10))
        noises = [read_audio(path, self.sample_rate) for path in self._noise_files()]
        rng = np.random.default_rng([self.seed, SPLITS.index(split), 1])
        waves = np.empty((count, self.num_samples), dtype=np.float32)
        for row in waves:
            noise = noises[rng.integers(len(noises))]
            start = rng.integers(max(1, len(noise) - self.num_samples + 1))
            row[:] = fix_length(noise[start : start + self.num_samples], self.num_samples) * rng.uniform()
        return WaveformSet(waves, np.full(count, self.classes.index(SILENCE), dtype=np.int64))
