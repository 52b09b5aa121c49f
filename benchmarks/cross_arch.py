"""Cross-architecture transfer: sets distilled with a ConvNet, evaluated on other networks (DDFAD's table).

Each ``--set NAME=DIR`` (a distilled folder) is evaluated with ``python -m ddlight.evaluation`` on every
``--architectures`` network (fresh networks, SpecAugment, last epoch, at the set's ``lr auto``: MTT's
learned ``syn_lr``, 0.01 for sets without one). The first set's evaluation also trains the real-subset
baselines and the full training split, at that set's learning rate, so list a set without a learned
step size (RFAD) first to give the baselines the protocol's lr 0.01. Writes one table, a row per
architecture, with each set's accuracy, the baselines, the full split and each set's gap closure
``g = (set - random) / (full - random)``.

    python -m benchmarks.cross_arch --name synthetic_ipc10 \\
        --set rfad=runs/quality/synthetic_herding/rfad_ipc10_seed0/lightning_logs/version_0/distilled \\
        --set mtt=runs/quality/synthetic_herding/mtt_ipc10_seed0/lightning_logs/version_0/distilled \\
        --expert-dir runs/quality/synthetic_herding/experts --write

Every evaluation goes to ``--out/<name>/<set>/<architecture>/evaluation.json``; one already there is
reused, so an interrupted table resumes (delete a folder to evaluate that set or architecture again).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.report import machine, publish
from ddlight.evaluation.__main__ import main as evaluation
from ddlight.evaluation.report import mean_std, read_report
from ddlight.evaluation.suite import gap_closure

REPO = Path(__file__).resolve().parents[1]
ARCHITECTURES = ["convnet", "resnet18", "vgg11", "tcresnet8"]
#: The widths of the shipped configs' evaluators (configs/rfad_synthetic.yaml).
OPTIONS = {"convnet": {"width": 64}, "resnet18": {"width": 16}, "vgg11": {"width": 16}}


def parse_set(text: str) -> tuple[str, Path]:
    """``NAME=DIR`` into its name and folder, refusing a folder without a distilled set."""
    name, sep, folder = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--set takes NAME=DIR, got {text!r}")
    if not (Path(folder) / "manifest.json").is_file():
        raise argparse.ArgumentTypeError(f"--set {name}: {folder} holds no manifest.json (not a distilled folder)")
    return name, Path(folder)


def evaluate_set(folder: Path, out: Path, first: bool, args: argparse.Namespace) -> dict[str, Any]:
    """One set's report on every architecture; the first set adds the references.

    Each architecture is evaluated on its own into ``out/<architecture>/evaluation.json`` (reused when
    there), so one architecture can be evaluated again without the others.
    """
    reports = []
    for architecture in args.architectures:
        path = out / architecture / "evaluation.json"
        if not path.is_file():
            evaluation([
                "--synset", str(folder), "--data", str(args.data), "--out", str(path.parent),
                "--architectures", architecture, "--network_options", json.dumps(OPTIONS),
                "--repeats", str(args.repeats), "--recipe.epochs", str(args.epochs), "--recipe.seed", str(args.seed),
                "--baselines", *(["random", "herding"] if first else []), "--full", str(first).lower(),
                "--full_repeats", str(args.full_repeats),
                *(["--expert_dir", str(args.expert_dir)] if args.expert_dir else []),
            ])
        reports.append(read_report(path))
    return reports[0] | {"results": [row for report in reports for row in report["results"]]}


def table(reports: dict[str, dict[str, Any]]) -> str:
    """A row per architecture: every set, random, herding, full, then each set's ``g``."""
    names = list(reports)
    references = reports[names[0]]
    header = [*names, "random", "herding", "full", *(f"g {n}" for n in names)]
    lines = ["| architecture | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for i, row in enumerate(references["results"]):
        cells = [mean_std(reports[n]["results"][i]["synthetic"]) for n in names]
        cells += [mean_std(row[c]) for c in ("random", "herding", "full")]
        for n in names:
            g = gap_closure(reports[n]["results"][i]["synthetic"]["mean"], row["random"]["mean"], row["full"]["mean"])
            cells.append("–" if g is None else f"{g:.2f}")
        lines.append(f"| {row['architecture']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    """Evaluate every set on every architecture and print (``--write``: publish) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", type=parse_set, action="append", required=True, dest="sets", help="NAME=DIR")
    parser.add_argument("--name", default="synthetic", help="section name and output folder")
    parser.add_argument("--data", type=Path, default=REPO / "configs/data/synthetic.yaml")
    parser.add_argument("--architectures", nargs="+", default=ARCHITECTURES)
    parser.add_argument("--repeats", type=int, default=3, help="networks per architecture and set")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--full-repeats", type=int, default=1, help="networks on the full training split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--expert-dir", type=Path, help="trajectories whose final expert embeds for herding")
    parser.add_argument("--out", type=Path, default=Path("runs/cross_arch"))
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = parser.parse_args(argv)
    start, load = time.perf_counter(), os.getloadavg()[0]
    reports = {
        name: evaluate_set(folder, args.out / args.name / name, i == 0, args)
        for i, (name, folder) in enumerate(args.sets)
    }
    minutes = (time.perf_counter() - start) / 60
    first = reports[args.sets[0][0]]
    lrs = ", ".join(f"{n} {r['recipe']['lr']:.4g}" for n, r in reports.items())
    command = shlex.join(argv) if argv is not None else shlex.join(sys.argv[1:])
    text = "\n".join([
        f"## Cross-architecture transfer: {args.name}",
        "",
        f"`python -m benchmarks.cross_arch {command}` on {machine()}; 1-minute load average {load:.1f} at the "
        f"start, {minutes:.0f} min wall for what was not reused. Sets of {first['ipc']} per class "
        f"({first['dataset']}), each distilled with a ConvNet; real-{first['recipe']['split']} accuracy (%) of "
        f"fresh networks ({json.dumps(OPTIONS)}) trained {args.epochs} epochs with SpecAugment, last epoch, "
        f"mean ± std over {args.repeats} networks (one distilled set per method: the spread is the networks', "
        f"not the distillation seeds'); the full training split {args.full_repeats} network(s) per architecture. "
        f"Learning rate (lr auto): {lrs}; random, herding and full at {first['recipe']['lr']:.4g}. "
        "g = (set − random) / (full − random).",
        "",
        table(reports),
    ])
    publish(f"cross_arch_{args.name}", text, args.write)
    return text


if __name__ == "__main__":
    main()
