"""Listen to a distilled set: rebuild audio from its features and measure how much survives.

One code path serves the :class:`~ddlight.callbacks.AudioReconstruction` callback (at the end of a
distillation run) and the command for any saved set::

    python -m ddlight.reconstruct runs/mtt_us8k/version_0/distilled --expert-dir experts/us8k

Both write, into the output folder (default: the set's own folder):

- ``audio/<class>/<class>_<i>.wav``: one 16-bit PCM WAV per synthetic sample, rebuilt on the set's own
  front end (``build_features(manifest["features"])`` with the set's mean/std) by
  :meth:`~ddlight.features.AudioFeatures.invert`, each peak-normalised to -1 dBFS (the gain applied is
  recorded per file in ``reconstruction.json``; the level of inverted features is arbitrary anyway);
- ``spectrograms.png``: the synthetic features (channel 0, normalised), one row per class;
- ``reconstruction.json``: the measures below, per sample, per class and their mean.

Measures, all on the audio *before* the peak normalisation:

- ``spectral_convergence``: ``||M - |STFT(x)| ||_F / ||M||_F`` per sample, where ``M`` is the linear
  STFT magnitude implied by the features (denormalise → log-mel → mel power → linear power by
  non-negative least squares → square root, :meth:`~ddlight.features.AudioFeatures.log_mel_to_magnitude`:
  the target Griffin-Lim was given) and ``|STFT(x)|`` the magnitude of the rebuilt waveform ``x``
  re-analysed with the same STFT (``n_fft``, ``hop_length``, Hann window). 0: the target was a
  consistent spectrogram and was reached; about 1: nothing of it was.
- ``feature_relative_error``: ``||f - f_hat||_F / ||f||_F`` per sample, with ``f`` the distilled features
  and ``f_hat`` the features re-extracted from ``x`` by the same front end, both normalised (the space
  the networks see). Covers everything the audio round trip loses: the mel → linear and phase
  estimates, the ``top_db`` floor and, for FD-MFCC, delta channels that disagree with the static one.
- ``expert_accuracy`` (when an expert folder is given and holds trajectories for this feature shape and
  number of classes): accuracy in percent of each expert network at its final snapshot
  (:func:`~ddlight.recipe.final_expert_networks`) on ``f`` and on ``f_hat`` against the set's (hard)
  labels, and their means. A drop means the class information does not survive the trip to audio.
  Experts are rebuilt from their recorded parameters only, so networks with batch-norm running
  statistics are evaluated with fresh statistics.

Samples whose features are not finite (NaN/inf) are listed under ``invalid`` in the JSON and the log,
and no WAV is written for them, nor for samples that decode to non-finite or silent audio.
"""

from __future__ import annotations

import argparse
import math
import re
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from ddlight.allocator import keep_freed_memory
from ddlight.features import AudioFeatures, build_features
from ddlight.features.griffin_lim import consistency_projection, stft
from ddlight.features.inversion import spectral_convergence
from ddlight.io import Synset, atomic_write, load_synset, save_json
from ddlight.recipe import accuracy, final_expert_networks

REPORT = "reconstruction.json"
GRID = "spectrograms.png"
AUDIO = "audio"
PEAK_DBFS = -1.0
SILENCE = 1e-8  # peak amplitude below which a rebuilt clip counts as silent


