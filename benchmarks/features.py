"""Features against librosa: the values agree, the delta edge convention is documented, and the time is compared.

``--clips`` harmonic clips with noise (1 s at 16 kHz, seeded) go through ddlight's front ends
(:class:`~ddlight.features.LogMel`, :class:`~ddlight.features.MFCC`, :class:`~ddlight.features.FDMFCC`:
STFT 512 / hop 160, 40 mel bands, 20 MFCCs, delta window 9; nnAudio kernels, one batch) and through librosa
(``melspectrogram`` + ``power_to_db``, ``mfcc``, ``feature.delta``; one clip after another, as a data
loader calls it). The table gives the largest absolute difference per feature; for the deltas it separates
the interior frames from the ``width // 2`` frames at each edge, where ddlight replicates the edge frame
(the same as ``librosa.feature.delta(mode="nearest")``) and librosa's default (``mode="interp"``) fits a
polynomial. The two ways are timed interleaved in one process (median of ``--rounds``), so load from other
jobs hits both. The result replaces the ``features_vs_librosa`` section of ``BENCHMARKS.md``.

    python -m benchmarks.features --clips 64 --rounds 3 --write
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import librosa
import numpy as np
import torch

from benchmarks.report import machine, publish
from ddlight.features import FDMFCC, MFCC, LogMel

SECTION = "features_vs_librosa"
SAMPLE_RATE = 16000
#: The STFT and mel settings of both sides (librosa's names).
STFT = {"sr": SAMPLE_RATE, "n_fft": 512, "hop_length": 160, "n_mels": 40, "htk": False}
WIDTH = 9  # delta regression window
EDGE = WIDTH // 2


def harmonic_clips(count: int, seed: int = 0) -> np.ndarray:
    """``count`` 1-s clips: three harmonics of a random fundamental, a random envelope and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    clips = []
    for _ in range(count):
        f0 = rng.uniform(100, 1000)
        wave = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * k * f0 * t) for k in (1, 2, 3))
        envelope = np.exp(-t * rng.uniform(0.5, 5.0))
        clips.append(0.3 * wave * envelope + 0.01 * rng.standard_normal(t.size))
    return np.stack(clips).astype(np.float32)


def librosa_features(clips: np.ndarray) -> dict[str, np.ndarray]:
    """librosa's log-mel, MFCC and deltas (both edge modes) of every clip, one clip at a time."""
    out: dict[str, list[np.ndarray]] = {"log-mel": [], "mfcc": [], "delta": [], "delta-delta": [],
                                         "delta (nearest)": [], "delta-delta (nearest)": []}
    for clip in clips:
        mel = librosa.feature.melspectrogram(y=clip, center=True, pad_mode="constant", **STFT)
        out["log-mel"].append(librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=80.0))
        mfcc = librosa.feature.mfcc(y=clip, n_mfcc=20, center=True, pad_mode="constant", **STFT)
        out["mfcc"].append(mfcc)
        for mode, suffix in (("interp", ""), ("nearest", " (nearest)")):
            d1 = librosa.feature.delta(mfcc, width=WIDTH, mode=mode)
            out[f"delta{suffix}"].append(d1)
            out[f"delta-delta{suffix}"].append(librosa.feature.delta(d1, width=WIDTH, mode=mode))
    return {name: np.stack(values) for name, values in out.items()}


def ddlight_features(clips: np.ndarray) -> dict[str, np.ndarray]:
    """ddlight's front ends on the whole batch."""
    waves = torch.from_numpy(clips)
    with torch.no_grad():
        fd = FDMFCC(sample_rate=SAMPLE_RATE, n_fft=512, hop_length=160, n_mels=40, n_mfcc=20,
                    delta_width=WIDTH).extract(waves).numpy()
        return {
            "log-mel": LogMel(sample_rate=SAMPLE_RATE, n_fft=512, hop_length=160, n_mels=40).extract(waves)[:, 0].numpy(),
            "mfcc": MFCC(sample_rate=SAMPLE_RATE, n_fft=512, hop_length=160, n_mels=40, n_mfcc=20).extract(waves)[:, 0].numpy(),
            "delta": fd[:, 1], "delta-delta": fd[:, 2],
        }


def comparison_rows(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> list[str]:
    """Table rows: the largest absolute difference per feature, deltas split into interior and edges."""
    rows = []
    for name in ("log-mel", "mfcc"):
        rows.append(f"| {name} | all frames | `librosa` default | {np.abs(ours[name] - theirs[name]).max():.2e} |")
    for name, edge in (("delta", EDGE), ("delta-delta", 2 * EDGE)):
        interior = (slice(None), slice(None), slice(edge, -edge))
        rows.append(f"| {name} | interior (all but {edge} frames at each end) | `mode=\"interp\"` (default) | "
                    f"{np.abs(ours[name][interior] - theirs[name][interior]).max():.2e} |")
        edges = np.concatenate([ours[name][..., :edge] - theirs[name][..., :edge],
                                ours[name][..., -edge:] - theirs[name][..., -edge:]], axis=-1)
        rows.append(f"| {name} | first and last {edge} frames | `mode=\"interp\"` (default) | {np.abs(edges).max():.2e} |")
        nearest = theirs[f"{name} (nearest)"]
        rows.append(f"| {name} | all frames | `mode=\"nearest\"` | {np.abs(ours[name] - nearest).max():.2e} |")
    return rows


def median_seconds(run: Callable[[], object], others: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median seconds of ``run`` and ``others`` over ``rounds``, alternating who goes first."""
    times: dict[int, list[float]] = {0: [], 1: []}
    for r in range(rounds):
        order = [(0, run), (1, others)] if r % 2 == 0 else [(1, others), (0, run)]
        for key, fn in order:
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clips = harmonic_clips(args.clips)
    load = os.getloadavg()[0]
    ours, theirs = ddlight_features(clips), librosa_features(clips)
    seconds_ours, seconds_theirs = median_seconds(lambda: ddlight_features(clips), lambda: librosa_features(clips),
                                                  args.rounds)
    lines = [
        "## Features against librosa",
        "",
        f"`python -m benchmarks.features --clips {args.clips} --rounds {args.rounds} --threads {args.threads}` on "
        f"{machine()}; load average {load:.1f} at the start. {args.clips} harmonic clips of 1 s at 16 kHz; STFT 512, "
        f"hop 160, 40 mel bands, 20 MFCCs, delta window {WIDTH}. Largest absolute difference (dB for log-mel, "
        "MFCC units otherwise) between ddlight (nnAudio kernels, float32) and librosa (float64 inside):",
        "",
        "| feature | frames | librosa call | max abs difference |",
        "|---|---|---|---|",
        *comparison_rows(ours, theirs),
        "",
        f"ddlight's delta replicates the edge frame before the regression; this is `librosa.feature.delta("
        f"mode=\"nearest\")`. librosa's default (`mode=\"interp\"`) fits a polynomial at the edges, so the first and "
        f"last {EDGE} frames (delta) and {2 * EDGE} frames (delta-delta) differ; every frame inside agrees.",
        "",
        "| way | seconds for all clips (median) |",
        "|---|---|",
        f"| ddlight: log-mel, MFCC, FD-MFCC of the batch | {seconds_ours:.3f} |",
        f"| librosa: the same, clip by clip | {seconds_theirs:.3f} |",
        "",
        f"ddlight takes **{seconds_ours / seconds_theirs:.2f}×** librosa's time ({seconds_theirs / seconds_ours:.1f}× faster).",
    ]
    section = "\n".join(lines)
    publish(SECTION, section, args.write)


if __name__ == "__main__":
    main()
