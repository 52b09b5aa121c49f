"""MTT step time and peak memory: ddlight's full and checkpointed unrolls against the original loop.

One MTT update = ``syn_steps`` differentiable SGD steps of a ConvNet student (width 128, depth 3, instance
norm) on the whole synthetic set (``10 × ipc`` FD-MFCC-shaped features, SpecAugment on), the normalised
parameter-matching loss, and its backward pass to the set and the step size. Three implementations:

* ``original``: the inner loop of GeorgeCazenavette/mtt-distillation ``distill.py`` (in ``main()``, from
  ``student_params = [...]`` and the ``for step in range(args.syn_steps)`` loop through
  ``grand_loss.backward()``, commit 0c42493) reproduced here: a list ``student_params`` of flat vectors, the network run with views of
  the flat vector swapped in as plain attributes (what its ``reparam_module.py`` does), chunks popped
  from ``torch.split(randperm)``, ``mse_loss(reduction="sum") / num_params`` for both distances, one
  ``backward()`` of the whole unroll;
* ``full``: :meth:`ddlight.distillers.mtt.MTT.unroll` + :func:`~ddlight.distillers.mtt.trajectory_loss` +
  ``backward()``;
* ``checkpointed``: :meth:`ddlight.distillers.mtt.MTT.checkpointed_backward` (``unroll: checkpointed``,
  ``segment`` steps per recomputed segment);
* ``full_bf16`` (time table only): ``full`` under bfloat16 autocast, which is what a run with
  ``--trainer.precision bf16-mixed`` does (Lightning wraps the distiller's step in ``torch.autocast``); the
  table also gives the cosine between its gradient of the set and ``full``'s (same augmentation draws).

Peak memory is measured for each cell in a fresh subprocess: on CPU the peak resident set (``ru_maxrss``)
minus the resident set before the update, with ``MALLOC_MMAP_THRESHOLD_=65536`` so that large tensors are
returned to the system when freed and the peak follows live memory; on CUDA ``max_memory_allocated``
minus the memory allocated before. Times are the median of ``--repeats`` updates per implementation,
the implementations interleaved in one process so that the machine's load hits all of them alike (and
its allocator: freed memory kept for reuse, as the ``ddlight`` commands run, for all three).

    python -m benchmarks.mtt_step --write                   # both tables into BENCHMARKS.md
    python -m benchmarks.mtt_step --shape 3 20 201 --syn-steps 4 30 --full-max-steps 4 --skip-time --write
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.report import machine, publish
from ddlight.allocator import keep_freed_memory
from ddlight.distillers.mtt import MTT, trajectory_loss
from ddlight.networks import build_network

SECTION = "mtt_step"  # BENCHMARKS.md markers <!-- mtt_step:start --> ... <!-- mtt_step:end -->
CLASSES = 10
IMPLEMENTATIONS = ("original", "full", "checkpointed")


class OriginalStudent(nn.Module):
    """The original's ``ReparamModule``: a network whose parameters are views of one flat vector.

    Its parameters are deleted from the modules; each forward call sets views of the given flat vector
    as plain attributes in their place, then runs the network.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.infos = [(owner, name, p.shape) for owner in module.modules() for name, p in owner.named_parameters(recurse=False)]
        for owner, name, _ in self.infos:
            delattr(owner, name)

    def forward(self, x: Tensor, flat_param: Tensor) -> Tensor:
        views = flat_param.split([shape.numel() for _, _, shape in self.infos])
        for (owner, name, shape), view in zip(self.infos, views):
            setattr(owner, name, view.view(shape))
        return self.module(x)


def setting(shape: tuple[int, int, int], ipc: int, syn_steps: int, segment: int, device: torch.device) -> dict:
    """Synthetic set, labels, expert start/target vectors and the ddlight MTT module of one cell."""
    torch.manual_seed(0)
    manifest = {"network": "convnet", "network_options": {"width": 128, "depth": 3}, "in_shape": list(shape),
                "num_classes": CLASSES}
    mtt = MTT(shape, CLASSES, ipc=ipc, syn_steps=syn_steps, segment=segment, syn_lr_init=0.01).to(device)
    mtt.build_student(manifest)
    mtt.student.to(device)
    mtt.augment_generator = torch.Generator(device)
    start = torch.cat([p.detach().flatten() for p in mtt.student.parameters()])
    network = build_network("convnet", shape, CLASSES, width=128, depth=3).to(device)
    return {"mtt": mtt, "start": start, "target": start + 0.01 * torch.randn_like(start),
            "original": OriginalStudent(network).train()}


