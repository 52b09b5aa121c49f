"""The DD-vs-AL comparison table of Gudur & Thomaz: distilled sets next to active-learning budgets.

    python -m ddlight.active_learning.compare --al runs/al_us8k/.../al_results.json \\
        --distilled runs/rfad_us8k/.../evaluation.json [more evaluation.json ...] --out table.md

For each architecture present on both sides it lists the accuracy of every AL strategy at the budgets
of at least ``--min-percent`` % of the pool (20–60 % in the paper) next to each distilled set at its
tiny share of the pool, ``ipc x classes / pool size``, under the "Total Training Data" row (the same
network trained on the whole pool, from the AL run), and the **reduction factor** in labelled
samples:

    reduction = n_AL / n_DD

where ``n_DD = ipc x classes`` is the size of the distilled set and ``n_AL`` is the *smallest* AL
budget (among all budgets of the run, any %) whose mean accuracy is at least the distilled set's mean
accuracy minus ``--tolerance`` percentage points (default 1). If no AL budget gets there, the factor is
a lower bound ``> n_max / n_DD``; if already the smallest budget does, an upper bound ``<= n_min / n_DD``.

Both sides must follow the same evaluation protocol for the factor to mean anything: the same
architectures (rows are matched by name), the same test split, the same number of repeats and the
same training recipe per network (both sides train with :mod:`ddlight.recipe`; set
``model.init_args.recipe`` of the AL config to the distiller's evaluation ``recipe``). The table prints
the repeats found on each side and warns when they differ.
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ddlight.active_learning.report import STRATEGY_NAMES, TOTAL, format_percent
from ddlight.io import atomic_write, load_json


def reduction_factor(
    points: Sequence[dict[str, Any]], distilled_size: int, distilled_accuracy: float, tolerance: float
) -> dict[str, Any]:
    """How many times more labelled samples AL needs to reach the distilled set's accuracy.

    Args:
        points: AL points ``{"labelled", "mean", ...}`` of one strategy and network.
        distilled_size: ``ipc x classes``.
        distilled_accuracy: Mean accuracy of the distilled set (percent).
        tolerance: Accepted shortfall of AL in percentage points.

    Returns:
        ``{"factor", "bound", "labelled"}``: ``bound`` is ``"="`` (``labelled`` is the smallest budget
        reaching the target and a smaller one did not), ``"<="`` (the smallest budget already reaches
        it) or ``">"`` (no budget does; ``labelled`` is the largest).
    """
    points = sorted(points, key=lambda p: p["labelled"])
    reaching = [p["labelled"] for p in points if p["mean"] >= distilled_accuracy - tolerance]
    if not reaching:
        labelled, bound = points[-1]["labelled"], ">"
    else:
        labelled = reaching[0]
        bound = "<=" if labelled == points[0]["labelled"] else "="
    return {"factor": labelled / distilled_size, "bound": bound, "labelled": labelled}


def compare(
    al: Sequence[dict[str, Any]],
    distilled: Sequence[dict[str, Any]],
    min_percent: float = 20.0,
    tolerance: float = 1.0,
) -> list[dict[str, Any]]:
    """Rows of the comparison: distilled sets and AL budgets per architecture, with reduction factors.

    Args:
        al: ``al_results.json`` documents (one dataset).
        distilled: ``evaluation.json`` documents of the same dataset.
        min_percent: Smallest AL budget (percent of the pool) listed in the table.
        tolerance: See :func:`reduction_factor`.

    Returns:
        One dict per architecture: ``architecture``, ``total`` (the total-training-data summary of the
        AL run, or ``None`` if it has none), ``distilled`` (label, size, percent, accuracy, repeats)
        and ``al`` (strategy, points, repeats, reductions: one per distilled set).

    Raises:
        ValueError: If the documents are of different datasets or share no architecture.
    """
    datasets = {doc["dataset"] for doc in [*al, *distilled]}
    if len(datasets) != 1:
        raise ValueError(f"all results must be of one dataset, got {sorted(datasets)}")
    pool_size, num_classes = al[0]["pool_size"], al[0]["num_classes"]
    rows = []
    architectures = dict.fromkeys(r["architecture"] for doc in distilled for r in doc["results"])
    for arch in architectures:
        sets = [
            {
                "label": f"{doc.get('method', 'distilled')} (ipc {doc['ipc']})",
                "size": doc["ipc"] * num_classes,
                "percent": 100.0 * doc["ipc"] * num_classes / pool_size,
                "accuracy": row["synthetic"],
                "repeats": len(row["synthetic"].get("runs", [])),
            }
            for doc in distilled
            for row in doc["results"]
            if row["architecture"] == arch and "synthetic" in row
        ]
        strategies = [
            {
                "strategy": res["strategy"],
                "points": [p for p in res["points"] if p["percent"] >= min_percent],
                "repeats": doc["protocol"].get("repeats"),
                "reductions": [
                    reduction_factor(res["points"], s["size"], s["accuracy"]["mean"], tolerance) for s in sets
                ],
            }
            for doc in al
            for res in doc["results"]
            if res["network"] == arch
        ]
        total = next((t for doc in al for t in doc.get("total", []) if t["network"] == arch), None)
        if sets and strategies:
            rows.append({"architecture": arch, "total": total, "distilled": sets, "al": strategies})
    if not rows:
        raise ValueError("the AL and distilled results share no architecture; evaluate both on the same networks")
    repeats = {s["repeats"] for row in rows for s in row["distilled"]} | {
        a["repeats"] for row in rows for a in row["al"]
    }
    if len(repeats) > 1:
        warnings.warn(f"the two sides use different numbers of repeats {sorted(repeats)}", stacklevel=2)
    return rows


def _factor(reduction: dict[str, Any]) -> str:
    bound = "" if reduction["bound"] == "=" else reduction["bound"] + " "
    return f"{bound}{reduction['factor']:.3g}× ({reduction['labelled']})"


def _accuracy(summary: dict[str, Any]) -> str:
    return f"{summary['mean']:.2f} ± {summary['std']:.2f}"


def markdown(rows: Sequence[dict[str, Any]], dataset: str, tolerance: float) -> str:
    """The comparison as Markdown: one table per architecture."""
    lines = [
        f"# Dataset distillation vs active learning on {dataset}",
        "",
        "Test accuracy (%), mean ± std over repeats. Reduction = n_AL / n_DD, n_AL = smallest AL budget "
        f"with mean accuracy ≥ distilled accuracy − {tolerance:g} pp (its size in brackets; '>' none "
        "reached it, '<=' the smallest budget already did).",
        "",
    ]
    for row in rows:
        sets = row["distilled"]
        header = ["Method", "% Samples", "Samples", "Accuracy", "Repeats"]
        header += [f"Reduction vs {s['label']}" for s in sets]
        lines += [f"## {row['architecture']}", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        if row["total"]:
            total = row["total"]
            cells = [STRATEGY_NAMES[TOTAL], format_percent(total["percent"]), str(total["labelled"])]
            cells += [_accuracy(total), str(len(total["runs"]))] + ["–"] * len(sets)
            lines.append("| " + " | ".join(cells) + " |")
        for s in sets:
            cells = [f"Distilled {s['label']}", format_percent(s["percent"]), str(s["size"])]
            cells += [_accuracy(s["accuracy"]), str(s["repeats"])] + ["–"] * len(sets)
            lines.append("| " + " | ".join(cells) + " |")
        for strategy in row["al"]:
            name = STRATEGY_NAMES.get(strategy["strategy"], strategy["strategy"])
            for i, point in enumerate(sorted(strategy["points"], key=lambda p: -p["labelled"])):
                cells = [name if i == 0 else "", format_percent(point["percent"]), str(point["labelled"])]
                cells += [_accuracy(point), str(strategy["repeats"])]
                cells += [_factor(r) if i == 0 else "" for r in strategy["reductions"]]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


#: Keys that tell an ``al_results.json`` and an ``evaluation.json`` apart from any other JSON file.
AL_KEYS = ("dataset", "pool_size", "num_classes", "protocol", "results")
EVALUATION_KEYS = ("dataset", "ipc", "results")


def load_report(path: Path, keys: Sequence[str], kind: str, writer: str) -> dict[str, Any]:
    """Read a result file, checking that it is the ``kind`` of report ``compare`` needs.

    Raises:
        ValueError: Naming the file, what it lacks and which file to pass instead.
    """
    document = load_json(path)
    missing = [key for key in keys if not isinstance(document, dict) or key not in document]
    if missing:
        raise ValueError(f"{path} is not an {kind} (it lacks {missing}); pass the {kind} that {writer} writes")
    return document


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: read the JSON files, write the Markdown table (and print it)."""
    parser = argparse.ArgumentParser(prog="python -m ddlight.active_learning.compare", description=__doc__.split("\n")[0])
    parser.add_argument("--al", nargs="+", required=True, type=Path, help="al_results.json file(s)")
    parser.add_argument("--distilled", nargs="+", required=True, type=Path, help="evaluation.json file(s)")
    parser.add_argument("--out", type=Path, required=True, help="Markdown file to write")
    parser.add_argument("--min-percent", type=float, default=20.0, help="smallest AL budget listed (%% of pool)")
    parser.add_argument("--tolerance", type=float, default=1.0, help="accepted AL shortfall (percentage points)")
    args = parser.parse_args(argv)
    if not math.isfinite(args.tolerance) or args.tolerance < 0:
        parser.error("--tolerance must be a non-negative number")
    al_writer = "an active-learning run (configs/al_<dataset>.yaml)"
    al = [load_report(p, AL_KEYS, "al_results.json", al_writer) for p in args.al]
    distilled = [load_report(p, EVALUATION_KEYS, "evaluation.json", "a distillation run") for p in args.distilled]
    rows = compare(al, distilled, args.min_percent, args.tolerance)
    text = markdown(rows, al[0]["dataset"], args.tolerance)
    atomic_write(args.out, lambda tmp: tmp.write_text(text))
    print(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
