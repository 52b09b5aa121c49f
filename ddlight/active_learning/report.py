"""``al_results.json``, ``al_results.md`` and ``al_results.png``: what an active-learning run writes.

Layout of ``al_results.json`` (accuracies and shares in percent)::

    {"dataset": "synthetic", "features": {...}, "pool_size": 1100, "num_classes": 11,
     "protocol": {"budgets": [20, 30, 40, 60], "increment": 5, "network_dropout": "mc",
                  "schedule": [11, 66, ...], "skipped_budgets": [...], "repeats": 3, ...},
     "total": [{"network": "cnn4", "labelled": 1100, "percent": 100.0,
                "mean": 96.1, "std": 0.4, "runs": [...]}, ...],
     "results": [{"network": "cnn4", "strategy": "bald",
                  "points": [{"labelled": 220, "percent": 20.0,
                              "mean": 71.2, "std": 1.3, "runs": [...]}, ...]},
                 ...]}

``total`` is the "Total Training Data" row: the same network and recipe trained on the whole pool.
The Markdown has one table per network in the layout of Tables 1–2 of Gudur & Thomaz: the total
training data first, then one block of rows per strategy, budgets from largest to smallest,
"% Samples" next to "Accuracy"; under it the protocol (increment, network dropout) and the budgets
skipped for holding fewer samples than classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddlight.io import atomic_path, atomic_write, save_json
from ddlight.recipe import summarize

RESULTS_JSON = "al_results.json"
RESULTS_MD = "al_results.md"
RESULTS_PNG = "al_results.png"

#: Strategy name of the records of the total-training-data row (every network trained on the whole pool).
TOTAL = "total"

#: Display names of the strategies and of the total-training-data row, as in the paper.
STRATEGY_NAMES = {
    TOTAL: "Total Training Data",
    "max_entropy": "Max Entropy",
    "variation_ratios": "Variation Ratios",
    "margin": "Margin",
    "bald": "BALD",
    "random": "Random",
    "kcenter": "k-Center (core set)",
}


def build_results(
    dataset: str,
    features: dict[str, Any] | None,
    pool_size: int,
    num_classes: int,
    records: list[dict[str, Any]],
    protocol: dict[str, Any],
) -> dict[str, Any]:
    """The ``al_results.json`` document from the per-run records of :class:`~ddlight.active_learning.ActiveLearner`.

    Args:
        dataset: Dataset name.
        features: Feature configuration.
        pool_size: Number of pool (training) items.
        num_classes: Number of classes.
        records: ``{"network", "strategy", "repeat", "labelled", "accuracy"}`` per run and budget;
            strategy :data:`TOTAL` for the total-training-data row.
        protocol: Settings of the study (budgets, increment, network dropout, repeats, optimiser...).

    Returns:
        The document (see the module docstring).
    """
    total: dict[str, list[float]] = {}
    grouped: dict[tuple[str, str], dict[int, list[float]]] = {}
    for record in records:
        if record["strategy"] == TOTAL:
            total.setdefault(record["network"], []).append(record["accuracy"])
            continue
        points = grouped.setdefault((record["network"], record["strategy"]), {})
        points.setdefault(record["labelled"], []).append(record["accuracy"])
    results = [
        {
            "network": network,
            "strategy": strategy,
            "points": [
                {"labelled": n, "percent": round(100.0 * n / pool_size, 4), **summarize(accs)}
                for n, accs in sorted(points.items())
            ],
        }
        for (network, strategy), points in grouped.items()
    ]
    return {
        "dataset": dataset,
        "features": features,
        "pool_size": pool_size,
        "num_classes": num_classes,
        "protocol": protocol,
        "total": [
            {"network": network, "labelled": pool_size, "percent": 100.0, **summarize(accs)}
            for network, accs in total.items()
        ],
        "results": results,
    }


def format_percent(percent: float) -> str:
    """``60%``, ``2.5%``, ``0.029%``: three significant digits, no trailing zeros."""
    return f"{percent:.3g}%"


def _row(name: str, point: dict[str, Any]) -> str:
    """One Markdown table row: name, % of the pool, samples, mean ± std accuracy."""
    return (
        f"| {name} | {format_percent(point['percent'])} | {point['labelled']} | "
        f"{point['mean']:.2f} ± {point['std']:.2f} |"
    )


def _protocol_notes(protocol: dict[str, Any]) -> list[str]:
    """How the budgets were reached, and the budgets skipped, as Markdown lines."""
    notes = []
    if "increment" in protocol:
        dropout = {"mc": "BALD's MC-dropout network", "none": "no dropout"}[protocol["network_dropout"]]
        increment = protocol["increment"]
        amount = f"{increment:g}% of the pool" if protocol["budget_unit"] == "percent" else f"{increment:g} samples"
        notes.append(
            f"Acquired in increments of at most {amount}, a fresh network trained after each; every strategy "
            f"and the total training data use the same network ({dropout})."
        )
    notes += [f"{message[:1].upper()}{message[1:]}." for message in protocol.get("skipped_budgets", [])]
    return notes + [""] if notes else []


def markdown_tables(results: dict[str, Any]) -> str:
    """One Markdown table per network, in the layout of the paper's Tables 1–2, then the protocol notes."""
    repeats = results["protocol"].get("repeats", "?")
    lines = []
    for network in dict.fromkeys(r["network"] for r in results["results"]):
        lines += [
            f"Test accuracy (%) vs % of the pool labelled: {network} on {results['dataset']} "
            f"(pool of {results['pool_size']}), mean ± std over {repeats} repeats.",
            "",
            "| Strategy | % Samples | Samples | Accuracy |",
            "|---|---|---|---|",
        ]
        lines += [_row(STRATEGY_NAMES[TOTAL], t) for t in results.get("total", []) if t["network"] == network]
        for row in (r for r in results["results"] if r["network"] == network):
            name = STRATEGY_NAMES.get(row["strategy"], row["strategy"])
            for i, point in enumerate(sorted(row["points"], key=lambda p: -p["labelled"])):
                lines.append(_row(name if i == 0 else "", point))
        lines.append("")
    return "\n".join(lines + _protocol_notes(results["protocol"]))