def original_update(cell: dict) -> None:
    """One update of the original's inner loop (see the module docstring for the lines reproduced)."""
    mtt, start, target = cell["mtt"], cell["start"], cell["target"]
    syn_images, y_hat, syn_lr, batch_syn = mtt.synthetic, mtt.labels, mtt.syn_lr, len(mtt.synthetic)
    num_params = start.numel()
    student_params = [start.clone().requires_grad_(True)]
    indices_chunks: list[Tensor] = []
    for _ in range(mtt.hparams.syn_steps):
        if not indices_chunks:
            indices_chunks = list(torch.split(torch.randperm(len(syn_images)), batch_syn))
        these_indices = indices_chunks.pop()
        x = mtt.augment(syn_images[these_indices])  # the original's DiffAugment (DSA) slot
        out = cell["original"](x, flat_param=student_params[-1])
        ce_loss = F.cross_entropy(out, y_hat[these_indices])
        grad = torch.autograd.grad(ce_loss, student_params[-1], create_graph=True)[0]
        student_params.append(student_params[-1] - syn_lr * grad)
    param_loss = F.mse_loss(student_params[-1], target, reduction="sum") / num_params
    param_dist = F.mse_loss(start, target, reduction="sum") / num_params
    grand_loss = param_loss / param_dist
    mtt.synthetic.grad = mtt.syn_lr.grad = None
    grand_loss.backward()


def full_update(cell: dict) -> None:
    """One update of ddlight's full unroll."""
    mtt, start, target = cell["mtt"], cell["start"], cell["target"]
    mtt.synthetic.grad = mtt.syn_lr.grad = None
    trajectory_loss(mtt.unroll(start, mtt.plan(torch.Generator())), start, target).backward()


def checkpointed_update(cell: dict) -> None:
    """One update of ddlight's checkpointed unroll."""
    mtt = cell["mtt"]
    mtt.synthetic.grad = mtt.syn_lr.grad = None
    mtt.checkpointed_backward(cell["start"], cell["target"], mtt.plan(torch.Generator()))


def full_bf16_update(cell: dict) -> None:
    """ddlight's full unroll under bfloat16 autocast: what ``--trainer.precision bf16-mixed`` runs."""
    with torch.autocast(cell["start"].device.type, dtype=torch.bfloat16):
        full_update(cell)


UPDATES: dict[str, Callable[[dict], None]] = {
    "original": original_update, "full": full_update, "checkpointed": checkpointed_update,
    "full_bf16": full_bf16_update,
}
#: Implementations of the time table: the memory table's and the full unroll under bfloat16 autocast.
TIMED = (*IMPLEMENTATIONS, "full_bf16")


def set_gradient(cell: dict, impl: str) -> Tensor:
    """The gradient of the synthetic set after one update of ``impl`` (SpecAugment's draws reseeded)."""
    cell["mtt"].augment_generator.manual_seed(0)
    UPDATES[impl](cell)
    return cell["mtt"].synthetic.grad.detach().flatten().clone()


def resident_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_memory(impl: str, shape: tuple[int, int, int], ipc: int, syn_steps: int, segment: int, device: str) -> float:
    """Peak memory (MiB) of one update above what was in use before it (run in a fresh process)."""
    dev = torch.device(device)
    cell = setting(shape, ipc, syn_steps, segment, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        UPDATES[impl](cell)
        torch.cuda.synchronize(dev)
        return (torch.cuda.max_memory_allocated(dev) - before) / 2**20
    before = resident_bytes()
    UPDATES[impl](cell)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before) / 2**20


def memory_in_subprocess(impl: str, shape: tuple[int, int, int], ipc: int, syn_steps: int, segment: int,
                         device: str, threads: int) -> float:
    """:func:`measure_memory` in a fresh interpreter (the peak of one process is not resettable on CPU)."""
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "benchmarks.mtt_step", "--cell", impl, "--shape", *map(str, shape),
               "--ipc", str(ipc), "--syn-steps", str(syn_steps), "--segment", str(segment), "--device", device,
               "--threads", str(threads)]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["mib"])


