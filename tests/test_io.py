"""Atomic writes and the safetensors helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ddlight.io import atomic_write, load_json, load_tensors, save_json, save_tensors


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = save_json(tmp_path / "a.json", {"v": 1})

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, broken)
    assert load_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_written_files_are_readable_by_the_group(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        json_file = save_json(tmp_path / "a.json", {"v": 1})
        tensors = save_tensors(tmp_path / "t.safetensors", {"x": torch.zeros(2)})
    finally:
        os.umask(old)
    for path in (json_file, tensors):
        assert path.stat().st_mode & 0o777 == 0o644  # what open() gives, not mkstemp's 0o600


def test_tensor_round_trip(tmp_path: Path) -> None:
    tensors = {"x": torch.randn(3, 4), "y": torch.arange(3)}
    loaded = load_tensors(save_tensors(tmp_path / "t.safetensors", tensors))
    assert set(loaded) == {"x", "y"}
    torch.testing.assert_close(loaded["x"], tensors["x"])


def test_invalid_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        load_json(tmp_path / "bad.json")
