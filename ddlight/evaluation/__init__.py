"""Evaluation: train fresh networks on a labelled set (synthetic or a real subset), test on real data.

Plain functions over tensors; they know no dataset and no distiller (see DESIGN.md, "Evaluation
protocol"). :func:`evaluate_synset` runs the whole protocol, :func:`write_report` writes
``evaluation.json``/``.md``; ``python -m ddlight.evaluation --help`` runs it on a saved distilled set.
"""

from ddlight.evaluation.coresets import embed, herding, kcenter, random_subset
from ddlight.evaluation.protocol import accuracy, evaluate, fit_network, soft_cross_entropy, summarize, train_and_test
from ddlight.evaluation.report import REPORT_JSON, REPORT_MD, build_report, markdown_table, write_report
from ddlight.evaluation.suite import (
    BASELINES,
    DEFAULT_LR,
    baseline_indices,
    embedding_network,
    evaluate_synset,
    expert_network,
    full_recipe,
    gap_closure,
    protocol_recipe,
    resolve_lr,
)

__all__ = [
    "BASELINES",
    "DEFAULT_LR",
    "REPORT_JSON",
    "REPORT_MD",
    "accuracy",
    "baseline_indices",
    "build_report",
    "embed",
    "embedding_network",
    "evaluate",
    "evaluate_synset",
    "expert_network",
    "fit_network",
    "full_recipe",
    "gap_closure",
    "herding",
    "kcenter",
    "markdown_table",
    "protocol_recipe",
    "random_subset",
    "resolve_lr",
    "soft_cross_entropy",
    "summarize",
    "train_and_test",
    "write_report",
]