def median_seconds(shape: tuple[int, int, int], ipc: int, syn_steps: int, segment: int, device: str,
                   repeats: int) -> dict[str, float]:
    """Median seconds per update of each implementation, interleaved, after one warm-up update each.

    Also ``cos_bf16``: the cosine between the set's gradients of ``full_bf16`` and ``full`` (same draws).
    """
    dev = torch.device(device)
    cell = setting(shape, ipc, syn_steps, segment, dev)
    cosine = F.cosine_similarity(set_gradient(cell, "full"), set_gradient(cell, "full_bf16"), dim=0)
    times: dict[str, list[float]] = {impl: [] for impl in TIMED}
    for round_ in range(repeats + 1):
        for impl in TIMED:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            began = time.perf_counter()
            UPDATES[impl](cell)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if round_:  # round 0 warms up
                times[impl].append(time.perf_counter() - began)
    return {impl: statistics.median(values) for impl, values in times.items()} | {"cos_bf16": float(cosine)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[3, 20, 32], help="feature shape C F T")
    parser.add_argument("--ipc", type=int, nargs="+", default=[10])
    parser.add_argument("--syn-steps", type=int, nargs="+", default=[10, 20, 40, 80])
    parser.add_argument("--segment", type=int, default=4, help="steps per segment of the checkpointed unroll")
    parser.add_argument("--time-steps", type=int, default=10, help="syn_steps of the timing cells")
    parser.add_argument("--repeats", type=int, default=3, help="timed updates per implementation")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-time", action="store_true", help="no time table")
    parser.add_argument("--skip-memory", action="store_true", help="no memory table")
    parser.add_argument("--implementations", nargs="+", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS),
                         help="implementations of the memory table")
    parser.add_argument("--full-max-steps", type=int, default=10**6,
                        help="memory cells of original/full only up to this syn_steps (they grow with it: may not fit)")
    parser.add_argument("--write", action="store_true", help="write the tables into BENCHMARKS.md")
    parser.add_argument("--cell", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)  # one memory cell (subprocess)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(args.shape)
    if args.cell:
        mib = measure_memory(args.cell, shape, args.ipc[0], args.syn_steps[0], args.segment, args.device)
        print(json.dumps({"mib": mib}))
        return
    load = os.getloadavg()[0]
    suffix = "" if shape == (3, 20, 32) else "_" + "x".join(map(str, shape))
    header = (
        f"`python -m benchmarks.mtt_step {' '.join(sys.argv[1:])}` on {machine(args.device)}, load average "
        f"{load:.1f} at the start. ConvNet width 128, depth 3, instance norm, {CLASSES} classes, features "
        f"{'×'.join(map(str, shape))}, the whole set in every student step, SpecAugment on; checkpointed unroll "
        f"with segment {args.segment}. `original` reproduces the inner loop of mtt-distillation's `distill.py` "
        "(see the script's docstring)."
    )
    if not args.skip_memory:
        lines = [f"## MTT update: peak memory ({'×'.join(map(str, shape))})", "", header + " Peak memory above the "
                 "memory in use before the update, one fresh process per cell.", "",
                 "| ipc | syn_steps | original MiB | full MiB | checkpointed MiB | checkpointed / full |",
                 "|---|---|---|---|---|---|"]
        for ipc in args.ipc:
            for steps in args.syn_steps:
                run = [i for i in args.implementations if i == "checkpointed" or steps <= args.full_max_steps]
                mib = {impl: memory_in_subprocess(impl, shape, ipc, steps, args.segment, args.device, args.threads)
                       for impl in run}
                cells = [f"{mib[impl]:.0f}" if impl in mib else "–" for impl in IMPLEMENTATIONS]
                ratio = f"{mib['checkpointed'] / mib['full']:.2f}" if {"full", "checkpointed"} <= set(mib) else "–"
                lines.append(f"| {ipc} | {steps} | {' | '.join(cells)} | {ratio} |")
                print(lines[-1], flush=True)
        publish(SECTION + "_memory" + suffix, "\n".join(lines), args.write)
    if not args.skip_time:
        keep_freed_memory()  # as the ddlight commands run; every implementation shares the process
        lines = [f"## MTT update: time ({'×'.join(map(str, shape))})", "", header, "",
                 f"Seconds per update (median of {args.repeats}, implementations interleaved), syn_steps "
                 f"{args.time_steps}:", "",
                 "| ipc | original s | full s | checkpointed s | full bf16 s | full / original | "
                 "checkpointed / original | full bf16 / original | cos(bf16, fp32 gradient) |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for ipc in args.ipc:
            sec = median_seconds(shape, ipc, args.time_steps, args.segment, args.device, args.repeats)
            seconds = [f"{sec[impl]:.2f}" for impl in TIMED]
            ratios = [f"{sec[impl] / sec['original']:.2f}" for impl in TIMED[1:]]
            lines.append(f"| {ipc} | {' | '.join(seconds)} | {' | '.join(ratios)} | {sec['cos_bf16']:.4f} |")
            print(lines[-1], flush=True)
        publish(SECTION + "_time" + suffix, "\n".join(lines), args.write)


if __name__ == "__main__":
    main()
