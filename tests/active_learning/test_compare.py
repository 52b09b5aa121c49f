"""The DD-vs-AL comparison command on hand-made result files with known reduction factors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ddlight.active_learning.compare import compare, main, reduction_factor
from ddlight.io import save_json


def point(labelled: int, mean: float, pool: int = 1000) -> dict:
    return {"labelled": labelled, "percent": 100 * labelled / pool, "mean": mean, "std": 1.0, "runs": [mean] * 3}


AL = {
    "dataset": "toy", "features": None, "pool_size": 1000, "num_classes": 10, "protocol": {"repeats": 3},
    "total": [
        {"network": "cnn4", "labelled": 1000, "percent": 100.0, "mean": 80.0, "std": 0.5, "runs": [79.5, 80.0, 80.5]}
    ],
    "results": [
        {"network": "cnn4", "strategy": "bald",
         "points": [point(10, 20.0), point(200, 55.0), point(300, 61.0), point(400, 64.0), point(600, 70.0)]},
        {"network": "cnn4", "strategy": "random",
         "points": [point(10, 20.0), point(200, 50.0), point(300, 55.0), point(400, 58.0), point(600, 59.0)]},
    ],
}
DISTILLED = {
    "dataset": "toy", "method": "rfad", "ipc": 2, "features": None,
    "results": [{"architecture": "cnn4", "synthetic": {"mean": 62.0, "std": 0.5, "runs": [61.5, 62.0, 62.5]},
                 "random": {"mean": 30.0, "std": 1.0, "runs": [29, 30, 31]}}],
}


def test_reduction_factor_definition() -> None:
    points = AL["results"][0]["points"]
    # first budget with mean >= 62 - 1 is 300 labelled samples; the distilled set has 2 x 10 = 20
    assert reduction_factor(points, 20, 62.0, 1.0) == {"factor": 15.0, "bound": "=", "labelled": 300}
    assert reduction_factor(points, 20, 62.0, 0.0) == {"factor": 20.0, "bound": "=", "labelled": 400}
    assert reduction_factor(points, 20, 90.0, 1.0) == {"factor": 30.0, "bound": ">", "labelled": 600}
    assert reduction_factor(points, 20, 10.0, 1.0) == {"factor": 0.5, "bound": "<=", "labelled": 10}


def test_compare_rows() -> None:
    (row,) = compare([AL], [DISTILLED], min_percent=20)
    assert row["architecture"] == "cnn4" and row["total"]["mean"] == 80.0
    (distilled,) = row["distilled"]
    assert distilled["size"] == 20 and distilled["percent"] == pytest.approx(2.0) and distilled["repeats"] == 3
    bald, random = row["al"]
    assert [p["labelled"] for p in bald["points"]] == [200, 300, 400, 600]  # budgets below 20 % left out
    assert bald["reductions"][0]["factor"] == 15.0
    assert random["reductions"][0] == {"factor": 30.0, "bound": ">", "labelled": 600}


def test_compare_rejects_mismatches() -> None:
    with pytest.raises(ValueError, match="one dataset"):
        compare([AL], [{**DISTILLED, "dataset": "other"}])
    other = {**DISTILLED, "results": [{**DISTILLED["results"][0], "architecture": "resnet18"}]}
    with pytest.raises(ValueError, match="share no architecture"):
        compare([AL], [other])
    with pytest.warns(UserWarning, match="different numbers of repeats"):
        compare([{**AL, "protocol": {"repeats": 5}}], [DISTILLED])


def test_command_writes_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    al, distilled, out = tmp_path / "al_results.json", tmp_path / "evaluation.json", tmp_path / "table.md"
    save_json(al, AL)
    save_json(distilled, DISTILLED)
    main(["--al", str(al), "--distilled", str(distilled), "--out", str(out)])
    lines = out.read_text().splitlines()
    assert lines[0] == "# Dataset distillation vs active learning on toy"
    total = lines.index("| Total Training Data | 100% | 1000 | 80.00 ± 0.50 | 3 | – |")
    assert lines[total + 1].startswith("| Distilled rfad (ipc 2) |")
    assert "| Distilled rfad (ipc 2) | 2% | 20 | 62.00 ± 0.50 | 3 | – |" in lines
    assert "| BALD | 60% | 600 | 70.00 ± 1.00 | 3 | 15× (300) |" in lines
    assert "| Random | 60% | 600 | 59.00 ± 1.00 | 3 | > 30× (600) |" in lines
    assert "|  | 20% | 200 | 55.00 ± 1.00 | 3 |  |" in lines
    assert f"wrote {out}" in capsys.readouterr().out
    assert json.loads(al.read_text()) == AL
