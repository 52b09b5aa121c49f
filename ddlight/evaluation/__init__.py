"""Evaluation: train fresh networks on a labelled set (synthetic or a real subset), test on real data.

Plain functions over tensors; they know no dataset and no distiller (see DESIGN.md, "Evaluation
protocol"). Networks are trained and scored with :mod:`ddlight.recipe`. :func:`evaluate_synset` runs
the whole protocol, :func:`write_report` writes ``evaluation.json``/``.md``;
``python -m ddlight.evaluation --help`` runs it on a saved distilled set.
"""

from ddlight.evaluation.coresets import herding, kcenter, random_subset
from ddlight.evaluation.protocol import evaluate, num_classes_of
from ddlight.evaluation.report import REPORT_JSON, REPORT_MD, build_report, markdown_table, write_report
from ddlight.evaluation.suite import (
    BASELINES,
    DEFAULT_LR,
    EMBEDDING_RECIPE,
    baseline_indices,
    budget_ipc,
    embedding_network,
    evaluate_synset,
    full_recipe,
    gap_closure,
    protocol_recipe,
    resolve_lr,
    resolve_recipe,
)

__all__ = [
    "BASELINES",
    "DEFAULT_LR",
    "EMBEDDING_RECIPE",
    "REPORT_JSON",
    "REPORT_MD",
    "baseline_indices",
    "budget_ipc",
    "build_report",
    "embedding_network",
    "evaluate",
    "evaluate_synset",
    "full_recipe",
    "gap_closure",
    "herding",
    "kcenter",
    "markdown_table",
    "num_classes_of",
    "protocol_recipe",
    "random_subset",
    "resolve_lr",
    "resolve_recipe",
    "write_report",
]