def safe_name(name: str) -> str:
    """A class name usable as a folder and file name (anything but ``[A-Za-z0-9._-]`` becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(name)).strip(".") or "_"


def synset_front_end(synset: Synset, device: torch.device | str = "cpu") -> tuple[AudioFeatures, int]:
    """The front end that produced ``synset`` (with its normalisation) and the clip length in samples.

    Raises:
        ValueError: If the features' shape disagrees with the manifest's ``feature_shape`` or with what
            the front end makes of ``sample_rate * duration`` samples, or if its STFT cannot be inverted
            (windows that do not overlap).
    """
    manifest = synset.manifest
    missing = {"features", "sample_rate", "duration", "classes"} - set(manifest)
    if missing:
        raise ValueError(f"the synset manifest lacks {sorted(missing)}; cannot rebuild audio")
    front = build_features({**manifest["features"], "sample_rate": manifest["sample_rate"]}).to(device)
    num_samples = round(manifest["sample_rate"] * manifest["duration"])
    shape = tuple(synset.features.shape[1:])
    expected = tuple(manifest.get("feature_shape", shape))
    produced = front.output_shape(num_samples)
    if synset.features.dim() != 4 or shape != expected or shape != produced:
        raise ValueError(
            f"synthetic features of shape {list(synset.features.shape)} do not match the manifest: "
            f"feature_shape {list(expected)}, and the {manifest['features'].get('name')} front end makes "
            f"{list(produced)} of {manifest['duration']} s at {manifest['sample_rate']} Hz"
        )
    try:  # Griffin-Lim's inverse STFT needs windows that overlap everywhere
        consistency_projection(front.n_fft, front.hop_length, 1, produced[-1], front.mean)
    except ValueError as err:
        raise ValueError(
            f"the set's front end cannot be turned back into audio: {err}. Use hop_length <= n_fft // 2 "
            f"in the data's features configuration"
        ) from err
    front.mean.copy_(synset.mean.reshape(front.mean.shape))
    front.std.copy_(synset.std.reshape(front.std.shape))
    front.fitted.fill_(True)
    return front, num_samples


def _select(labels: Tensor, max_per_class: int | None) -> tuple[Tensor, list[int]]:
    """Indices of the samples to rebuild (the first ``max_per_class`` of each class) and their rank in it."""
    chosen, ranks = [], []
    counts: dict[int, int] = defaultdict(int)
    for j, c in enumerate(labels.tolist()):
        if max_per_class is None or counts[c] < max_per_class:
            chosen.append(j)
            ranks.append(counts[c])
            counts[c] += 1
    return torch.tensor(chosen, dtype=torch.long), ranks


def _invert(
    front: AudioFeatures, features: Tensor, n_iter: int, length: int, seed: int
) -> tuple[Tensor, list[str | None]]:
    """Invert a batch; if it fails, sample by sample, returning each failure's reason (else ``None``)."""
    generator = torch.Generator(front.mean.device).manual_seed(seed)
    try:
        return front.invert(features, n_iter, length=length, generator=generator), [None] * len(features)
    except ValueError:
        waves, reasons = torch.zeros(len(features), length, device=front.mean.device), []
        for k, item in enumerate(features):
            try:
                waves[k] = front.invert(item[None], n_iter, length=length, generator=generator)[0]
                reasons.append(None)
            except ValueError as err:
                reasons.append(str(err))
        return waves, reasons


def _measure(front: AudioFeatures, features: Tensor, waves: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Spectral convergence ``[n]``, feature relative error ``[n]`` and re-extracted features of ``waves``."""
    if len(features) == 0:
        return torch.zeros(0), torch.zeros(0), features
    target = front.log_mel_to_magnitude(front.features_to_log_mel(front.denormalize(features)))
    convergence = spectral_convergence(target, stft(waves, front.n_fft, front.hop_length).abs())
    rebuilt = front(waves)
    difference = torch.linalg.vector_norm((features - rebuilt).flatten(1), dim=1)
    return convergence, difference / torch.linalg.vector_norm(features.flatten(1), dim=1), rebuilt


def _expert_accuracy(
    expert_dir: str | Path, synset: Synset, features: Tensor, rebuilt: Tensor, labels: Tensor
) -> dict[str, Any]:
    """Accuracy of every expert's final network on the distilled and on the re-extracted features."""
    try:
        manifest, networks = final_expert_networks(expert_dir, features.device)
    except (FileNotFoundError, ValueError) as err:
        return {"dir": str(expert_dir), "skipped": str(err)}
    in_shape, num_classes = list(manifest["in_shape"]), int(manifest["num_classes"])
    if in_shape != list(synset.features.shape[1:]) or num_classes != len(synset.manifest["classes"]):
        return {
            "dir": str(expert_dir),
            "skipped": f"experts take {in_shape} with {num_classes} classes; the set has "
            f"{list(synset.features.shape[1:])} with {len(synset.manifest['classes'])}",
        }
    per_expert = [[accuracy(net, x, labels, batch_size=64) for x in (features, rebuilt)] for net in networks]
    mean = np.mean(per_expert, axis=0)
    return {
        "dir": str(expert_dir),
        "network": manifest["network"],
        "experts": len(per_expert),
        "distilled_features": round(float(mean[0]), 4),
        "reconstructed_audio": round(float(mean[1]), 4),
        "per_expert": [{"distilled_features": round(a, 4), "reconstructed_audio": round(b, 4)} for a, b in per_expert],
    }


def _grid(path: Path, features: Tensor, labels: Tensor, finite: Tensor, classes: Sequence[str]) -> Path:
    """PNG of channel 0 of ``features``: one row per class, one column per sample (non-finite ones marked)."""
    rows = [(labels == c).nonzero().flatten().tolist() for c in range(len(classes))]
    cols = max(1, max(len(r) for r in rows))
    fig = Figure(figsize=(1.6 * cols + 1.2, 1.3 * len(classes) + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(classes), cols, squeeze=False)
    for c, row in enumerate(rows):
        for k, ax in enumerate(axes[c]):
            ax.set_xticks([])
            ax.set_yticks([])
            if k >= len(row):
                ax.set_axis_off()
            elif finite[row[k]]:
                ax.imshow(features[row[k], 0].cpu().numpy(), origin="lower", aspect="auto", cmap="magma")
            else:
                ax.text(0.5, 0.5, "NaN/inf", ha="center", va="center", transform=ax.transAxes, color="red")
        axes[c, 0].set_ylabel(classes[c], rotation=0, ha="right", va="center", fontsize=8)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))


