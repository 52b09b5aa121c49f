"""Write SyntheticSounds as an UrbanSound8K-layout dataset, to run the file pipeline end to end offline.

The real corpora cannot be downloaded on machines without internet. This script writes the procedural
sounds into the exact on-disk layout of UrbanSound8K (``metadata/UrbanSound8K.csv`` + ``audio/fold1..10``,
44.1 kHz 16-bit WAV like the real corpus) so that ``configs/*_us8k.yaml`` run unchanged on it — decoding,
resampling, caching, the fold rules and everything downstream. The first ten SyntheticSounds classes
stand in for the ten US8K classes in ``classID`` order (the names in the CSV are the US8K names).

    python -m benchmarks.official_layout --out data/us8k_synthetic --per-class 120
    ddlight fit --config configs/expert_us8k.yaml --data.init_args.root data/us8k_synthetic \
        --data.init_args.duration 1.0 --data.init_args.features.hop_length 512
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ddlight.data.synthetic import synthesize
from ddlight.data.urbansound8k import CLASSES


def write_us8k_layout(root: Path, per_class: int, seed: int = 0, file_rate: int = 44100) -> int:
    """Write ``per_class`` clips of each of 10 classes, round-robin over the 10 folds; returns the count."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, name in enumerate(CLASSES):
        for i in range(per_class):
            fold = i % 10 + 1
            wave = soxr.resample(synthesize(label, rng, 16000, 16000), 16000, file_rate)
            slice_name = f"{label}{i:05d}-{label}-0-0.wav"
            path = root / "audio" / f"fold{fold}" / slice_name
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, wave, file_rate, subtype="PCM_16")
            rows.append([slice_name, label * 100000 + i, 0.0, 1.0, 1, fold, label, name])
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    with open(root / "metadata" / "UrbanSound8K.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"])
        writer.writerows(rows)
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to create (the dataset root)")
    parser.add_argument("--per-class", type=int, default=120, help="clips per class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    count = write_us8k_layout(args.out, args.per_class, args.seed)
    print(f"wrote {count} clips in the UrbanSound8K layout to {args.out}")


if __name__ == "__main__":
    main()
