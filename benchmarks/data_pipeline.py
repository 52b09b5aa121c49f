"""Decode/cache throughput and first- vs second-epoch time of a file-based DataModule.

Writes an UrbanSound8K-layout dataset of ``--clips`` 4 s clips in the format of the real corpus
(44.1 kHz, stereo, 16-bit) to a temporary folder, then measures with ``UrbanSound8K``:

1. ``setup()`` on a cold cache (decode + downmix + resample to 16 kHz + pad + write the cache) and on a
   warm cache (a new DataModule instance reading the memory-mapped cache);
2. two epochs over the training loader with the FD-MFCC front end applied as in training
   (``on_after_batch_transfer``), once with the front end on every batch (``cache_features=False``) and
   once with the feature cache (its first epoch computes the cache, the second serves it).

Run: ``python -m benchmarks.data_pipeline [--clips 400]``; the table goes to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from benchmarks.report import machine, write_section
from ddlight.data.urbansound8k import CLASSES, UrbanSound8K


def write_us8k(root: Path, clips: int, seconds: float = 4.0, sample_rate: int = 44100) -> None:
    """A US8K-layout dataset of noisy stereo tones, ``clips`` files spread over the 10 folds."""
    rng = np.random.default_rng(0)
    rows = []
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    for i in range(clips):
        fold, label = i % 10 + 1, i % len(CLASSES)
        tone = np.sin(2 * np.pi * (200 + 50 * label) * t)[:, None] * [0.5, 0.4]
        wave = tone + 0.05 * rng.standard_normal((t.size, 2))
        name = f"{1000 + i}-{label}-0-0.wav"
        path = root / "audio" / f"fold{fold}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wave.astype(np.float32), sample_rate, subtype="PCM_16")
        rows.append([name, 1000 + i, 0.0, seconds, 1, fold, label, CLASSES[label]])
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    with open(root / "metadata" / "UrbanSound8K.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"])
        writer.writerows(rows)


def timed_setup(root: Path, cache_features: bool = True) -> tuple[UrbanSound8K, float]:
    data = UrbanSound8K(root=str(root), batch_size=64, cache_features=cache_features)
    start = time.perf_counter()
    data.setup("fit")
    return data, time.perf_counter() - start


def epoch_time(data: UrbanSound8K) -> float:
    start = time.perf_counter()
    for batch in data.train_dataloader():
        features, _ = data.on_after_batch_transfer(batch, 0)
        assert torch.isfinite(features).all()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=400, help="number of 4 s clips")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "UrbanSound8K"
        write_us8k(root, args.clips)
        cold, cold_s = timed_setup(root, cache_features=False)
        warm, warm_s = timed_setup(root, cache_features=False)
        decoded = sum(len(cold.splits[s]) for s in ("train", "val", "test"))
        first, second = epoch_time(warm), epoch_time(warm)
        cached = timed_setup(root)[0]
        cached_first, cached_second = epoch_time(cached), epoch_time(cached)
    clips = len(warm.splits["train"])
    rows = [
        ("setup, cold cache (decode 44.1 kHz stereo → 16 kHz mono, pad, write cache)", cold_s, decoded / cold_s),
        ("setup, warm cache (memory-mapped)", warm_s, decoded / warm_s),
        ("training epoch 1, front end on every batch (`cache_features: false`; loader + FD-MFCC on CPU)", first,
         clips / first),
        ("training epoch 2, front end on every batch", second, clips / second),
        ("training epoch 1, feature cache (computes it: FD-MFCC of the split, then the loader)", cached_first,
         clips / cached_first),
        ("training epoch 2, feature cache (serves it)", cached_second, clips / cached_second),
    ]
    lines = [
        "## Data pipeline",
        "",
        f"`python -m benchmarks.data_pipeline --clips {args.clips}`: an UrbanSound8K-layout folder of "
        f"{args.clips} clips of 4 s (44.1 kHz, stereo, 16-bit, as in the real corpus), loaded by "
        "`UrbanSound8K` at 16 kHz. Setup includes fitting the normalisation statistics (FD-MFCC of the training split), which is most of the warm-cache time.",
        "",
        "| step | seconds | clips/s |",
        "|---|---|---|",
        *(f"| {name} | {seconds:.2f} | {rate:.0f} |" for name, seconds, rate in rows),
        "",
        f"Machine: {machine()}; 1-minute load average {load:.1f} at the start.",
    ]
    write_section("data", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
