"""``evaluation.json`` and ``evaluation.md``: the report every distillation run writes.

Layout of ``evaluation.json`` (accuracies in percent)::

    {"dataset": "synthetic", "method": "mtt", "ipc": 10, "features": {...},
     "recipe": {"lr": 0.0123, "epochs": 300, ...},
     "results": [{"architecture": "convnet",
                  "synthetic": {"mean": 71.2, "std": 1.3, "runs": [...]},
                  "random": {...}, "herding": {...}, "kcenter": {...},
                  "full": {...}, "g": 0.41},
                 ...]}

``recipe`` is what every network of the report was trained with (``lr`` is the resolved learning rate,
also when ``auto`` was asked; ``seed`` the first network's seed, which also drew the random subset;
``split`` the real split tested); ``full`` (the whole training split) and ``g`` (gap closure
``(synthetic - random) / (full - random)``) are present when the full-data reference was run.

:func:`write_study` writes any other report of the evaluation and downstream studies as ``<stem>.json``,
``<stem>.md`` and ``<stem>.png`` side by side; :func:`errorbar_figure` draws their mean ± std curves.
Figures are built on a bare :class:`matplotlib.figure.Figure` (no pyplot state, no display backend), so
writing them works headless and in worker processes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ddlight.io import atomic_path, atomic_write, load_json, save_json

REPORT_JSON = "evaluation.json"
REPORT_MD = "evaluation.md"
#: Column order of the report (only the columns present in the results are shown).
COLUMNS = ("synthetic", "random", "herding", "kcenter", "full")


def mean_std(summary: Mapping[str, Any], digits: int = 2) -> str:
    """``"mean ± std"`` of a ``{"mean", "std", ...}`` summary."""
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"


def build_report(
    dataset: str,
    method: str,
    ipc: int,
    features: dict[str, Any] | None,
    results: list[dict[str, Any]],
    recipe: dict[str, Any] | None = None,
    samples_per_class: int | None = None,
) -> dict[str, Any]:
    """The ``evaluation.json`` document (see the module docstring for the layout).

    ``ipc`` is the set's storage budget per class (the baselines' size); ``samples_per_class``, recorded when
    it differs, the samples per class the set decodes to (MTT's ``formation``).
    """
    report = {"dataset": dataset, "method": method, "ipc": ipc, "features": features, "results": results}
    if samples_per_class is not None and samples_per_class != ipc:
        report["samples_per_class"] = samples_per_class
    return report | ({"recipe": recipe} if recipe is not None else {})


def markdown_table(report: dict[str, Any]) -> str:
    """Markdown table: one row per architecture, ``mean ± std`` per column present."""
    columns = [c for c in COLUMNS if any(c in row for row in report["results"])]
    with_g = any("g" in row for row in report["results"])
    recipe = report.get("recipe") or {}
    lr = recipe.get("lr")
    full_epochs = recipe.get("full_epochs", recipe.get("epochs"))
    full_note = f" trained {full_epochs} epochs" if full_epochs != recipe.get("epochs") else ""
    decoded = report.get("samples_per_class")
    size = (f"{report['ipc']} samples per class" if decoded is None else
            f"the storage of {report['ipc']} samples per class (the set decodes to {decoded}; the baselines hold {report['ipc']})")
    lines = [
        f"Real-{recipe.get('split', 'test')} accuracy (%) after training on {size} "
        f"({report['dataset']}, {report['method']}), mean ± std over repeats"
        + (f", lr {lr:.4g}" if lr is not None else "") + (f"; full = whole training split{full_note}, "
        "g = (synthetic − random) / (full − random)." if with_g else "."),
        "",
        "| architecture | " + " | ".join(columns + ["g"] * with_g) + " |",
        "|---" * (len(columns) + 1 + with_g) + "|",
    ]
    for row in report["results"]:
        cells = [mean_std(row[c]) if c in row else "–" for c in columns]
        if with_g:
            cells.append(f"{row['g']:.2f}" if row.get("g") is not None else "–")
        lines.append(f"| {row['architecture']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(directory: str | Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``evaluation.json`` and ``evaluation.md`` into ``directory`` atomically.

    Returns:
        The paths of the JSON and Markdown files.
    """
    directory = Path(directory)
    json_path = save_json(directory / REPORT_JSON, report)
    text = markdown_table(report)
    md_path = atomic_write(directory / REPORT_MD, lambda tmp: tmp.write_text(text))
    return json_path, md_path


def read_report(path: str | Path) -> dict[str, Any]:
    """Read an ``evaluation.json``, checking that it is one.

    Raises:
        ValueError: ``path`` is not valid JSON, or not an evaluation report (naming the file and what it lacks).
    """
    document = load_json(path)
    keys = ("dataset", "method", "ipc", "results")
    missing = [key for key in keys if not isinstance(document, dict) or key not in document]
    rows = [] if missing else document["results"]
    if not missing and not (isinstance(rows, list) and all(_is_result_row(row) for row in rows)):
        missing = ["results[].architecture", "results[].synthetic.mean"]
    if missing:
        raise ValueError(
            f"{path} is not an {REPORT_JSON} (it lacks {', '.join(missing)}); pass the {REPORT_JSON} that a "
            "distillation run or python -m ddlight.evaluation writes"
        )
    return document


def _is_result_row(row: Any) -> bool:
    """Whether ``row`` is one architecture's row of ``results`` (with the synthetic set's mean)."""
    return isinstance(row, dict) and "architecture" in row and "mean" in (row.get("synthetic") or {})


def errorbar_figure(
    series: Mapping[str, Sequence[tuple[float, Mapping[str, Any]]]],
    title: str,
    xlabel: str,
    ylabel: str,
    linestyles: Mapping[str, str] | None = None,
    log_x: bool = False,
) -> Figure:
    """Mean ± std summaries against x: one line with error bars per series.

    Args:
        series: Per label, its points ``(x, {"mean", "std", ...})`` in the order of x.
        title: Figure title.
        xlabel: Label of the x axis.
        ylabel: Label of the y axis.
        linestyles: Matplotlib line style per label (default: solid).
        log_x: Log-scaled x axis, ticked at the x values of the points.

    Returns:
        The figure.
    """
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for label, points in series.items():
        ax.errorbar(
            [x for x, _ in points], [s["mean"] for _, s in points], yerr=[s["std"] for _, s in points],
            marker="o", capsize=3, linestyle=(linestyles or {}).get(label, "-"), label=label,
        )
    if log_x:
        ticks = sorted({x for points in series.values() for x, _ in points})
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(ticks, labels=[f"{x:g}" for x in ticks])
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def write_study(
    directory: str | Path, stem: str, report: Any, markdown: str, figure: Figure
) -> tuple[Path, Path, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``directory``, each atomically.

    Args:
        directory: Output folder (created).
        stem: File name without suffix (the study's name).
        report: JSON-serialisable report.
        markdown: Its Markdown tables.
        figure: Its figure.

    Returns:
        The paths of the JSON, Markdown and PNG files.
    """
    directory = Path(directory)
    json_path = save_json(directory / f"{stem}.json", report)
    md_path = atomic_write(directory / f"{stem}.md", lambda tmp: tmp.write_text(markdown))
    png_path = directory / f"{stem}.png"
    with atomic_path(png_path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    return json_path, md_path, png_path
