"""RFAD step time, ddlight against the original's loop (yolky/RFAD), after checking they compute the same numbers.

The original's step is reproduced from ``distillation.py`` (commit c9ef03e, the body of ``for i in
range(iters)`` in ``distill_dataset``) with the settings ``run_distillation.py`` passes:

* the random networks are drawn afresh every step (scheduler ``(0, n_models, 1)``: ``model_rot`` 1), each a
  ``ConvNet_wide`` without normalisation and with its head chopped off: ``depth`` x [conv3x3 -> ReLU -> 2x2
  average pool], conv weights ``N(0, 2/fan_in)``, biases ``N(0, 0.1^2)`` (``models.py``);
* the set goes through ``transform_mat``, a ``(C·F·T)²`` identity matrix the optimiser also trains (lr
  5e-5; ``data.transform_data``), then the networks, with gradient;
* ``K_ss = 2 φ_s φ_sᵀ + 0.01`` plus ``jit · tr(K_ss)/n · I``; ``n_batches`` real batches of 1280 clips drawn
  with ``np.random.choice`` and mapped without gradient; ``torch.linalg.solve`` in float64; ``K_ts = 2 φ_t
  φ_sᵀ + 0.01``; Platt cross-entropy ``CE(exp(k) · preds, labels)``; backward; one optimiser step. The
  original uses AdaBelief from ``torch_optimizer``, which is not a dependency here: Adam stands in (a few
  element-wise operations per tensor, the same for both ways).

ddlight's step is :class:`~ddlight.distillers.rfad.RFAD`'s: ``draw_real_batch``, ``random_networks`` (the
same architecture and initialisation), ``regression_loss`` (Cholesky solve), backward and Adam. First both
losses and gradients are computed on the same networks and real batch and compared; then the two loops
are timed interleaved in one process (median of ``--rounds``), so load from other jobs hits both alike.
The result replaces the ``rfad_original`` section of ``BENCHMARKS.md``.

    python -m benchmarks.rfad_original --models 1 4 --width 128 --rounds 3 --write
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.report import machine, publish
from ddlight.distillers.rfad import RFAD

SECTION = "rfad_original"
SHAPE, CLASSES = (3, 20, 32), 11
JIT = 5e-3  # run_distillation.py's default --jit, ddlight's ridge
REAL_BATCH = 1280  # the original's real minibatch


def original_network(width: int, depth: int) -> nn.Sequential:
    """One random ``ConvNet_wide`` (no normalisation, chopped head) initialised as the original does."""
    layers: list[nn.Module] = []
    channels = SHAPE[0]
    for _ in range(depth):
        conv = nn.Conv2d(channels, width, 3, padding=1)
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / conv.weight[0].numel()))
        nn.init.normal_(conv.bias, 0.0, 0.1)
        layers += [conv, nn.ReLU(inplace=True), nn.AvgPool2d(2, 2)]
        channels = width
    return nn.Sequential(*layers, nn.Flatten()).requires_grad_(False).eval()


class OriginalStep:
    """The state of the original's loop (set, transform matrix, Platt ``k``, labels, optimiser) and its step."""

    def __init__(self, synthetic: Tensor, x_train: Tensor, y_train: Tensor, models: int, width: int, depth: int,
                 batches: int) -> None:
        self.x_coreset = nn.Parameter(synthetic.clone())
        self.transform_mat = nn.Parameter(torch.eye(math.prod(SHAPE)))
        self.k = nn.Parameter(torch.tensor(0.0).double())
        self.y_coreset = F.one_hot(torch.arange(CLASSES).repeat_interleave(len(synthetic) // CLASSES), CLASSES).float()
        self.y_coreset -= 1.0 / CLASSES
        self.x_train, self.y_train = x_train, y_train
        self.models, self.width, self.depth, self.batches = models, width, depth, batches
        self.optimizer = torch.optim.Adam([{"params": [self.x_coreset]}, {"params": [self.transform_mat], "lr": 5e-5},
                                           {"params": [self.k], "lr": 1e-2}], lr=1e-3)

    def loss(self, networks: Sequence[nn.Module], x_batch: Tensor, y_batch: Tensor) -> Tensor:
        """The original's loss for given networks and real batch (the lines after the networks are drawn)."""
        n = len(self.x_coreset)
        transformed = (self.x_coreset.reshape(n, -1) @ self.transform_mat).view(*self.x_coreset.shape)
        phi_s = torch.cat([net(transformed).flatten(1) for net in networks], 1)
        phi_s = phi_s / np.sqrt(len(networks) * (phi_s.shape[1] // len(networks)))
        k_ss = 2 * phi_s @ phi_s.T + 0.01
        k_ss = k_ss + JIT * torch.eye(n) * torch.trace(k_ss) / n
        with torch.no_grad():
            phi_t = torch.cat([net(x_batch).flatten(1).detach() for net in networks], 1)
            phi_t = phi_t / np.sqrt(len(networks) * (phi_t.shape[1] // len(networks)))
        solved = torch.linalg.solve(k_ss.double(), self.y_coreset.double())
        preds = (2 * phi_t @ phi_s.T + 0.01).double() @ solved
        return F.cross_entropy(torch.exp(self.k) * preds, y_batch)

    def step(self) -> None:
        """One iteration of the original's loop: fresh networks, ``batches`` real batches, loss, update."""
        self.optimizer.zero_grad()
        torch.manual_seed(np.random.randint(0, 50000))
        networks = [original_network(self.width, self.depth) for _ in range(self.models)]
        chosen = np.concatenate([np.random.choice(len(self.x_train), REAL_BATCH, replace=False)
                                 for _ in range(self.batches)])
        self.loss(networks, self.x_train[chosen], self.y_train[chosen]).backward()
        self.optimizer.step()


def ddlight_step(model: RFAD, optimizer: torch.optim.Optimizer, step: int) -> None:
    """One RFAD training step as :meth:`RFAD.loss` takes it (logging left out), then Adam."""
    features, labels = model.draw_real_batch(step)
    loss, _ = model.regression_loss(features, labels, model.random_networks(step))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def same_numbers(model: RFAD, original: OriginalStep, x: Tensor, y: Tensor) -> tuple[float, float]:
    """Relative differences of the loss and of the set's gradient, both ways on the same networks and batch."""
    networks = model.random_networks(0)
    ours, _ = model.regression_loss(x, y, networks)
    (grad_ours,) = torch.autograd.grad(ours, [model.synthetic])
    theirs = original.loss(networks, x, y)
    (grad_theirs,) = torch.autograd.grad(theirs, [original.x_coreset])
    ours, theirs = float(ours.detach()), float(theirs.detach())
    return (abs(ours - theirs) / abs(theirs),
            float((grad_ours - grad_theirs).norm() / grad_theirs.norm()))


def median_seconds(ways: dict[str, Callable[[int], None]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each way over ``rounds``, alternating who goes first."""
    times: dict[str, list[float]] = {name: [] for name in ways}
    for r in range(rounds):
        for name in (list(ways) if r % 2 == 0 else list(reversed(ways))):
            start = time.perf_counter()
            ways[name](r)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, nargs="+", default=[1, 4], help="random networks M per step")
    parser.add_argument("--width", type=int, default=128, help="channels of the random ConvNets")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--batches", type=int, default=1, help="real batches of 1280 per step (original: 4)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    np.random.seed(0)
    generator = torch.Generator().manual_seed(0)
    x_train = torch.randn(4 * REAL_BATCH, *SHAPE, generator=generator)
    y_train = torch.arange(len(x_train)) % CLASSES
    load = os.getloadavg()[0]
    rows = []
    for models in args.models:
        model = RFAD(SHAPE, CLASSES, ipc=args.ipc, init="noise", num_models=models, width=args.width,
                     depth=args.depth, ridge=JIT, kernel_constant=0.01, real_batch=args.batches * REAL_BATCH,
                     loss="ce", seed=0)
        model.hold_real_data(x_train, y_train)
        optimizer = model.configure_optimizers()
        original = OriginalStep(model.synthetic.detach(), x_train, y_train, models, args.width, args.depth,
                                args.batches)
        batch = torch.randperm(len(x_train), generator=generator)[: args.batches * REAL_BATCH]
        loss_diff, grad_diff = same_numbers(model, original, x_train[batch], y_train[batch])
        ddlight_step(model, optimizer, 0)  # warm-up of both
        original.step()
        seconds = median_seconds({"ddlight": lambda r: ddlight_step(model, optimizer, r + 1),
                                  "original": lambda r: original.step()}, args.rounds)
        rows.append(f"| {models} | {args.batches * REAL_BATCH} | {loss_diff:.1e} | {grad_diff:.1e} | "
                    f"{seconds['original']:.2f} | {seconds['ddlight']:.2f} | "
                    f"**{seconds['ddlight'] / seconds['original']:.2f}** |")
        print(rows[-1], flush=True)
    section = "\n".join([
        "## RFAD step: ddlight against the original loop",
        "",
        f"`python -m benchmarks.rfad_original --models {' '.join(map(str, args.models))} --width {args.width} "
        f"--batches {args.batches} --rounds {args.rounds} --threads {args.threads}` on {machine()}; load average "
        f"{load:.1f} at the start. Synthetic set {CLASSES} classes x ipc {args.ipc}, features "
        f"{'x'.join(map(str, SHAPE))}; random ConvNets width {args.width}, depth {args.depth}, no normalisation; "
        f"ridge (jit) {JIT}, kernel constant 0.01, Platt cross-entropy. The original's step is reproduced from "
        "yolky/RFAD `distillation.py` (commit c9ef03e, the loop body of `distill_dataset`; Adam standing in for "
        "AdaBelief). Differences: relative, of the loss and of the set's gradient, both ways on the same "
        "networks and real batch. Seconds: median per step over interleaved rounds.",
        "",
        "| M | real batch | loss difference | gradient difference | original s/step | ddlight s/step | ddlight / original |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "The original also multiplies the set by its trained (C·F·T)² identity matrix every step. It builds the "
        "kernel matrices in float32 before its float64 solve, where ddlight casts the float32 features to float64 "
        "first: the differences above are that float32 rounding (with the original's kernels built in float64 they "
        "fall to about 4e-10 for the loss and 5e-7 for the gradient; Cholesky against general solve adds nothing "
        "visible).",
    ])
    publish(SECTION, section, args.write)


if __name__ == "__main__":
    main()
