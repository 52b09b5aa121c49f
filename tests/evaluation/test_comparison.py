"""``python -m ddlight.evaluation.comparison``: the method table from the runs' evaluation.json files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from ddlight.evaluation.comparison import compare, find_reports, main
from ddlight.evaluation.report import build_report, read_report, write_report

FEATURES = {"name": "fdmfcc", "n_mfcc": 20}
#: Per-run synthetic means: SYNTHETIC[method][ipc] = (seed 0, seed 1).
SYNTHETIC = {"mtt": {1: (70.0, 74.0), 10: (84.0, 88.0)}, "dm": {1: (60.0, 62.0), 10: (80.0, 82.0)}}
#: Per-seed references: REFERENCES[name][ipc] = (seed 0, seed 1); every run of a seed carries them.
REFERENCES = {
    "random": {1: (50.0, 54.0), 10: (70.0, 74.0)},
    "herding": {1: (55.0, 57.0), 10: (79.0, 81.0)},
    "kcenter": {1: (53.0, 53.0), 10: (72.0, 72.0)},
    "full": {1: (90.0, 94.0), 10: (90.0, 94.0)},
}


def summary(mean: float) -> dict[str, Any]:
    """A summary whose std and runs the comparison must not read (only the mean counts)."""
    return {"mean": mean, "std": 9.0, "runs": [mean - 9, mean + 9]}


def write_run(folder: Path, method: str, ipc: int, seed: int, dataset: str = "synthetic", **recipe: Any) -> Path:
    """An evaluation.json as a distillation run writes it, with its seed's baselines and full split."""
    row = {"architecture": "convnet", "synthetic": summary(SYNTHETIC[method][ipc][seed])}
    row |= {name: summary(values[ipc][seed]) for name, values in REFERENCES.items()}
    settings = {"lr": 0.01 + seed / 100, "lr_requested": "auto", "epochs": 300, "seed": seed, "split": "test"} | recipe
    report = build_report(dataset, method, ipc, FEATURES, [row], settings)
    return write_report(folder / f"{method}_ipc{ipc}_seed{seed}" / "version_0", report)[0]


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """2 methods x 2 ipc x 2 seeds, each report with the baselines and full split of its ipc and seed."""
    for method in SYNTHETIC:
        for ipc in (1, 10):
            for seed in (0, 1):
                write_run(tmp_path / "runs", method, ipc, seed)
    return tmp_path / "runs"


