"""Pool-based active learning: acquisition functions, the acquisition loop and its reports."""

from ddlight.active_learning.acquisition import (
    ACQUISITIONS,
    acquire,
    acquisition_scores,
    bald,
    insert_mc_dropout,
    kcenter_greedy,
    margin,
    max_entropy,
    mc_dropout_probs,
    random_scores,
    score_pool_sharded,
    select_top_k,
    variation_ratios,
)
from ddlight.active_learning.loop import ActiveLearner, initial_indices, resolve_budgets, train_network
from ddlight.active_learning.report import build_results, markdown_tables, write_results

__all__ = [
    "ACQUISITIONS",
    "ActiveLearner",
    "acquire",
    "acquisition_scores",
    "bald",
    "build_results",
    "initial_indices",
    "insert_mc_dropout",
    "kcenter_greedy",
    "margin",
    "markdown_tables",
    "max_entropy",
    "mc_dropout_probs",
    "random_scores",
    "resolve_budgets",
    "score_pool_sharded",
    "select_top_k",
    "train_network",
    "variation_ratios",
    "write_results",
]
