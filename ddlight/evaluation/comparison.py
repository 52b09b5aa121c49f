"""The method comparison: every method's accuracy at every ipc, gathered from the runs' ``evaluation.json``.

    python -m ddlight.evaluation.comparison RUN [RUN ...] [--architecture convnet] [--split test] [--out DIR]

``RUN`` is an ``evaluation.json`` or a folder searched recursively for them (every run below it).
From each report's row of ``--architecture``, a method's cell at an ipc is the mean ± std (population)
over its runs of the per-run mean accuracy of the synthetic set. The real subsets (random, herding,
k-center) and the full training split found in the same reports become rows of their own, counted once per
ipc and evaluation seed (``recipe.seed``): every run evaluated with one seed carries the same ones. Beside
each method, ``g = (method - random) / (full - random)`` of the means, where both references are present.

The reports must share the dataset, the tested split (``recipe.split``; ``--split`` asks for one) and the
feature configuration, or the command stops, naming the files of each kind. Recipes that differ otherwise
(epochs, repeats, a requested learning rate; ``lr: auto`` resolves per set and is not compared) and runs
of one method and ipc sharing an evaluation seed (pooled as if they were seeds) only warn. Writes
``comparison.json``, ``comparison.md`` and ``comparison.png`` (accuracy against ipc, one line per method,
± std) into ``--out`` (default: the current folder).
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ddlight.evaluation.report import COLUMNS, REPORT_JSON, errorbar_figure, mean_std, read_report, write_study
from ddlight.evaluation.suite import BASELINES, gap_closure
from ddlight.recipe import summarize

STEM = "comparison"
FULL = "full"
#: Rows taken from the reports' reference columns rather than from their synthetic set.
REFERENCES = tuple(column for column in COLUMNS if column != "synthetic")
#: Row order: the real subsets, the distillers, any other method (by name), then the full split.
ORDER = (*BASELINES, "dc", "dsa", "dm", "mtt", "rfad")
#: Recipe entries not compared between reports: what is pooled (seed), what is checked (split), and the
#: resolved learning rate (``lr_requested`` is compared in its place).
NOT_COMPARED = ("seed", "split", "lr", "lr_requested")


def find_reports(runs: Sequence[str | Path]) -> list[Path]:
    """The ``evaluation.json`` files named by ``runs``: files as given, folders searched recursively.

    Raises:
        ValueError: A path does not exist, or a folder holds no ``evaluation.json``.
    """
    found: list[Path] = []
    for path in map(Path, runs):
        if path.is_dir():
            files = sorted(path.rglob(REPORT_JSON))
            if not files:
                raise ValueError(f"{path} holds no {REPORT_JSON} (searched recursively)")
            found += files
        elif path.is_file():
            found.append(path)
        else:
            raise ValueError(f"{path} does not exist")
    return list(dict.fromkeys(found))


def _group(reports: Mapping[Path, Any], key: Callable[[Any], Any]) -> dict[str, list[str]]:
    """The files of ``reports`` grouped by ``key`` of their report (values as JSON text)."""
    groups: dict[str, list[str]] = {}
    for path, report in reports.items():
        groups.setdefault(json.dumps(key(report), sort_keys=True), []).append(str(path))
    return groups


def _listing(groups: Mapping[str, list[str]]) -> str:
    """``value: file, file; value: file`` for an error or warning message."""
    return "; ".join(f"{value}: {', '.join(files)}" for value, files in groups.items())


def _require_same(reports: Mapping[Path, dict[str, Any]], what: str, key: Callable[[Any], Any]) -> Any:
    """The value of ``key`` that every report shares.

    Raises:
        ValueError: The reports differ in it (naming the files of each value).
    """
    groups = _group(reports, key)
    if len(groups) > 1:
        raise ValueError(f"the reports mix {what}s, which do not compare ({_listing(groups)}); pass runs of one {what}")
    return key(next(iter(reports.values())))


def _split(report: dict[str, Any]) -> str:
    """The real split the report's networks were tested on (reports without one: the test split)."""
    return (report.get("recipe") or {}).get("split", "test")


