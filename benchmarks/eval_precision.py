"""The evaluation protocol in bfloat16 (``recipe.precision: bf16-mixed``) against float32: time and accuracy.

**Time.** The two evaluations of :mod:`benchmarks.allocator` (a distilled set's: 5 ConvNets of width 128
on 110 clips, issue #14's target; the full-split reference: one width-64 ConvNet on 1,100 clips), each
``--epochs`` epochs in a fresh process, three ways interleaved: as ddlight evaluated before its CPU work
(glibc's allocator defaults, float32), as it does by default (freed memory kept, float32) and in
bfloat16 (freed memory kept, ``bf16-mixed``).

**Accuracy.** The protocol as ``make demo`` runs it (``--accuracy-epochs`` epochs, ``--repeats``
width-64 ConvNets, SpecAugment) on SyntheticSounds' **validation** split (``configs/data/synthetic.yaml``),
float32 and bf16-mixed with the same seeds, on: the random 10-per-class subsets of ``--seeds`` (lr 0.01),
the distilled sets given with ``--synset`` (at their learned lr, ``lr auto``) and the full training split
(one network, lr 0.01).

**Without bfloat16 units** (``--emulated``, its own section): the full-split evaluation in float32 and in
bf16-mixed with oneDNN capped to older instruction sets (``ONEDNN_MAX_CPU_ISA``: AVX2; AVX-512 without
its BF16 extension), where autocast's bfloat16 is emulated.

    python -m benchmarks.eval_precision --epochs 20 --rounds 2 \\
        --synset runs/quality/val_herding/mtt_ipc10_seed*_val/lightning_logs/version_0/distilled --write
    python -m benchmarks.eval_precision --emulated --epochs 10 --rounds 1 --write
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from benchmarks.allocator import CELLS, train
from benchmarks.quality import NETWORK, load_data
from benchmarks.report import interleaved, machine, publish
from ddlight.evaluation import DEFAULT_LR, baseline_indices, evaluate, resolve_recipe
from ddlight.io import load_synset
from ddlight.recipe import TrainRecipe

SECTION = "eval_precision"
#: The timed ways: (freed memory kept, precision) -> column label.
WAYS = {
    (False, "32-true"): "before: glibc defaults, fp32",
    (True, "32-true"): "default: memory kept, fp32",
    (True, "bf16-mixed"): "memory kept, bf16-mixed",
}
#: Instruction-set caps of ``--emulated`` (None: all this CPU has).
ISAS = {"AVX2": "AVX2 only", "AVX512_CORE": "AVX-512 without BF16", None: "this CPU (AVX-512 with BF16)"}


def speed_rows(args: argparse.Namespace) -> list[str]:
    """One table row per cell of :data:`~benchmarks.allocator.CELLS`: median seconds per way and ratios."""
    rows = []
    for size, (label, repeats, width) in CELLS.items():
        runs = interleaved(lambda way: train(args.epochs, size, args.threads, repeats, width, *way), args.rounds,
                           list(WAYS))
        seconds = {way: statistics.median(run["seconds"] for run in runs[way]) for way in WAYS}
        before, fp32, bf16 = seconds.values()
        accuracy = " / ".join(f"{runs[way][0]['accuracy']:.2f}" for way in WAYS)
        rows.append(
            f"| {label} | {before:.1f} | {fp32:.1f} | {bf16:.1f} | {before / fp32:.2f}x | **{before / bf16:.2f}x** | "
            f"{fp32 / bf16:.2f}x | {accuracy} |"
        )
    return rows


def accuracy_rows(args: argparse.Namespace) -> list[str]:
    """Validation accuracy (mean ± std over the networks) of every set in float32 and in bf16-mixed."""
    data = load_data("synthetic", [])
    train_x, train_y = data.split_features("train")
    val_x, val_y = data.split_features("val")
    recipe = TrainRecipe(epochs=args.accuracy_epochs, lr=DEFAULT_LR)
    sets: dict[str, tuple[torch.Tensor, torch.Tensor, TrainRecipe, int]] = {}
    for seed in args.seeds:
        idx = baseline_indices("random", train_y, 10, None, seed)
        subset = (train_x[idx], train_y[idx], replace(recipe, seed=seed), args.repeats)
        sets[f"random 10 per class, seed {seed}"] = subset
    for folder in args.synset:
        synset = load_synset(folder)
        name = f"{synset.manifest.get('method', 'set')} ipc {synset.manifest['ipc']}: {Path(folder).parts[-4]}"
        auto = resolve_recipe(replace(recipe, lr="auto"), synset.manifest)
        sets[name] = (synset.features, synset.targets, auto, args.repeats)
    sets["full training split (1 network)"] = (train_x, train_y, recipe, 1)
    rows, differences = [], []
    for name, (x, targets, set_recipe, repeats) in sets.items():
        result: dict[str, dict[str, Any]] = {}
        for precision in ("32-true", "bf16-mixed"):
            result[precision] = evaluate(
                x, targets, val_x, val_y, replace(set_recipe, precision=precision), ["convnet"], repeats, NETWORK,
                description=f"{name} {precision}",
            )["convnet"]
            print(name, precision, result[precision], flush=True)
        fp32, bf16 = result["32-true"], result["bf16-mixed"]
        differences.append(bf16["mean"] - fp32["mean"])
        rows.append(
            f"| {name} | {set_recipe.lr:.4g} | {fp32['mean']:.2f} ± {fp32['std']:.2f} | "
            f"{bf16['mean']:.2f} ± {bf16['std']:.2f} | {differences[-1]:+.2f} |"
        )
    mean = statistics.mean(differences)
    spread = statistics.pstdev(differences)
    rows.append(f"| **mean difference over the {len(differences)} sets** | | | | **{mean:+.2f} ± {spread:.2f}** |")
    return rows


def emulated_section(args: argparse.Namespace, command: str) -> str:
    """The full-split evaluation per instruction-set cap, float32 against bf16-mixed (``--emulated``)."""
    label, repeats, width = CELLS["full"]
    rows = []
    for isa, name in ISAS.items():
        runs = interleaved(lambda p: train(args.epochs, "full", args.threads, repeats, width, True, p, isa),
                           args.rounds, ["32-true", "bf16-mixed"])
        fp32, bf16 = (statistics.median(run["seconds"] for run in runs[p]) for p in ("32-true", "bf16-mixed"))
        rows.append(f"| {name} | {isa or '–'} | {fp32:.1f} | {bf16:.1f} | **{fp32 / bf16:.2f}x** |")
    return "\n".join([
        "## Evaluation in bfloat16 without bfloat16 units",
        "",
        f"`{command}` on {machine()}. Seconds of {label} ({args.epochs} epochs, {args.threads} threads, memory "
        f"kept), in fresh processes with oneDNN capped by `ONEDNN_MAX_CPU_ISA`, float32 and bf16-mixed "
        f"interleaved, median of {args.rounds}:",
        "",
        "| instruction set | ONEDNN_MAX_CPU_ISA | 32-true s | bf16-mixed s | bf16 speed-up |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "Where the CPU has no bfloat16 instructions, autocast converts and computes in emulation: bf16-mixed is then "
        "slower than float32, and ddlight warns when it is asked for on such a CPU.",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the timed evaluations")
    parser.add_argument("--rounds", type=int, default=2, help="runs per way and cell, interleaved")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--accuracy-epochs", type=int, default=150, help="epochs of the accuracy check (the demo's)")
    parser.add_argument("--repeats", type=int, default=3, help="networks per set in the accuracy check")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the random subsets")
    parser.add_argument("--synset", nargs="*", default=[], help="distilled-set folders (SyntheticSounds) to check")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--emulated", action="store_true",
                        help="only time the full-split evaluation under older instruction sets (own section)")
    parser.add_argument("--write", action="store_true", help="write the tables into BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = "python -m benchmarks.eval_precision " + " ".join(sys.argv[1:])
    if args.emulated:
        publish(f"{SECTION}_emulated", emulated_section(args, command), args.write)
        return
    load_before = os.getloadavg()[0]
    speed = [] if args.skip_speed else speed_rows(args)
    load_middle = os.getloadavg()[0]
    accuracy = accuracy_rows(args)
    load_after = os.getloadavg()[0]
    lines = [
        "## Evaluation in bfloat16",
        "",
        f"`{command}` on {machine()}; 1-minute load average {load_before:.1f} at the start, {load_middle:.1f} "
        f"between the parts, {load_after:.1f} at the end. bf16-mixed: every training step of the evaluation "
        "protocol under bfloat16 autocast (convolutions and matrix products in bfloat16; weights, SGD and the "
        "test pass in float32), `recipe.precision` (`--trainer.callbacks.init_args.recipe.precision bf16-mixed`, "
        "`python -m ddlight.evaluation --recipe.precision bf16-mixed`).",
    ]
    if speed:
        lines += [
            "",
            f"Seconds of `ddlight.evaluation.evaluate` ({args.epochs} epochs, lr 0.01, batch 256, SpecAugment) in "
            f"fresh processes of {args.threads} threads, the three ways interleaved, median of {args.rounds}:",
            "",
            f"| evaluation | {' s | '.join(WAYS.values())} s | default vs before | bf16 vs before | bf16 vs default "
            "| test accuracy % (the three) |",
            "|---|---|---|---|---|---|---|---|",
            *speed,
        ]
    lines += [
        "",
        f"Validation accuracy (%, 220 clips: ±1.5 points is noise) after {args.accuracy_epochs} epochs, mean ± std "
        f"over {args.repeats} width-64 ConvNets (network r seeded with the set's seed + r), float32 against "
        "bf16-mixed with the same seeds:",
        "",
        "| set | lr | 32-true | bf16-mixed | bf16 − fp32 |",
        "|---|---|---|---|---|",
        *accuracy,
        "",
        "Issue #14's target for the evaluation of a set is 2x against the way it ran before (\"bf16 vs before\"). "
        "Float32 stays the default everywhere (the shipped configs and `callbacks/synset_evaluator.yaml`): on a CPU "
        "without bfloat16 instructions bf16-mixed is emulated and several times slower (\"Evaluation in bfloat16 "
        "without bfloat16 units\").",
    ]
    publish(SECTION, "\n".join(lines), args.write)


if __name__ == "__main__":
    main()
