"""Class-incremental study: stage split, targets over the seen classes, the command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ddlight.downstream.continual import class_stages, main, restrict_targets, seen_mask


def test_class_stages_split_a_seeded_order() -> None:
    stages = class_stages(10, 5, seed=0)
    assert [len(s) for s in stages] == [2] * 5
    assert sorted(c for s in stages for c in s) == list(range(10))
    assert class_stages(10, 5, seed=0) == stages
    assert any(class_stages(10, 5, seed=s) != stages for s in range(1, 4))
    assert [len(s) for s in class_stages(11, 5, seed=0)] == [3, 2, 2, 2, 2]
    assert sorted(class_stages(3, 1, seed=0)[0]) == [0, 1, 2]
    for bad in (0, 11):
        with pytest.raises(ValueError, match="stages must be between 1 and the 10 classes"):
            class_stages(10, bad, seed=0)


def test_targets_are_restricted_to_the_seen_classes() -> None:
    labels = torch.tensor([4, 1, 4, 7])
    assert restrict_targets(labels, [7, 4, 1]).tolist() == [1, 2, 1, 0]
    soft = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]])
    restricted = restrict_targets(soft, [2, 1])
    torch.testing.assert_close(restricted, torch.tensor([[1 / 3, 2 / 3], [0.5, 0.5]]))
    assert seen_mask(labels, [4]).tolist() == [True, False, True, False]
    assert seen_mask(soft, [1]).tolist() == [True, False]  # by the argmax of soft labels


def test_command_end_to_end(synset_dir: Path, data_args: list[str], capsys: pytest.CaptureFixture) -> None:
    report = main([
        "--synset", str(synset_dir), *data_args, "--stages", "3", "--sources", "synthetic", "random", "herding",
        "--repeats", "2", "--epochs", "2", "--network_options", "{width: 8, depth: 1}", "--device", "cpu",
    ])
    run_dir = synset_dir.parent
    assert json.loads((run_dir / "continual.json").read_text()) == report
    assert report["stages"] == 3 and report["memory_per_class"] == 2 and report["recipe"]["lr"] == 0.01
    assert [row["source"] for row in report["results"]] == ["synthetic", "random", "herding"]
    for order in report["class_orders"]:
        assert sorted(c for stage in order for c in stage) == list(range(11))
    assert report["class_orders"][0] != report["class_orders"][1]  # one class order per seed
    for row in report["results"]:
        assert [s["classes"] for s in row["stages"]] == [4, 8, 11]
        for stage in [*row["stages"], row["average"]]:
            assert len(stage["runs"]) == 2
            assert all(0 <= acc <= 100 for acc in stage["runs"]) and 0 <= stage["mean"] <= 100
    table = (run_dir / "continual.md").read_text()
    assert "| memory | 4 classes | 8 classes | 11 classes | average |" in table
    assert all(f"| {source} |" in table for source in ("synthetic", "random", "herding"))
    assert (run_dir / "continual.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shown = capsys.readouterr()
    assert "continual-learning study written to" in shown.out
    assert "continual learning: 100%" in shown.err and "36/36 [" in shown.err  # 2 orders x 3 stages x 3 sources x 2 epochs


def test_memory_larger_than_the_set_is_refused(synset_dir: Path, data_args: list[str]) -> None:
    with pytest.raises(ValueError, match="the distilled set holds fewer than 3 samples"):
        main(["--synset", str(synset_dir), *data_args, "--memory_per_class", "3", "--device", "cpu"])
