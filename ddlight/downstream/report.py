"""Writing a downstream study: ``<study>.json``, ``<study>.md`` and ``<study>.png`` side by side.

Figures are built on a bare :class:`matplotlib.figure.Figure` (no pyplot state, no display backend), so
writing them works headless and in worker processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ddlight.io import atomic_path, atomic_write, save_json


def mean_std(summary: Mapping[str, Any], digits: int = 2) -> str:
    """``"mean ± std"`` of a ``{"mean", "std", ...}`` summary."""
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"


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