def test_table_json_markdown_and_figure(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the resolved lr differs per run (auto): no warning
        comparison = main([str(runs), "--out", str(out)])
    assert json.loads((out / "comparison.json").read_text()) == comparison
    assert comparison["dataset"] == "synthetic" and comparison["split"] == "test" and comparison["features"] == FEATURES
    assert comparison["ipcs"] == [1, 10]
    assert comparison["methods"] == ["random", "herding", "kcenter", "dm", "mtt", "full"]
    assert len(comparison["sources"]) == 8
    cells = {(c["method"], c["ipc"]): c for c in comparison["results"]}
    assert len(cells) == 12
    # the distilled sets: mean ± population std over the runs of the per-run means, g of the means
    assert cells["mtt", 1] == {
        "method": "mtt", "ipc": 1, "mean": 72.0, "std": 2.0, "runs": [70.0, 74.0], "seeds": [0, 1], "g": 0.5
    }
    assert cells["dm", 1] | {"runs": None} == {"method": "dm", "ipc": 1, "mean": 61.0, "std": 1.0, "runs": None,
                                               "seeds": [0, 1], "g": 0.225}
    assert (cells["mtt", 10]["mean"], cells["mtt", 10]["std"], cells["mtt", 10]["g"]) == (86.0, 2.0, 0.7)
    assert (cells["dm", 10]["mean"], cells["dm", 10]["g"]) == (81.0, 0.45)
    # the references: once per ipc and seed although two methods' runs carry each
    assert cells["random", 1] == {"method": "random", "ipc": 1, "mean": 52.0, "std": 2.0, "runs": [50.0, 54.0],
                                  "seeds": [0, 1]}
    assert cells["full", 10] == {"method": "full", "ipc": 10, "mean": 92.0, "std": 2.0, "runs": [90.0, 94.0],
                                 "seeds": [0, 1]}
    assert (cells["herding", 10]["mean"], cells["herding", 10]["g"]) == (80.0, 0.4)
    assert (cells["kcenter", 10]["mean"], cells["kcenter", 10]["std"], cells["kcenter", 10]["g"]) == (72.0, 0.0, 0.0)

    lines = (out / "comparison.md").read_text().splitlines()
    table = lines[lines.index("| method | ipc 1 | g | ipc 10 | g |"):]
    assert table[2:] == [
        "| random | 52.00 ± 2.00 (n=2) | – | 72.00 ± 2.00 (n=2) | – |",
        "| herding | 56.00 ± 1.00 (n=2) | 0.10 | 80.00 ± 1.00 (n=2) | 0.40 |",
        "| kcenter | 53.00 ± 0.00 (n=2) | 0.03 | 72.00 ± 0.00 (n=2) | 0.00 |",
        "| dm | 61.00 ± 1.00 (n=2) | 0.23 | 81.00 ± 1.00 (n=2) | 0.45 |",
        "| mtt | 72.00 ± 2.00 (n=2) | 0.50 | 86.00 ± 2.00 (n=2) | 0.70 |",
        "| full | 92.00 ± 2.00 (n=2) | – | 92.00 ± 2.00 (n=2) | – |",
    ]
    assert lines[0] == (
        "Real-test accuracy (%) of a convnet trained on ipc samples per class (synthetic), mean ± std over runs "
        "(n: runs, one per evaluation seed); random, herding, kcenter: real subsets of the same size; full: the whole "
        "training split; g = (method − random) / (full − random) of the means."
    )
    assert capsys.readouterr().out.startswith(lines[0])
    png = (out / "comparison.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_files_and_folders_are_found_once(runs: Path) -> None:
    one = runs / "mtt_ipc1_seed0" / "version_0" / "evaluation.json"
    found = find_reports([one, runs / "mtt_ipc1_seed0", runs])
    assert found[0] == one and len(found) == 8
    empty = runs.parent / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"{empty} holds no evaluation.json"):
        find_reports([runs, empty])
    with pytest.raises(ValueError, match="does not exist"):
        find_reports([runs / "missing.json"])


def test_without_references_there_is_no_g(tmp_path: Path) -> None:
    path = write_run(tmp_path, "mtt", 1, 0)
    report = read_report(path)
    report["results"] = [{"architecture": "convnet", "synthetic": summary(70.0)}]
    comparison = compare({path: report})
    assert comparison["results"] == [{"method": "mtt", "ipc": 1, "mean": 70.0, "std": 0.0, "runs": [70.0], "seeds": [0],
                                      "g": None}]


def test_mixing_datasets_is_refused_naming_the_files(runs: Path) -> None:
    other = write_run(runs.parent / "other", "mtt", 1, 0, dataset="us8k")
    reports = {path: read_report(path) for path in find_reports([runs, other])}
    with pytest.raises(ValueError, match="mix datasets") as error:
        compare(reports)
    assert str(other) in str(error.value)
    assert str(runs / "dm_ipc1_seed0" / "version_0" / "evaluation.json") in str(error.value)


def test_mixing_splits_and_features_is_refused(runs: Path) -> None:
    val = write_run(runs.parent / "val", "mtt", 1, 0, split="val")
    reports = {path: read_report(path) for path in find_reports([runs, val])}
    with pytest.raises(ValueError, match=f"mix splits.*{val}"):
        compare(reports)
    with pytest.raises(ValueError, match="tested on the test split, not val"):
        compare({path: report for path, report in reports.items() if path != val}, split="val")
    reports[val]["recipe"]["split"] = "test"
    reports[val]["features"] = FEATURES | {"n_mfcc": 40}
    with pytest.raises(ValueError, match=f"mix feature configurations.*{val}"):
        compare(reports)


def test_a_missing_architecture_is_refused(runs: Path) -> None:
    reports = {path: read_report(path) for path in find_reports([runs])}
    with pytest.raises(ValueError, match="no resnet18 row in .*mtt_ipc1_seed0"):
        compare(reports, architecture="resnet18")


def test_different_recipes_and_shared_seeds_warn(runs: Path) -> None:
    longer = write_run(runs.parent / "longer", "mtt", 1, 1, epochs=100)
    reports = {path: read_report(path) for path in find_reports([runs, longer])}
    with pytest.warns(UserWarning) as caught:
        comparison = compare(reports)
    messages = [str(w.message) for w in caught]
    recipes = [m for m in messages if m.startswith("the reports were evaluated with different recipes: epochs (300: ")]
    assert len(recipes) == 1 and recipes[0].endswith(f"; 100: {longer})"), messages
    seeds = [m for m in messages if m.startswith("mtt at ipc 1: runs share an evaluation seed")]
    assert len(seeds) == 1 and str(longer) in seeds[0], messages
    assert not any("lr (" in m for m in messages)  # lr auto resolves per set
    assert next(c for c in comparison["results"] if (c["method"], c["ipc"]) == ("mtt", 1))["seeds"] == [0, 1, 1]


def test_a_json_that_is_no_evaluation_is_refused_naming_it(runs: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    notes = tmp_path / "notes.json"
    notes.write_text(json.dumps({"dataset": "synthetic", "accuracy": 80}))
    with pytest.raises(SystemExit) as exit_info:
        main([str(runs), str(notes), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"{notes} is not an evaluation.json (it lacks method, ipc, results)" in error
    assert not (tmp_path / "out").exists()
