"""UrbanSound8K (US8K): 8,732 urban sound excerpts of up to 4 s in 10 classes and 10 predefined folds.

On-disk layout (the official archive's ``UrbanSound8K/`` folder is ``root``)::

    root/
      metadata/UrbanSound8K.csv    # slice_file_name,fsID,start,end,salience,fold,classID,class
      audio/fold1/<slice_file_name>.wav
      ...
      audio/fold10/...

Split rules: the predefined folds, never reshuffled (slices of one recording share a fold, so a random
split would leak). ``test_fold`` (default 10) is the test split, ``val_fold`` (default 9) the
validation split, the other eight folds train; the three are checked to be disjoint. For the standard
10-fold cross-validation, run once per ``test_fold``. Classes in ``classID`` order: air_conditioner,
car_horn, children_playing, dog_bark, drilling, engine_idling, gun_shot, jackhammer, siren,
street_music. Files are mixed rates (up to 96 kHz), mono or stereo, 8- to 32-bit: all are downmixed,
resampled and zero-padded to ``duration`` (4 s).

Licence: Creative Commons Attribution-NonCommercial (non-commercial use only; see the archive's README).

Citation: J. Salamon, C. Jacoby and J. P. Bello, "A Dataset and Taxonomy for Urban Sound Research",
ACM Multimedia 2014.
"""

from __future__ import annotations

from ddlight.data.base import SPLITS
from ddlight.data.download import DownloadInfo
from ddlight.data.files import FileAudioDataModule, FileList, fold_splits, folded_rows
from ddlight.features import FeatureConfig

URL = "https://zenodo.org/records/1203745/files/UrbanSound8K.tar.gz"
DOWNLOAD_INFO = DownloadInfo(
    url=URL, filename="UrbanSound8K.tar.gz", md5="9aa69802bbf37fb986f71ec1483a196e", archive_root="UrbanSound8K"
)
CLASSES = [
    "air_conditioner",
    "car_horn",
    "children_playing",
    "dog_bark",
    "drilling",
    "engine_idling",
    "gun_shot",
    "jackhammer",
    "siren",
    "street_music",
]
COLUMNS = ("slice_file_name", "fold", "classID", "class")
METADATA = "metadata/UrbanSound8K.csv"


class UrbanSound8K(FileAudioDataModule):
    """UrbanSound8K on its predefined folds: one test fold, one validation fold, eight training folds.

    Args:
        root: The ``UrbanSound8K`` folder (holding ``metadata/`` and ``audio/``).
        test_fold: Fold (1–10) used as the test split.
        val_fold: Fold (1–10, not ``test_fold``) used as the validation split.
        sample_rate: Target sampling rate in Hz.
        duration: Clip length in seconds (excerpts are at most 4 s).
        features: Feature front end applied on the device.
        batch_size: Batch size of all loaders.
        num_workers: DataLoader worker processes for splits served as waveforms (a cached split needs none).
        seed: Seed of anything random in loading (nothing, for US8K).
        cache_dir: Folder of the decoded-split cache (default ``<root>/.ddlight_cache``).
        skip_bad_files: Skip missing or undecodable files with a warning instead of failing.
        download: Download the archive (5.6 GB) into ``root`` in ``prepare_data()`` if missing.
        cache_features: Compute each split's features once and serve them every epoch (see
            :class:`~ddlight.data.base.AudioDataModule`); off: the front end runs on every batch.
    """

    name = "us8k"
    DOWNLOAD_INFO = DOWNLOAD_INFO

    def __init__(
        self,
        root: str,
        test_fold: int = 10,
        val_fold: int = 9,
        sample_rate: int = 16000,
        duration: float = 4.0,
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
        self.folds = fold_splits(range(1, 11), test_fold, val_fold)
        self.classes = list(CLASSES)

    def _check_root(self) -> None:
        if not (self.root / METADATA).is_file() or not (self.root / "audio").is_dir():
            raise FileNotFoundError(
                f"{self.root} does not hold UrbanSound8K; expected the layout <root>/{METADATA} and "
                f"<root>/audio/fold1..fold10/<slice_file_name>.wav. Download {URL} and unpack its "
                "UrbanSound8K/ folder as root, or pass --data.download true"
            )

    def file_lists(self) -> dict[str, FileList]:
        lists: dict[str, FileList] = {split: [] for split in SPLITS}
        for row, split, label in folded_rows(self.root / METADATA, COLUMNS, CLASSES, self.folds):
            lists[split].append((self.root / "audio" / f"fold{row['fold']}" / row["slice_file_name"], label))
        return lists
