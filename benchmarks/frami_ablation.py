"""FRAMI ablation table: teacher, real-data student, FRAMI student and its ablations, over seeds.

Everything runs through the ``ddlight`` command exactly as a user would:

1. the statistics-pooling teacher (``configs/expert_<dataset>.yaml`` + ``configs/model/teacher.yaml``),
2. the **real-data student** (upper bound): the student architecture trained on the real training split
   with the teacher's recipe, one run per seed,
3. FRAMI (``configs/frami_<dataset>.yaml``) per seed in four variants: full, without the contrastive
   term, without hidden-state reuse, and without both. With the same seed the contrastive-on variants
   invert the same set, so "no reuse" differs from "full" only in how the student is distilled.

Each FRAMI run trains one student; the table reports mean ± std over seeds (real-test accuracy of the
last step) and is written to BENCHMARKS.md under ``frami_<name>``. After the teacher, ``--jobs N`` runs
N commands side by side (each with its share of the cores). Networks and FRAMI runs already finished
under ``--out`` are reused, so an interrupted table resumes; delete a folder to re-run it.

Run: ``python -m benchmarks.frami_ablation --name synthetic`` (about 15 min on 2 CPU cores), or on a
dataset folder, e.g. SyntheticSounds in the UrbanSound8K layout (``benchmarks/official_layout.py``)::

    python -m benchmarks.frami_ablation --name us8k_layout --expert-config configs/expert_us8k.yaml \
        --frami-config configs/frami_us8k.yaml -- --data.init_args.root data/us8k_synthetic \
        --data.init_args.duration 1.0 --data.init_args.features.n_fft 1024 --data.init_args.features.hop_length 512
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from scipy import stats

from benchmarks.report import machine, write_section
from ddlight.cli import main as ddlight
from ddlight.networks.export import load_network

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "FRAMI (full)": [],
    "no contrastive term": ["--model.init_args.contrastive=false"],
    "no hidden-state reuse": ["--model.init_args.reuse_hidden=false"],
    "neither": ["--model.init_args.contrastive=false", "--model.init_args.reuse_hidden=false"],
}
QUIET = ["--trainer.enable_progress_bar=false"]


def _slug(variant: str) -> str:
    """Folder name of a variant: ``"FRAMI (full)"`` -> ``FRAMI``, ``"no contrastive term"`` -> ``no_contrastive_term``."""
    return variant.split(" (")[0].replace(" ", "_").replace("-", "_")


def train_network(expert_config: Path, out: Path, seed: int, data_args: list[str], options: str | None = None) -> float:
    """Train a statpool classifier on real data through the CLI; return its real-test accuracy (%).

    A network already exported in ``out`` (by an earlier run of this script) is reused, not retrained.
    """
    extra = [f"--model.init_args.network_options={options}"] if options else []
    if (out / "network_000.safetensors").is_file():
        _, header, _ = load_network(out / "network_000.safetensors")
        return float(header["info"]["test_accuracy"])
    ddlight([
        "fit", "--config", str(expert_config), "--config", str(REPO / "configs/model/teacher.yaml"), *data_args,
        f"--seed_everything={seed}", f"--trainer.callbacks.init_args.dirpath={out}",
        f"--trainer.logger.init_args.save_dir={out}/runs", *extra, *QUIET,
    ])
    _, header, _ = load_network(out / "network_000.safetensors")
    return float(header["info"]["test_accuracy"])


def run_frami(frami_config: Path, teacher: Path, out: Path, seed: int, flags: list[str], data_args: list[str]) -> float:
    """One FRAMI run with one student; return the student's real-test accuracy (%).

    A run already finished in ``out`` (its ``students.json``) is reused: delete the folder to re-run it.
    """
    if not any(out.rglob("students.json")):
        ddlight([
            "fit", "--config", str(frami_config), *data_args, f"--model.init_args.teacher={teacher}",
            f"--seed_everything={seed}", f"--model.init_args.seed={seed}", "--trainer.callbacks.init_args.repeats=1",
            f"--trainer.logger.init_args.save_dir={out}", *flags, *QUIET,
        ])
    report = json.loads(max(out.rglob("students.json"), key=lambda p: p.stat().st_mtime).read_text())
    return float(report["student"]["runs"][0])


def _worker_threads(threads: int) -> None:
    """Give each worker process its share of the cores (``--jobs`` runs side by side)."""
    torch.set_num_threads(threads)


def fmt(runs: list[float]) -> str:
    return f"{statistics.fmean(runs):.1f} ± {statistics.pstdev(runs):.1f}"


def versus(runs: list[float], reference: list[float]) -> str:
    """Difference of means to ``reference`` and the two-sided Welch t-test p-value ("–" without two runs each)."""
    if runs is reference or min(len(runs), len(reference)) < 2:
        return "–"
    p = stats.ttest_ind(runs, reference, equal_var=False).pvalue
    return f"{statistics.fmean(runs) - statistics.fmean(reference):+.1f} (p = {p:.2f})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="synthetic", help="section name and output folder")
    parser.add_argument("--expert-config", type=Path, default=REPO / "configs/expert_synthetic.yaml")
    parser.add_argument("--frami-config", type=Path, default=REPO / "configs/frami_synthetic.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--student-options", default='{"width": 64, "embed_dim": 64, "dropout": 0.2}')
    parser.add_argument("--out", type=Path, default=Path("runs/frami_ablation"))
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side after the teacher (each on cores/jobs threads)")
    parser.add_argument("--frami-arg", action="append", default=[], dest="frami_args",
                        help="an extra flag for every FRAMI run only, e.g. --frami-arg=--model.init_args.ipc=10")
    parser.add_argument("data_args", nargs="*", help="extra data arguments for every command (after --)")
    args = parser.parse_args(argv)
    out = args.out / args.name
    teacher_acc = train_network(args.expert_config, out / "teacher", 0, args.data_args)
    teacher = out / "teacher" / "network_000.safetensors"
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=spawn, initializer=_worker_threads, initargs=(threads,)) as pool:
        real = [
            pool.submit(train_network, args.expert_config, out / f"real_student_{s}", s, args.data_args, args.student_options)
            for s in args.seeds
        ]
        frami = {
            variant: [
                pool.submit(run_frami, args.frami_config, teacher, out / f"{_slug(variant)}_{s}", s,
                            [*flags, *args.frami_args], args.data_args)
                for s in args.seeds
            ]
            for variant, flags in VARIANTS.items()
        }
        rows = {"teacher (statpool, width 128)": [teacher_acc]}
        rows["student on real data (upper bound)"] = [job.result() for job in real]
        rows.update({variant: [job.result() for job in jobs] for variant, jobs in frami.items()})
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        f"### FRAMI ablation: {args.name}",
        "",
        f"`python -m benchmarks.frami_ablation --name {args.name}` with `{args.frami_config.resolve().relative_to(REPO)}`"
        + (f" and `{' '.join(args.data_args)}`" if args.data_args else "")
        + (f", FRAMI runs with `{' '.join(args.frami_args)}`" if args.frami_args else "")
        + f"; seeds {args.seeds}; real-test accuracy (%), last step, mean ± std over seeds (one teacher).",
        f"Machine: {machine()}, {args.jobs} run(s) at a time, {threads} thread(s) each.",
        "",
        "Δ: difference of the mean to FRAMI (full), with the two-sided Welch t-test p-value over seeds",
        "(p < 0.05: a difference beyond the seed-to-seed noise).",
        "",
        "| model | accuracy | Δ vs full | runs |",
        "|---|---|---|---|",
        *(
            f"| {name} | {fmt(runs)} | {versus(runs, rows['FRAMI (full)'])} | {', '.join(f'{r:.1f}' for r in runs)} |"
            for name, runs in rows.items()
        ),
    ]
    table = "\n".join(lines)
    write_section(f"frami_{args.name}", table)
    print(table)


if __name__ == "__main__":
    main()
