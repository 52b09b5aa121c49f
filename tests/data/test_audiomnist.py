"""AudioMNIST: official speaker-disjoint splits, labels from file names, 48 kHz clips, layout errors."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ddlight.data import AudioMNIST
from ddlight.data.audiomnist import DOWNLOAD_INFO, speaker_splits
from ddlight.data.download import DownloadInfo
from ddlight.features import FeatureConfig

#: Speakers of split 0 as listed by the AudioMNIST repository (digit task).
OFFICIAL_SPLIT_0 = {
    "val": {4, 11, 12, 15, 21, 27, 31, 41, 44, 47, 50, 59},
    "test": {5, 13, 18, 22, 26, 32, 33, 42, 45, 51, 52, 60},
}


def _speakers(dm: AudioMNIST) -> dict[str, set[str]]:
    return {split: {p.parent.name for p, _ in files} for split, files in dm.file_lists().items()}


def test_official_speaker_splits_rotate_five_groups_of_twelve() -> None:
    every = set(range(1, 61))
    for k in range(5):
        splits = speaker_splits(k)
        assert [len(splits[s]) for s in ("train", "val", "test")] == [36, 12, 12]
        train, val, test = splits["train"], splits["val"], splits["test"]
        assert train | val | test == every and not (train & val or train & test or val & test)
        assert speaker_splits((k + 1) % 5)["val"] == splits["test"]  # the official tables' rotation
    assert {s: speaker_splits(0)[s] for s in ("val", "test")} == OFFICIAL_SPLIT_0
    assert speaker_splits(0)["train"] == every - OFFICIAL_SPLIT_0["val"] - OFFICIAL_SPLIT_0["test"]
    assert speaker_splits(1)["test"] == {1, 6, 7, 16, 19, 23, 28, 34, 35, 46, 53, 56}
    with pytest.raises(ValueError, match=r"split=5 is not an AudioMNIST split"):
        AudioMNIST("anywhere", split=5)


def test_classes_and_download_info_are_known_before_any_file_is_read(tmp_path: Path, small) -> None:
    dm = AudioMNIST(str(tmp_path / "not-yet-downloaded"), **small)
    assert dm.classes == ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    assert dm.num_classes == 10 and dm.name == "audiomnist" and dm.feature_shape == (3, 10, 32)
    assert DOWNLOAD_INFO.url == "https://github.com/soerenab/AudioMNIST/archive/master.zip"
    assert DOWNLOAD_INFO.filename == "AudioMNIST-master.zip" and DOWNLOAD_INFO.archive_root == "AudioMNIST-master"
    assert DOWNLOAD_INFO.md5 is None and DOWNLOAD_INFO.sha256 is None


@pytest.mark.parametrize(
    ("split", "expected"),
    [
        (0, {"train": {"01", "02", "03"}, "val": {"04"}, "test": {"05"}}),
        (1, {"train": {"02", "03", "04"}, "val": {"05"}, "test": {"01"}}),
        (4, {"train": {"05", "01", "02"}, "val": {"03"}, "test": {"04"}}),
    ],
)
def test_splits_are_speaker_disjoint(audiomnist_root: Path, small, split: int, expected: dict) -> None:
    dm = AudioMNIST(str(audiomnist_root), split=split, **small)
    assert _speakers(dm) == expected
    assert {s: len(files) for s, files in dm.file_lists().items()} == {"train": 24, "val": 8, "test": 8}


def test_labels_come_from_the_file_names(audiomnist_root: Path, small) -> None:
    dm = AudioMNIST(str(audiomnist_root), cache_features=False, **small)
    for files in dm.file_lists().values():
        assert all(label == int(path.name.split("_")[0]) for path, label in files)
    dm.setup("fit")
    assert np.bincount(dm.splits["train"].labels, minlength=10).tolist() == [6, 0, 0, 6, 0, 0, 0, 6, 0, 6]
    assert dm.splits["test"].labels.tolist() == [0, 0, 3, 3, 7, 7, 9, 9]  # sorted by path within speaker 05
    waves, labels = next(iter(dm.train_dataloader()))
    assert waves.shape == (dm.batch_size, dm.num_samples) and waves.dtype == torch.float32
    features, _ = dm.on_after_batch_transfer((waves, labels), 0)
    assert features.shape == (dm.batch_size, *dm.feature_shape) and torch.isfinite(features).all()


def test_48k_clips_are_resampled_to_16k_and_zero_padded(audiomnist_root: Path) -> None:
    features = FeatureConfig(n_fft=256, hop_length=128, n_mels=20, n_mfcc=10)
    dm = AudioMNIST(str(audiomnist_root), sample_rate=16000, duration=1.0, batch_size=4, features=features)
    dm.setup()
    waves = np.asarray(dm.splits["test"].waves)
    assert waves.shape == (8, 16000)
    for row, seconds in ((0, 0.2), (1, 0.25)):  # 0_05_0.wav (9,600 samples at 48 kHz), 0_05_1.wav (12,000)
        wave, end = waves[row], int(seconds * 16000)
        assert np.abs(wave[end - 200 : end]).max() > 0.3 and np.count_nonzero(wave[end:]) == 0
        spectrum = np.abs(np.fft.rfft(wave[:end]))
        assert abs(np.argmax(spectrum) * 16000 / end - 240.0) <= 16000 / end  # the 240 Hz tone survives


@pytest.mark.parametrize(
    ("name", "reason"),
    [("seven_02_0.wav", "is not <digit>_<speaker>_<index>.wav"), ("3_04_0.wav", "names speaker 04")],
)
def test_a_bad_file_name_is_an_error_naming_the_file(audiomnist_root: Path, small, name: str, reason: str) -> None:
    bad = audiomnist_root / "data" / "02" / name
    shutil.copy(audiomnist_root / "data" / "02" / "3_02_0.wav", bad)
    with pytest.raises(ValueError, match=reason) as err:
        AudioMNIST(str(audiomnist_root), **small).setup()
    assert str(bad) in str(err.value) and "skip_bad_files" in str(err.value)
    with pytest.warns(UserWarning, match=f"skipping .*{name}"):
        lists = AudioMNIST(str(audiomnist_root), skip_bad_files=True, **small).file_lists()
    assert len(lists["train"]) == 24 and bad not in {p for p, _ in lists["train"]}


def test_a_folder_that_is_not_a_speaker_is_an_error(audiomnist_root: Path, small) -> None:
    (audiomnist_root / "data" / "61").mkdir()
    with pytest.raises(ValueError, match=r"data/61: not an AudioMNIST speaker folder"):
        AudioMNIST(str(audiomnist_root), **small).file_lists()


def test_a_split_without_speakers_is_an_error(audiomnist_root: Path, small) -> None:
    shutil.rmtree(audiomnist_root / "data" / "05")  # the only test speaker of split 0 in the fixture
    with pytest.raises(ValueError, match=r"no recordings of the \['test'\] speakers of split 0"):
        AudioMNIST(str(audiomnist_root), **small).file_lists()
    assert len(AudioMNIST(str(audiomnist_root), split=2, **small).file_lists()["train"]) == 16  # 03 and 04 left


def test_missing_root_names_the_layout_url_and_flag(tmp_path: Path, audiomnist_root: Path, small) -> None:
    with pytest.raises(FileNotFoundError) as err:
        AudioMNIST(str(tmp_path / "nowhere"), **small).setup()
    message = str(err.value)
    assert "data/audioMNIST_meta.txt" in message and "data/<speaker>/<digit>_<speaker>_<index>.wav" in message
    assert "AudioMNIST/archive/master.zip" in message and "--data.download true" in message
    (audiomnist_root / "data" / "audioMNIST_meta.txt").unlink()
    with pytest.raises(FileNotFoundError, match="audioMNIST_meta.txt"):
        AudioMNIST(str(audiomnist_root), **small).setup()


def test_prepare_data_unpacks_the_repository_zip(
    tmp_path: Path, http_root, audiomnist_root: Path, monkeypatch, small
) -> None:
    served, url = http_root
    with zipfile.ZipFile(served / "AudioMNIST-master.zip", "w") as zf:
        for path in sorted(audiomnist_root.rglob("*")):
            zf.write(path, (Path("AudioMNIST-master") / path.relative_to(audiomnist_root)).as_posix())
    info = DownloadInfo(f"{url}/AudioMNIST-master.zip", "AudioMNIST-master.zip", archive_root="AudioMNIST-master")
    monkeypatch.setattr(AudioMNIST, "DOWNLOAD_INFO", info)
    dm = AudioMNIST(str(tmp_path / "fresh"), download=True, **small)
    with pytest.warns(UserWarning, match="no published checksum"):
        dm.prepare_data()
    assert _speakers(dm) == {"train": {"01", "02", "03"}, "val": {"04"}, "test": {"05"}}
