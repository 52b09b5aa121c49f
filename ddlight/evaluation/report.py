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
also when ``auto`` was asked); ``full`` (the whole training split) and ``g`` (gap closure
``(synthetic - random) / (full - random)``) are present when the full-data reference was run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddlight.io import atomic_write, save_json

REPORT_JSON = "evaluation.json"
REPORT_MD = "evaluation.md"
#: Column order of the report (only the columns present in the results are shown).
COLUMNS = ("synthetic", "random", "herding", "kcenter", "full")


def build_report(
    dataset: str,
    method: str,
    ipc: int,
    features: dict[str, Any] | None,
    results: list[dict[str, Any]],
    recipe: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``evaluation.json`` document (see the module docstring for the layout)."""
    report = {"dataset": dataset, "method": method, "ipc": ipc, "features": features, "results": results}
    return report | ({"recipe": recipe} if recipe is not None else {})


def markdown_table(report: dict[str, Any]) -> str:
    """Markdown table: one row per architecture, ``mean ± std`` per column present."""
    columns = [c for c in COLUMNS if any(c in row for row in report["results"])]
    with_g = any("g" in row for row in report["results"])
    recipe = report.get("recipe") or {}
    lr = recipe.get("lr")
    full_epochs = recipe.get("full_epochs", recipe.get("epochs"))
    full_note = f" trained {full_epochs} epochs" if full_epochs != recipe.get("epochs") else ""
    lines = [
        f"Real-{recipe.get('split', 'test')} accuracy (%) after training on {report['ipc']} samples per class "
        f"({report['dataset']}, {report['method']}), mean ± std over repeats"
        + (f", lr {lr:.4g}" if lr is not None else "") + (f"; full = whole training split{full_note}, "
        "g = (synthetic − random) / (full − random)." if with_g else "."),
        "",
        "| architecture | " + " | ".join(columns + ["g"] * with_g) + " |",
        "|---" * (len(columns) + 1 + with_g) + "|",
    ]
    for row in report["results"]:
        cells = [f"{row[c]['mean']:.2f} ± {row[c]['std']:.2f}" if c in row else "–" for c in columns]
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
