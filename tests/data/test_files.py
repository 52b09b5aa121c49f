"""The decode-once cache and bad-file handling shared by every file-based DataModule."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import ddlight.data.files as files_module
from ddlight.data import AudioDecodeError, AudioFolder, UrbanSound8K
from ddlight.data.files import atomic_path, check_disjoint, fold_splits


@pytest.fixture
def count_decodes(monkeypatch) -> list[Path]:
    """Record every file :func:`load_audio` decodes (still decoding it)."""
    calls: list[Path] = []
    real = files_module.load_audio

    def counting(path, *args):
        calls.append(Path(path))
        return real(path, *args)

    monkeypatch.setattr(files_module, "load_audio", counting)
    return calls


def _cache_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / ".ddlight_cache").iterdir())


def test_second_setup_reads_the_cache_and_decodes_nothing(folder_root: Path, small, monkeypatch) -> None:
    first = AudioFolder(str(folder_root), **small)
    first.setup("fit")
    assert len(_cache_files(folder_root)) == 9  # waves + labels + record for three splits
    expected = {s: (np.array(d.waves), np.array(d.labels)) for s, d in first.splits.items()}

    def refuse(*args):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(files_module, "load_audio", refuse)
    second = AudioFolder(str(folder_root), **small)
    second.setup("fit")
    for split, (waves, labels) in expected.items():
        assert isinstance(second.splits[split].waves, np.memmap)
        np.testing.assert_array_equal(second.splits[split].waves, waves)
        np.testing.assert_array_equal(second.splits[split].labels, labels)


def test_cache_is_rebuilt_when_a_key_part_changes(folder_root: Path, small, count_decodes) -> None:
    AudioFolder(str(folder_root), **small).setup()
    assert len(count_decodes) == 30
    higher = AudioFolder(str(folder_root), **{**small, "sample_rate": 16000})
    higher.setup()
    assert len(count_decodes) == 60 and higher.splits["train"].waves.shape[1] == 8000
    changed = folder_root / "birds" / "clip0.wav"
    os.utime(changed, ns=(0, changed.stat().st_mtime_ns + 10**9))
    count_decodes.clear()
    third = AudioFolder(str(folder_root), **small)
    third.setup()
    (own_split,) = [files for files in third.file_lists().values() if changed in {p for p, _ in files}]
    assert sorted(count_decodes) == sorted(p for p, _ in own_split)  # only the changed file's split


def test_cache_dir_argument_is_used(folder_root: Path, tmp_path: Path, small) -> None:
    AudioFolder(str(folder_root), cache_dir=str(tmp_path / "elsewhere"), **small).setup()
    assert len(list((tmp_path / "elsewhere").glob("*.npy"))) == 6
    assert not (folder_root / ".ddlight_cache").exists()


def test_bad_file_mid_split_fails_naming_it_and_leaves_nothing_behind(us8k_root: Path, small) -> None:
    bad = us8k_root / "audio" / "fold3" / "103-3-0-0.wav"
    bad.write_bytes(bad.read_bytes()[:30])
    with pytest.raises(AudioDecodeError, match="103-3-0-0.wav") as err:
        UrbanSound8K(str(us8k_root), **small).setup()
    assert str(bad) in str(err.value)
    assert _cache_files(us8k_root) == []  # no cache file, no temporary file


def test_skip_bad_files_warns_once_per_file_and_skips(us8k_root: Path, small) -> None:
    corrupt = us8k_root / "audio" / "fold3" / "103-3-0-0.wav"
    corrupt.write_text("not audio")
    missing = us8k_root / "audio" / "fold4" / "104-5-0-1.wav"
    missing.unlink()
    with pytest.warns(UserWarning) as record:
        dm = UrbanSound8K(str(us8k_root), skip_bad_files=True, **small)
        dm.setup()
    skipped = [str(w.message) for w in record if "skipping" in str(w.message)]
    assert len(skipped) == 2
    assert any(str(corrupt) in m and "not an audio file" in m for m in skipped)
    assert any(str(missing) in m and "not found" in m for m in skipped)
    assert len(dm.splits["train"]) == 16 - 2 and dm.splits["train"].waves.shape == (14, 4000)


def test_missing_listed_file_is_an_error_naming_it(us8k_root: Path, small) -> None:
    missing = us8k_root / "audio" / "fold10" / "110-1-0-1.wav"
    missing.unlink()
    with pytest.raises(AudioDecodeError, match="file not found") as err:
        UrbanSound8K(str(us8k_root), **small).setup()
    assert str(missing) in str(err.value)


def test_atomic_path_keeps_the_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "split.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["split.json"]


def test_fold_check_rejects_overlap() -> None:
    with pytest.raises(ValueError, match=r"folds \[3\] are in both train and test"):
        check_disjoint({"train": {1, 2, 3}, "val": {4}, "test": {3}})
    with pytest.raises(ValueError, match="must differ"):
        fold_splits(range(1, 11), test_fold=9, val_fold=9)
    with pytest.raises(ValueError, match="not a fold"):
        fold_splits(range(1, 6), test_fold=6, val_fold=1)
    assert fold_splits(range(1, 6), 5, 4) == {"train": {1, 2, 3}, "val": {4}, "test": {5}}


def test_fingerprint_identifies_the_file_lists(us8k_root: Path, small) -> None:
    a = UrbanSound8K(str(us8k_root), **small).fingerprint()
    assert a == UrbanSound8K(str(us8k_root), **small).fingerprint() and len(a) == 16
    assert a != UrbanSound8K(str(us8k_root), test_fold=1, val_fold=2, **small).fingerprint()
