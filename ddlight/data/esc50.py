"""ESC-50 (and its ESC-10 subset): 2,000 five-second environmental recordings, 50 classes, 5 folds.

On-disk layout (the official repository archive's ``ESC-50-master/`` folder is ``root``)::

    root/
      meta/esc50.csv    # filename,fold,target,category,esc10,src_file,take
      audio/<fold>-<freesound id>-<take>-<target>.wav    # 2,000 files, 44.1 kHz mono

Split rules: the predefined folds, never reshuffled (clips cut from one recording share a fold).
``test_fold`` (default 5) is the test split, ``val_fold`` (default 4) the validation split, the other
three folds train; the three are checked to be disjoint. For the standard 5-fold cross-validation, run
once per ``test_fold``. Classes in ``target`` order (dog, rooster, pig, ..., hand_saw); with ``esc10``
only the ten ESC-10 classes (dog, rooster, rain, sea_waves, crackling_fire, crying_baby, sneezing,
clock_tick, helicopter, chainsaw), relabelled 0–9 in that order.

Licence: Creative Commons Attribution-NonCommercial 3.0 (clips from freesound.org; see the archive's
README for per-clip attribution).

Citation: K. J. Piczak, "ESC: Dataset for Environmental Sound Classification", ACM Multimedia 2015.
"""

from __future__ import annotations

from ddlight.data.base import SPLITS
from ddlight.data.download import DownloadInfo
from ddlight.data.files import FileAudioDataModule, FileList, fold_splits, folded_rows
from ddlight.features import FeatureConfig

URL = "https://github.com/karolpiczak/ESC-50/archive/master.zip"
# The archive of the repository's master branch has no fixed published checksum.
DOWNLOAD_INFO = DownloadInfo(url=URL, filename="ESC-50-master.zip", archive_root="ESC-50-master")
CLASSES = [
    "dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep", "crow",
    "rain", "sea_waves", "crackling_fire", "crickets", "chirping_birds", "water_drops", "wind",
    "pouring_water", "toilet_flush", "thunderstorm",
    "crying_baby", "sneezing", "clapping", "breathing", "coughing", "footsteps", "laughing",
    "brushing_teeth", "snoring", "drinking_sipping",
    "door_wood_knock", "mouse_click", "keyboard_typing", "door_wood_creaks", "can_opening",
    "washing_machine", "vacuum_cleaner", "clock_alarm", "clock_tick", "glass_breaking",
    "helicopter", "chainsaw", "siren", "car_horn", "engine", "train", "church_bells", "airplane",
    "fireworks", "hand_saw",
]  # fmt: skip
ESC10_TARGETS = [0, 1, 10, 11, 12, 20, 21, 38, 40, 41]
COLUMNS = ("filename", "fold", "target", "category")
METADATA = "meta/esc50.csv"


class ESC50(FileAudioDataModule):
    """ESC-50 (or ESC-10) on its predefined folds: one test fold, one validation fold, three training folds.

    Args:
        root: The ``ESC-50-master`` folder (holding ``meta/`` and ``audio/``).
        test_fold: Fold (1–5) used as the test split.
        val_fold: Fold (1–5, not ``test_fold``) used as the validation split.
        esc10: Keep only the ten ESC-10 classes (relabelled 0–9); the dataset is then named ``esc10``.
        sample_rate: Target sampling rate in Hz (the recordings are 44.1 kHz).
        duration: Clip length in seconds (the recordings are 5 s).
        features: Feature front end applied on the device.
        batch_size: Batch size of all loaders.
        num_workers: DataLoader worker processes for splits served as waveforms (a cached split needs none).
        seed: Seed of anything random in loading (nothing, for ESC-50).
        cache_dir: Folder of the decoded-split cache (default ``<root>/.ddlight_cache``).
        skip_bad_files: Skip missing or undecodable files with a warning instead of failing.
        download: Download the repository archive (~600 MB) into ``root`` in ``prepare_data()`` if missing.
        cache_features: Compute each split's features once and serve them every epoch (see
            :class:`~ddlight.data.base.AudioDataModule`); off: the front end runs on every batch.
    """

    name = "esc50"
    DOWNLOAD_INFO = DOWNLOAD_INFO

    def __init__(
        self,
        root: str,
        test_fold: int = 5,
        val_fold: int = 4,
        esc10: bool = False,
        sample_rate: int = 16000,
        duration: float = 5.0,
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
        self.folds = fold_splits(range(1, 6), test_fold, val_fold)
        self.esc10 = esc10
        self.name = "esc10" if esc10 else "esc50"
        targets = ESC10_TARGETS if esc10 else range(len(CLASSES))
        self._label_of_target = {target: label for label, target in enumerate(targets)}
        self.classes = [CLASSES[target] for target in targets]

    def _check_root(self) -> None:
        if not (self.root / METADATA).is_file() or not (self.root / "audio").is_dir():
            raise FileNotFoundError(
                f"{self.root} does not hold ESC-50; expected the layout <root>/{METADATA} and "
                f"<root>/audio/*.wav. Download {URL} and unpack its ESC-50-master/ folder as root, "
                "or pass --data.download true"
            )

    def file_lists(self) -> dict[str, FileList]:
        lists: dict[str, FileList] = {split: [] for split in SPLITS}
        for row, split, target in folded_rows(self.root / METADATA, COLUMNS, CLASSES, self.folds):
            if target in self._label_of_target:
                lists[split].append((self.root / "audio" / row["filename"], self._label_of_target[target]))
        return lists
