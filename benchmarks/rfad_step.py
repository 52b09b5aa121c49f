"""Seconds per RFAD training step against the number of random networks M and the real batch size.

One step samples M random ConvNets, maps the real batch (no gradient) and the synthetic set (with
gradient) to random features, solves the float64 kernel ridge regression and back-propagates the loss to
the set — :meth:`ddlight.distillers.rfad.RFAD.regression_loss`, its gradient and the Adam update. Inputs are FD-MFCC-shaped
``3 x 20 x 32`` features (SyntheticSounds at 1 s, hop 512), 11 classes, ipc 10. The result replaces the
``RFAD step time`` section of ``BENCHMARKS.md``.

    python -m benchmarks.rfad_step --width 128 --repeats 2 --threads 1
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from benchmarks.report import BENCHMARKS, machine, write_section
from ddlight.distillers.rfad import RFAD

SECTION = "rfad"  # BENCHMARKS.md markers <!-- rfad:start --> ... <!-- rfad:end -->
SHAPE, CLASSES = (3, 20, 32), 11


def step_seconds(model: RFAD, optimizer: torch.optim.Optimizer, batch_size: int, repeats: int) -> float:
    """Mean wall-clock seconds of ``repeats`` full RFAD steps on random real batches of ``batch_size``."""
    x, y = torch.randn(batch_size, *SHAPE), torch.randint(0, CLASSES, (batch_size,))
    start = time.perf_counter()
    for step in range(repeats):
        loss, _ = model.regression_loss(x, y, model.random_networks(step))
        for param, grad in zip(model.trained_tensors(), torch.autograd.grad(loss, model.trained_tensors())):
            param.grad = grad
        optimizer.step()
        optimizer.zero_grad()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=128, help="channels of the random ConvNets")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--models", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per cell (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]  # other jobs on the machine inflate the times: recorded with them
    rows = []
    for num_models in args.models:
        model = RFAD(SHAPE, CLASSES, ipc=args.ipc, init="noise", num_models=num_models, width=args.width)
        optimizer = model.configure_optimizers()
        step_seconds(model, optimizer, args.batch_sizes[0], 1)  # warm-up
        cells = [step_seconds(model, optimizer, b, args.repeats) for b in args.batch_sizes]
        rows.append(f"| {num_models} | " + " | ".join(f"{s:.2f}" for s in cells) + " |")
        print(rows[-1], flush=True)
    section = "\n".join([
        "## RFAD step time",
        "",
        f"Seconds per RFAD training step (random networks + features + float64 kernel ridge regression + "
        f"backward + Adam), synthetic set {CLASSES} classes x ipc {args.ipc}, features {'x'.join(map(str, SHAPE))}, "
        f"random ConvNets depth 3, width {args.width}, no normalisation; mean of {args.repeats} steps after a "
        f"warm-up. `python -m benchmarks.rfad_step --width {args.width} --repeats {args.repeats} --threads {args.threads}`",
        "",
        f"Machine: {machine()}; 1-minute load average {load:.1f} when the measurement started.",
        "",
        "| M \\ real batch | " + " | ".join(map(str, args.batch_sizes)) + " |",
        "|---|" + "---|" * len(args.batch_sizes),
        *rows,
        "",
        "Every network sees both the real batch and the synthetic set (forward and backward), a fixed cost per",
        "network: the step time grows with M much faster than with the real batch size.",
    ])
    write_section(SECTION, section, BENCHMARKS)
    print(f"wrote the {SECTION} section of {BENCHMARKS}")


if __name__ == "__main__":
    main()