def plot_results(path: str | Path, results: dict[str, Any]) -> Path:
    """Accuracy vs % of the pool labelled, one panel per network, one line (± std) per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    networks = list(dict.fromkeys(r["network"] for r in results["results"]))
    fig, axes = plt.subplots(1, len(networks), figsize=(5 * len(networks), 4), squeeze=False)
    for ax, network in zip(axes[0], networks):
        for row in (r for r in results["results"] if r["network"] == network):
            points = row["points"]
            ax.errorbar(
                [p["percent"] for p in points], [p["mean"] for p in points], yerr=[p["std"] for p in points],
                marker="o", capsize=3, label=STRATEGY_NAMES.get(row["strategy"], row["strategy"]),
            )
        for total in (t for t in results.get("total", []) if t["network"] == network):
            ax.axhline(total["mean"], color="black", linestyle="--", label=STRATEGY_NAMES[TOTAL])
        ax.set(title=f"{network} ({results['dataset']})", xlabel="% of pool labelled", ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)


def write_results(directory: str | Path, results: dict[str, Any]) -> tuple[Path, Path, Path]:
    """Write ``al_results.json``, ``.md`` and ``.png`` into ``directory`` atomically.

    Returns:
        The paths of the JSON, Markdown and PNG files.
    """
    directory = Path(directory)
    json_path = save_json(directory / RESULTS_JSON, results)
    text = markdown_tables(results)
    md_path = atomic_write(directory / RESULTS_MD, lambda tmp: tmp.write_text(text))
    return json_path, md_path, plot_results(directory / RESULTS_PNG, results)