def _summary(values: Tensor, labels: Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """Mean over ``values`` ``[n]`` and per class (classes without values are left out)."""
    if len(values) == 0:
        return {"mean": None, "per_class": {}}
    per_class = {classes[c]: round(float(values[labels == c].mean()), 4) for c in labels.unique().tolist()}
    return {"mean": round(float(values.mean()), 4), "per_class": per_class}


@torch.no_grad()
def reconstruct(
    synset: Synset,
    out_dir: str | Path,
    n_iter: int = 32,
    max_per_class: int | None = None,
    expert_dir: str | Path | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Write the audio, the feature grid and ``reconstruction.json`` of ``synset`` into ``out_dir``.

    Args:
        synset: The distilled set (e.g. from :func:`~ddlight.distillers.base.load_synset` or
            :meth:`~ddlight.distillers.base.Distiller.to_synset`).
        out_dir: Output folder (created).
        n_iter: Griffin-Lim iterations.
        max_per_class: Rebuild only the first this many samples of each class (``None``: all).
        expert_dir: Folder of expert trajectories for the accuracy check (``None``: skip it).
        seed: Seed of Griffin-Lim's random initial phase.
        device: Where to compute (default: the device of the synset's features).

    Returns:
        The report, as written to ``reconstruction.json`` (see the module docstring).

    Raises:
        ValueError: If the features' shape disagrees with the manifest or the front end cannot be
            inverted (see :func:`synset_front_end`).
    """
    out_dir = Path(out_dir)
    device = torch.device(device) if device is not None else synset.features.device
    front, num_samples = synset_front_end(synset, device)
    classes = [str(c) for c in synset.manifest["classes"]]
    index, ranks = _select(synset.labels.cpu(), max_per_class)
    features = synset.features.detach().to(device, torch.float32)[index.to(device)]
    labels = synset.labels.to(device)[index.to(device)]

    finite = torch.isfinite(features).flatten(1).all(1)
    reasons: list[str | None] = ["non-finite features (NaN/inf)" if not ok else None for ok in finite.tolist()]
    good = finite.nonzero().flatten()
    waves = torch.zeros(len(features), num_samples, device=device)
    if len(good):
        waves[good], inverted = _invert(front, features[good], n_iter, num_samples, seed)
        for j, reason in zip(good.tolist(), inverted):
            reasons[j] = reason
    peaks = waves.abs().amax(-1)
    reasons = [r or ("silent audio" if float(p) < SILENCE else None) for r, p in zip(reasons, peaks)]
    valid = torch.tensor([r is None for r in reasons], device=device)
    kept = valid.nonzero().flatten()

    convergence, error, rebuilt = _measure(front, features[kept], waves[kept])

    samples, invalid = [], []
    gain = 10.0 ** (PEAK_DBFS / 20.0) / peaks.clamp_min(SILENCE)
    position = {j: k for k, j in enumerate(kept.tolist())}
    for j, (i, rank, reason) in enumerate(zip(index.tolist(), ranks, reasons)):
        name = classes[int(labels[j])]
        if reason is not None:
            invalid.append({"index": i, "class": name, "reason": reason})
            continue
        file = Path(AUDIO) / safe_name(name) / f"{safe_name(name)}_{rank}.wav"
        data = (waves[j] * gain[j]).cpu().numpy()
        atomic_write(out_dir / file, lambda tmp: sf.write(tmp, data, front.sample_rate, "PCM_16", format="WAV"))
        k = position[j]
        samples.append({
            "index": i,
            "class": name,
            "file": file.as_posix(),
            "gain_db": round(20.0 * math.log10(float(gain[j])), 2),
            "spectral_convergence": round(float(convergence[k]), 4),
            "feature_relative_error": round(float(error[k]), 4),
        })
    if invalid:
        warnings.warn(f"not written ({len(invalid)} of {len(features)} samples): {invalid}", stacklevel=2)

    grid = _grid(out_dir / GRID, features, labels, finite, classes)
    kept_labels = labels[kept]
    report = {
        "synset": {k: synset.manifest.get(k) for k in ("method", "dataset", "ipc", "step")},
        "sample_rate": front.sample_rate,
        "num_samples": num_samples,
        "n_iter": n_iter,
        "seed": seed,
        "peak_dbfs": PEAK_DBFS,
        "spectral_convergence": _summary(convergence, kept_labels, classes),
        "feature_relative_error": _summary(error, kept_labels, classes),
        "expert_accuracy": (
            _expert_accuracy(expert_dir, synset, features[kept], rebuilt, kept_labels)
            if expert_dir is not None and len(kept) else None
        ),
        "spectrograms": grid.name,
        "samples": samples,
        "invalid": invalid,
    }
    save_json(out_dir / REPORT, report)
    return report


def format_summary(report: dict[str, Any], out_dir: str | Path) -> str:
    """A few lines saying what was written where and how well the audio carries the features."""
    lines = [
        f"{len(report['samples'])} WAVs written to {Path(out_dir) / AUDIO}, report {Path(out_dir) / REPORT}",
        f"spectral convergence {report['spectral_convergence']['mean']}, "
        f"feature relative error {report['feature_relative_error']['mean']}",
    ]
    expert = report["expert_accuracy"]
    if expert and "skipped" not in expert:
        lines.append(
            f"expert accuracy: {expert['distilled_features']} on the distilled features, "
            f"{expert['reconstructed_audio']} on the rebuilt audio ({expert['experts']} experts)"
        )
    elif expert:
        lines.append(f"expert accuracy skipped: {expert['skipped']}")
    if report["invalid"]:
        lines.append(f"not written: {[(s['index'], s['reason']) for s in report['invalid']]}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m ddlight.reconstruct DIR``: rebuild the audio of a saved distilled set."""
    keep_freed_memory()
    parser = argparse.ArgumentParser(
        prog="python -m ddlight.reconstruct", description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("directory", type=Path, help="folder with synset.safetensors and manifest.json")
    parser.add_argument("--n-iter", type=int, default=32, help="Griffin-Lim iterations")
    parser.add_argument("--expert-dir", type=Path, default=None, help="expert trajectories for the accuracy check")
    parser.add_argument("--out", type=Path, default=None, help="output folder; None: into DIR itself")
    parser.add_argument("--max-per-class", type=int, default=None, help="rebuild at most this many per class")
    parser.add_argument("--seed", type=int, default=0, help="seed of Griffin-Lim's initial phase")
    parser.add_argument("--device", default="cpu", help="torch device")
    args = parser.parse_args(argv)
    out = args.out or args.directory
    report = reconstruct(
        load_synset(args.directory), out, args.n_iter, args.max_per_class, args.expert_dir, args.seed, args.device
    )
    print(format_summary(report, out))
    return report


if __name__ == "__main__":
    main()
