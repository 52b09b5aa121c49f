"""evaluation.json layout and evaluation.md table."""

from __future__ import annotations

import json
from pathlib import Path

from ddlight.evaluation import build_report, write_report


def result(mean: float) -> dict:
    return {"mean": mean, "std": 1.0, "runs": [mean - 1, mean + 1]}


def test_layout_is_exact(tmp_path: Path) -> None:
    results = [
        {"architecture": a, "synthetic": result(70), "random": result(40), "herding": result(45), "kcenter": result(42)}
        for a in ("convnet", "resnet18")
    ]
    report = build_report("synthetic", "mtt", 10, {"name": "fdmfcc"}, results)
    json_path, md_path = write_report(tmp_path, report)
    assert json_path == tmp_path / "evaluation.json" and md_path == tmp_path / "evaluation.md"
    loaded = json.loads(json_path.read_text())
    assert list(loaded) == ["dataset", "method", "ipc", "features", "results"]
    assert loaded["results"][1]["architecture"] == "resnet18"
    assert list(loaded["results"][0]) == ["architecture", "synthetic", "random", "herding", "kcenter"]
    assert loaded["results"][0]["synthetic"] == {"mean": 70, "std": 1.0, "runs": [69, 71]}
    lines = md_path.read_text().splitlines()
    assert "| architecture | synthetic | random | herding | kcenter |" in lines
    assert "| convnet | 70.00 ± 1.00 | 40.00 ± 1.00 | 45.00 ± 1.00 | 42.00 ± 1.00 |" in lines
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files
