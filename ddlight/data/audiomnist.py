"""AudioMNIST: 30,000 spoken digits (0–9), 60 speakers × 10 digits × 50 repetitions, 48 kHz mono WAV.

On-disk layout (the official repository archive's ``AudioMNIST-master/`` folder is ``root``)::

    root/
      data/audioMNIST_meta.txt                    # JSON keyed by speaker id ("01".."60"): age, gender, ...
      data/01/<digit>_<speaker>_<index>.wav       # e.g. 7_01_23.wav: digit 7, speaker 01, repetition 23
      ...
      data/60/...                                 # 500 files per speaker, 16-bit, under one second each

Split rules: speaker-disjoint, on the official digit-task splits of the AudioMNIST repository
(``create_splits`` in its ``preprocess_data.py``). The 60 speakers form five fixed groups of twelve;
split ``k`` (0–4) trains on groups ``k, k+1, k+2``, validates on group ``k+3`` and tests on group ``k+4``
(mod 5), i.e. 36 / 12 / 12 speakers (18,000 / 6,000 / 6,000 clips). The three speaker sets are checked to
be disjoint. For the paper's five-fold protocol, run once per ``split``. Classes ``zero`` ... ``nine``;
the label is the digit in the file name. Clips are resampled and zero-padded at the end to ``duration``
(1 s; every recording is shorter).

Licence: MIT (the AudioMNIST repository; see its LICENSE).

Citation: S. Becker, J. Vielhaben, M. Ackermann, K.-R. Müller, S. Lapuschkin and W. Samek, "AudioMNIST:
Exploring Explainable Artificial Intelligence for audio analysis on a simple benchmark", Journal of the
Franklin Institute, 2024 (arXiv:1807.03418).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from ddlight.data.base import SPLITS
from ddlight.data.download import DownloadInfo
from ddlight.data.files import FileAudioDataModule, FileList, check_disjoint
from ddlight.features import FeatureConfig

URL = "https://github.com/soerenab/AudioMNIST/archive/master.zip"
# The archive of the repository's master branch has no fixed published checksum.
DOWNLOAD_INFO = DownloadInfo(url=URL, filename="AudioMNIST-master.zip", archive_root="AudioMNIST-master")
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DATA = "data"
METADATA = "data/audioMNIST_meta.txt"
#: ``<digit>_<speaker>_<index>.wav``, e.g. ``7_01_23.wav``.
FILE_PATTERN = re.compile(r"(?P<digit>\d)_(?P<speaker>\d\d)_(?P<index>\d+)\.wav")
#: The five speaker groups behind the official digit-task splits (``create_splits`` in the repository's
#: ``preprocess_data.py``); split ``k`` trains on groups k, k+1, k+2, validates on k+3, tests on k+4 (mod 5).
SPEAKER_GROUPS = (
    (1, 6, 7, 16, 19, 23, 28, 34, 35, 46, 53, 56),
    (2, 8, 9, 17, 24, 29, 36, 37, 39, 48, 54, 57),
    (3, 10, 14, 20, 25, 30, 38, 40, 43, 49, 55, 58),
    (4, 11, 12, 15, 21, 27, 31, 41, 44, 47, 50, 59),
    (5, 13, 18, 22, 26, 32, 33, 42, 45, 51, 52, 60),
)
NUM_SPLITS = len(SPEAKER_GROUPS)


def speaker_splits(split: int) -> dict[str, set[int]]:
    """Speakers (as integers 1–60) of ``train``, ``val`` and ``test`` in official split ``split`` (0–4).

    Raises:
        ValueError: ``split`` is not 0–4, or the speaker sets overlap.
    """
    if split not in range(NUM_SPLITS):
        raise ValueError(f"split={split} is not an AudioMNIST split; choose from {list(range(NUM_SPLITS))}")
    group = [set(SPEAKER_GROUPS[(split + k) % NUM_SPLITS]) for k in range(NUM_SPLITS)]
    splits = {"train": group[0] | group[1] | group[2], "val": group[3], "test": group[4]}
    check_disjoint(splits, what="speakers")
    return splits


class AudioMNIST(FileAudioDataModule):
    """AudioMNIST digit classification on one of the five official speaker-disjoint splits.

    Args:
        root: The ``AudioMNIST-master`` folder (holding ``data/<speaker>/`` and ``data/audioMNIST_meta.txt``).
        split: Official digit-task split (0–4): 36 training, 12 validation and 12 test speakers.
        sample_rate: Target sampling rate in Hz (the recordings are 48 kHz).
        duration: Clip length in seconds (the recordings are shorter than 1 s and are zero-padded).
        features: Feature front end applied on the device.
        batch_size: Batch size of all loaders.
        num_workers: DataLoader worker processes for splits served as waveforms (a cached split needs none).
        seed: Seed of anything random in loading (nothing, for AudioMNIST).
        cache_dir: Folder of the decoded-split cache (default ``<root>/.ddlight_cache``).
        skip_bad_files: Skip (with a warning) missing or undecodable files, files whose name is not
            ``<digit>_<speaker>_<index>.wav`` or names another speaker than their folder, and folders that
            are not a speaker, instead of failing.
        download: Download the repository archive (over 1 GB) into ``root`` in ``prepare_data()`` if missing.
        cache_features: Compute each split's features once and serve them every epoch (see
            :class:`~ddlight.data.base.AudioDataModule`); off: the front end runs on every batch.
    """

    name = "audiomnist"
    DOWNLOAD_INFO = DOWNLOAD_INFO

    def __init__(
        self,
        root: str,
        split: int = 0,
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
        self.split = split
        self.speakers = speaker_splits(split)
        self.classes = list(CLASSES)

    def _check_root(self) -> None:
        if not (self.root / METADATA).is_file() or not (self.root / DATA).is_dir():
            raise FileNotFoundError(
                f"{self.root} does not hold AudioMNIST; expected the layout <root>/{METADATA} and "
                f"<root>/{DATA}/<speaker>/<digit>_<speaker>_<index>.wav (speakers 01..60). Download {URL} and "
                "unpack its AudioMNIST-master/ folder as root, or pass --data.download true"
            )

    def _bad(self, path: Path, reason: str) -> None:
        """Fail on a file or folder that does not fit the layout, or warn under ``skip_bad_files``."""
        message = f"{path}: {reason}"
        if not self.skip_bad_files:
            raise ValueError(f"{message}; fix or remove it, or pass skip_bad_files=True to skip it")
        warnings.warn(f"skipping {message}", stacklevel=3)

    def file_lists(self) -> dict[str, FileList]:
        split_of = {speaker: split for split, members in self.speakers.items() for speaker in members}
        lists: dict[str, FileList] = {split: [] for split in SPLITS}
        folders = (p for p in (self.root / DATA).iterdir() if p.is_dir() and p.name[0] not in "._")
        for folder in sorted(folders):
            if not re.fullmatch(r"\d\d", folder.name) or int(folder.name) not in split_of:
                self._bad(folder, "not an AudioMNIST speaker folder (expected 01..60)")
                continue
            split = split_of[int(folder.name)]
            for path in sorted(folder.glob("*.wav")):
                match = FILE_PATTERN.fullmatch(path.name)
                if match is None:
                    self._bad(path, "file name is not <digit>_<speaker>_<index>.wav (e.g. 7_01_23.wav)")
                elif match["speaker"] != folder.name:
                    reason = f"names speaker {match['speaker']} but lies in the folder of speaker {folder.name}"
                    self._bad(path, reason)
                else:
                    lists[split].append((path, int(match["digit"])))
        empty = [split for split in SPLITS if not lists[split]]
        if empty:
            wanted = {split: sorted(self.speakers[split]) for split in empty}
            raise ValueError(
                f"{self.root / DATA} holds no recordings of the {empty} speakers of split {self.split} "
                f"({wanted}); is the download complete?"
            )
        return lists
