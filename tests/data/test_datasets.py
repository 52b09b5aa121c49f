"""Each dataset module: classes after __init__, official split rules, batches, layout errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ddlight.data import ESC50, AudioFolder, SpeechCommands, UrbanSound8K
from ddlight.data.files import FileAudioDataModule


def _relative_split(dm: FileAudioDataModule, split: str) -> set[str]:
    return {p.relative_to(dm.root).as_posix() for p, _ in dm.file_lists()[split]}


def _check_batches(dm: FileAudioDataModule) -> None:
    """setup → train loader → on_after_batch_transfer gives features of ``feature_shape``, cached or not."""
    dm.setup("fit")
    dm.cache_features = False
    waves, labels = next(iter(dm.train_dataloader()))
    assert waves.shape == (dm.batch_size, dm.num_samples) and waves.dtype == torch.float32
    features, same_labels = dm.on_after_batch_transfer((waves, labels), 0)
    assert features.shape == (dm.batch_size, *dm.feature_shape)
    assert torch.isfinite(features).all() and torch.equal(labels, same_labels)
    assert int(labels.min()) >= 0 and int(labels.max()) < dm.num_classes
    dm.cache_features = True
    cached, cached_labels = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert cached.shape == features.shape and cached_labels.shape == labels.shape


# ------------------------------------------------------------------------------- Speech Commands
def test_gsc_classes_are_known_before_any_file_is_read(tmp_path: Path, small) -> None:
    dm = SpeechCommands(str(tmp_path / "not-yet-downloaded"), **small)
    assert dm.classes == ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
    assert dm.num_classes == 10 and dm.feature_shape == (3, 10, 32) and dm.name == "gsc"
    full = SpeechCommands(str(tmp_path), all_words=True, silence=True, **small)
    assert full.num_classes == 36 and full.classes[-1] == "_silence_" and "marvin" in full.classes
    assert SpeechCommands(str(tmp_path), unknown=True, silence=True).classes[-2:] == ["_unknown_", "_silence_"]
    with pytest.raises(ValueError, match="all_words"):
        SpeechCommands(str(tmp_path), all_words=True, unknown=True)


def test_gsc_split_follows_the_official_lists(gsc_root: Path, small) -> None:
    dm = SpeechCommands(str(gsc_root), **small)
    listed_test = set((gsc_root / "testing_list.txt").read_text().split())
    listed_val = set((gsc_root / "validation_list.txt").read_text().split())
    assert _relative_split(dm, "test") == {f for f in listed_test if not f.startswith(("bed/", "cat/"))}
    assert _relative_split(dm, "val") == {f for f in listed_val if not f.startswith(("bed/", "cat/"))}
    train = _relative_split(dm, "train")
    assert len(train) == 20 and not train & (listed_test | listed_val)
    _check_batches(dm)
    assert len(dm.splits["train"]) == 20 and sorted(np.bincount(dm.splits["test"].labels)) == [1] * 10


def test_gsc_unknown_and_silence(gsc_root: Path, small) -> None:
    dm = SpeechCommands(str(gsc_root), unknown=True, silence=True, seed=3, **small)
    unknown, silence = dm.classes.index("_unknown_"), dm.classes.index("_silence_")
    unknown_files = [p for p, y in dm.file_lists()["train"] if y == unknown]
    assert len(unknown_files) == 2 and {p.parent.name for p in unknown_files} <= {"bed", "cat"}
    dm.setup()
    train = dm.splits["train"]
    assert len(train) == 20 + 2 + 1 and int(train.labels[-1]) == silence
    clip = np.asarray(train.waves[-1])
    assert 0 < np.abs(clip).max() < 0.6 and np.abs(clip).mean() > 0  # a scaled crop of the noise
    kwargs = {"unknown": True, "silence": True, "seed": 3, "cache_dir": str(gsc_root / "c2"), **small}
    again = SpeechCommands(str(gsc_root), **kwargs)
    again.setup()
    np.testing.assert_array_equal(again.splits["train"].waves[-1], clip)  # deterministic per seed
    other = SpeechCommands(str(gsc_root), silence=True, seed=4, **small)
    other.setup()
    assert not np.array_equal(other.splits["train"].waves[-1], clip)


def test_gsc_missing_root_names_the_layout_url_and_flag(tmp_path: Path, small) -> None:
    with pytest.raises(FileNotFoundError) as err:
        SpeechCommands(str(tmp_path / "nowhere"), **small).setup()
    message = str(err.value)
    assert "<word>/<speaker>_nohash_<n>.wav" in message and "testing_list.txt" in message
    assert "speech_commands_v0.02.tar.gz" in message and "--data.download true" in message


def test_gsc_silence_needs_background_noise(gsc_root: Path, small) -> None:
    for path in (gsc_root / "_background_noise_").iterdir():
        path.unlink()
    (gsc_root / "_background_noise_").rmdir()
    SpeechCommands(str(gsc_root), **small).file_lists()  # fine without silence
    with pytest.raises(FileNotFoundError, match="_background_noise_"):
        SpeechCommands(str(gsc_root), silence=True, **small).setup()


# --------------------------------------------------------------------------------- UrbanSound8K
def _folds(dm: FileAudioDataModule, split: str) -> set[int]:
    return {int(p.parent.name.removeprefix("fold")) for p, _ in dm.file_lists()[split]}


@pytest.mark.parametrize(("test_fold", "val_fold"), [(10, 9), (1, 2)])
def test_us8k_uses_the_predefined_folds(us8k_root: Path, small, test_fold: int, val_fold: int) -> None:
    dm = UrbanSound8K(str(us8k_root), test_fold=test_fold, val_fold=val_fold, **small)
    assert _folds(dm, "test") == {test_fold} and _folds(dm, "val") == {val_fold}
    assert _folds(dm, "train") == set(range(1, 11)) - {test_fold, val_fold}
    assert dm.num_classes == 10 and dm.classes[6] == "gun_shot" and dm.name == "us8k"


def test_us8k_batches_from_mixed_formats(us8k_root: Path, small) -> None:
    dm = UrbanSound8K(str(us8k_root), **small)
    assert dm.feature_shape == (3, 10, 32)
    _check_batches(dm)
    assert dm.splits["test"].labels.tolist() == [0, 1]  # fold 10 holds classes 0 and 1
    assert np.abs(np.asarray(dm.splits["train"].waves)[:, :1000]).max(axis=1).min() > 0.1  # none silent


def test_us8k_rejects_equal_folds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must differ"):
        UrbanSound8K(str(tmp_path), test_fold=3, val_fold=3)
    with pytest.raises(ValueError, match="not a fold"):
        UrbanSound8K(str(tmp_path), test_fold=11)


def test_us8k_missing_metadata_names_the_layout(us8k_root: Path, small) -> None:
    (us8k_root / "metadata" / "UrbanSound8K.csv").unlink()
    with pytest.raises(FileNotFoundError, match="metadata/UrbanSound8K.csv") as err:
        UrbanSound8K(str(us8k_root), **small).setup()
    assert "fold1..fold10" in str(err.value) and "zenodo.org" in str(err.value)


def test_us8k_metadata_with_a_wrong_class_is_rejected(us8k_root: Path, small) -> None:
    csv = us8k_root / "metadata" / "UrbanSound8K.csv"
    csv.write_text(csv.read_text().replace(",car_horn", ",siren", 1))
    with pytest.raises(ValueError, match="unexpected row"):
        UrbanSound8K(str(us8k_root), **small).setup()


# ---------------------------------------------------------------------------------------- ESC-50
def test_esc50_folds_and_classes(esc50_root: Path, small) -> None:
    dm = ESC50(str(esc50_root), **small)
    assert dm.num_classes == 50 and dm.classes[:3] == ["dog", "rooster", "pig"] and dm.classes[49] == "hand_saw"
    fold_of = {split: {int(p.name.split("-")[0]) for p, _ in files} for split, files in dm.file_lists().items()}
    assert fold_of == {"train": {1, 2, 3}, "val": {4}, "test": {5}}
    _check_batches(dm)
    assert sorted(dm.splits["test"].labels.tolist()) == [0, 1, 2, 10]


def test_esc10_relabels_in_target_order(esc50_root: Path, small) -> None:
    dm = ESC50(str(esc50_root), esc10=True, test_fold=1, val_fold=2, **small)
    assert dm.name == "esc10" and dm.num_classes == 10 and dm.classes[:3] == ["dog", "rooster", "rain"]
    labels = {p.name: y for p, y in dm.file_lists()["test"]}
    assert labels == {"1-1000-A-0.wav": 0, "1-1001-A-1.wav": 1, "1-1010-A-10.wav": 2}  # pig is not ESC-10


def test_esc50_missing_root(tmp_path: Path, small) -> None:
    with pytest.raises(FileNotFoundError, match=r"meta/esc50.csv.*--data.download true"):
        ESC50(str(tmp_path), **small).setup()


# ----------------------------------------------------------------------------------- AudioFolder
def test_audio_folder_classes_name_and_stratified_split(folder_root: Path, small) -> None:
    dm = AudioFolder(str(folder_root), **small)
    assert dm.classes == ["birds", "cars", "rain"] and dm.name == "my_sounds"
    assert dm.feature_shape == (3, 10, 32) and not dm.split_file.exists()  # nothing written by __init__
    lists = dm.file_lists()
    counts = {split: np.bincount([y for _, y in files]).tolist() for split, files in lists.items()}
    assert counts == {"train": [7, 7, 7], "val": [1, 1, 1], "test": [2, 2, 2]}
    every = [p for files in lists.values() for p, _ in files]
    assert len(every) == len(set(every)) == 30
    _check_batches(dm)


def test_audio_folder_split_is_stored_and_stable(folder_root: Path, small) -> None:
    first = AudioFolder(str(folder_root), **small).file_lists()
    stored = json.loads((folder_root / "ddlight_split.json").read_text())
    assert stored["classes"] == ["birds", "cars", "rain"] and len(stored["splits"]["test"]) == 6
    assert [p.name for p in folder_root.iterdir() if p.name.startswith(".")] == []  # no temporary file
    assert AudioFolder(str(folder_root), **small).file_lists() == first
    with pytest.warns(UserWarning, match="using the split stored"):
        assert AudioFolder(str(folder_root), seed=99, **small).file_lists() == first
    (folder_root / "birds" / "late.wav").write_bytes((folder_root / "birds" / "clip0.wav").read_bytes())
    with pytest.warns(UserWarning, match="unused"):
        assert AudioFolder(str(folder_root), **small).file_lists() == first
    (folder_root / "wind").mkdir()
    with pytest.raises(ValueError, match="delete"):
        AudioFolder(str(folder_root), **small).file_lists()


def test_audio_folder_with_too_few_files_per_class(folder_root: Path, small) -> None:
    for path in sorted((folder_root / "rain").iterdir())[2:]:
        path.unlink()
    with pytest.raises(ValueError, match="'rain' has 2 audio files"):
        AudioFolder(str(folder_root), **small).file_lists()
    assert not (folder_root / "ddlight_split.json").exists()


def test_audio_folder_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"<root>/<class>/<file>"):
        AudioFolder(str(tmp_path / "missing"))