def _compared_recipe(report: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """The recipe entries that should agree between the reports.

    The requested lr stands for the resolved one; the ``full_*`` entries count only where the report has a
    full-split reference (the evaluator records them either way).
    """
    recipe = report.get("recipe") or {}
    settings = {
        key: value for key, value in recipe.items()
        if key not in NOT_COMPARED and (FULL in row or not key.startswith(f"{FULL}_"))
    }
    return settings | {"lr": recipe.get("lr_requested", recipe.get("lr"))}


def _warn_recipes(settings: Mapping[Path, dict[str, Any]]) -> None:
    """Warn about every recipe entry on which the reports that record it disagree."""
    differences = []
    for key in sorted(set().union(*settings.values())):
        groups = _group({path: s for path, s in settings.items() if key in s}, lambda s, key=key: s[key])
        if len(groups) > 1:
            differences.append(f"{key} ({_listing(groups)})")
    if differences:
        warnings.warn("the reports were evaluated with different recipes: " + "; ".join(differences), stacklevel=3)


def _architecture_row(report: dict[str, Any], architecture: str) -> dict[str, Any] | None:
    """The report's row of ``architecture`` (None if it has none)."""
    return next((row for row in report["results"] if row["architecture"] == architecture), None)


def _rank(method: str) -> tuple[int, int, str]:
    """Sort key of a method's row: :data:`ORDER`, then other methods by name, the full split last."""
    if method in ORDER:
        return 0, ORDER.index(method), ""
    return (2, 0, "") if method == FULL else (1, 0, method)


def _cell(method: str, ipc: int, seeds: list[Any], values: list[float]) -> dict[str, Any]:
    """One (method, ipc) entry: the mean ± std over runs of the per-run means, and the runs' seeds."""
    return {"method": method, "ipc": ipc, **summarize(values), "seeds": seeds}


def compare(
    reports: Mapping[Path, dict[str, Any]], architecture: str = "convnet", split: str | None = None
) -> dict[str, Any]:
    """The comparison of every method and reference found in ``reports``, per ipc.

    Only the ``mean`` of each summary (``synthetic``, ``random``, ...) of a report is read.

    Args:
        reports: ``evaluation.json`` documents by file (the files name the culprits in errors).
        architecture: The row of every report to compare.
        split: The tested split the reports must be on (None: the one they share).

    Returns:
        ``{"dataset", "split", "architecture", "features", "ipcs", "methods", "results", "sources"}``:
        ``results`` holds one ``{"method", "ipc", "mean", "std", "runs", "seeds"}`` entry per method and ipc
        (``runs``: the per-run means, ``seeds``: their evaluation seeds), in the order of ``methods``, then
        ipc; every method's entry but random's and full's also holds ``g`` (None without both references).

    Raises:
        ValueError: No reports; they mix datasets, splits or feature configurations; they are not on
            ``split``; or some lack an ``architecture`` row (naming the files).
    """
    if not reports:
        raise ValueError(f"no {REPORT_JSON} to compare")
    dataset = _require_same(reports, "dataset", lambda r: r["dataset"])
    shared_split = _require_same(reports, "split", _split)
    features = _require_same(reports, "feature configuration", lambda r: r.get("features"))
    if split is not None and shared_split != split:
        files = ", ".join(map(str, reports))
        raise ValueError(f"the reports were tested on the {shared_split} split, not {split}: {files}")
    rows = {path: _architecture_row(report, architecture) for path, report in reports.items()}
    lacking = [str(path) for path, row in rows.items() if row is None]
    if lacking:
        raise ValueError(f"no {architecture} row in {', '.join(lacking)}; pick another --architecture or other runs")
    _warn_recipes({path: _compared_recipe(report, rows[path]) for path, report in reports.items()})

    distilled: dict[tuple[str, int], list[tuple[Any, float, Path]]] = {}
    references: dict[tuple[str, int], dict[Any, float]] = {}
    for path, report in reports.items():
        row, ipc, seed = rows[path], report["ipc"], (report.get("recipe") or {}).get("seed")
        distilled.setdefault((report["method"], ipc), []).append((seed, row["synthetic"]["mean"], path))
        for name in REFERENCES:
            if name in row:  # one value per ipc and seed: every run of that seed carries the same
                references.setdefault((name, ipc), {}).setdefault(seed, row[name]["mean"])
    for (method, ipc), runs in distilled.items():
        seeds = [seed for seed, _, _ in runs]
        if len(set(seeds)) < len(seeds):
            warnings.warn(
                f"{method} at ipc {ipc}: runs share an evaluation seed ({', '.join(f'{s}: {p}' for s, _, p in runs)}); "
                "they are pooled as if they were seeds",
                stacklevel=2,
            )

    cells = {key: _cell(*key, [s for s, _, _ in runs], [v for _, v, _ in runs]) for key, runs in distilled.items()}
    cells |= {key: _cell(*key, list(per_seed), list(per_seed.values())) for key, per_seed in references.items()}
    for (method, ipc), cell in cells.items():
        if method not in ("random", FULL):
            random, full = cells.get(("random", ipc)), cells.get((FULL, ipc))
            cell["g"] = gap_closure(cell["mean"], random["mean"], full["mean"]) if random and full else None
    methods = sorted({method for method, _ in cells}, key=_rank)
    return {
        "dataset": dataset,
        "split": shared_split,
        "architecture": architecture,
        "features": features,
        "ipcs": sorted({ipc for _, ipc in cells}),
        "methods": methods,
        "results": [cells[key] for key in sorted(cells, key=lambda k: (_rank(k[0]), k[1]))],
        "sources": [str(path) for path in reports],
    }


def markdown(comparison: dict[str, Any]) -> str:
    """Markdown table: one row per method, ``mean ± std (n=runs)`` per ipc, and ``g`` where any exists."""
    ipcs = comparison["ipcs"]
    cells = {(c["method"], c["ipc"]): c for c in comparison["results"]}
    with_g = any(c.get("g") is not None for c in comparison["results"])
    header = [h for ipc in ipcs for h in (f"ipc {ipc}", "g")[: 1 + with_g]]
    notes = []
    baselines = [method for method in BASELINES if method in comparison["methods"]]
    if baselines:
        notes.append(f"{', '.join(baselines)}: real subsets of the same size")
    if FULL in comparison["methods"]:
        notes.append("full: the whole training split")
    if with_g:
        notes.append("g = (method − random) / (full − random) of the means")
    lines = [
        f"Real-{comparison['split']} accuracy (%) of a {comparison['architecture']} trained on ipc samples per class "
        f"({comparison['dataset']}), mean ± std over runs (n: runs, one per evaluation seed)"
        + "".join(f"; {note}" for note in notes) + ".",
        "",
        "| method | " + " | ".join(header) + " |",
        "|---" * (len(header) + 1) + "|",
    ]
    for method in comparison["methods"]:
        row = []
        for ipc in ipcs:
            cell = cells.get((method, ipc))
            row.append(f"{mean_std(cell)} (n={len(cell['runs'])})" if cell else "–")
            if with_g:
                row.append(f"{cell['g']:.2f}" if cell and cell.get("g") is not None else "–")
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def figure(comparison: dict[str, Any]) -> Figure:
    """Accuracy against ipc (log scale), one line (± std) per method; real subsets dashed, full dotted."""
    series = {method: [] for method in comparison["methods"]}
    for cell in comparison["results"]:
        series[cell["method"]].append((cell["ipc"], cell))
    return errorbar_figure(
        series, f"{comparison['dataset']}, {comparison['architecture']}", "samples per class (ipc)",
        f"{comparison['split']} accuracy (%)", linestyles={FULL: ":"} | dict.fromkeys(BASELINES, "--"), log_x=True,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line (``argv``: for tests): read the reports, write and print the comparison."""
    parser = argparse.ArgumentParser(prog="python -m ddlight.evaluation.comparison", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help=f"{REPORT_JSON} files or folders searched recursively")
    parser.add_argument("--architecture", default="convnet", help="the row of the reports to compare")
    parser.add_argument("--split", choices=["test", "val"], default=None,
                        help="the tested split the reports must be on (default: the one they share)")
    parser.add_argument("--out", type=Path, default=Path("."), help="output folder (default: the current folder)")
    args = parser.parse_args(argv)
    try:
        reports = {path: read_report(path) for path in find_reports(args.runs)}
        comparison = compare(reports, args.architecture, args.split)
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    text = markdown(comparison)
    paths = write_study(args.out, STEM, comparison, text, figure(comparison))
    print(text, end="")
    print(f"comparison written to {', '.join(map(str, paths))}")
    return comparison


if __name__ == "__main__":
    main()
