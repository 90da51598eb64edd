"""MTAN's training-step time against its FLOP count, beside one SegNet, the split baselines and the
reference per-task loop (chapter 4, "Compute: where MTAN's time goes"; book/authors_code.md).

Run: ``python benchmarks/bench_mtan.py [--size 64 64] [--width 0.25] [--batch 16] [--tasks 3]``.

For every architecture: FLOPs of one training step (forward + backward, counted by
``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix products; batch norm, activations
and pooling are not counted), the median wall time of one optimiser step (forward, dense losses,
backward, Adam) after a warm-up, and the **FLOP-predicted time**: the step time the architecture would
take if it ran at the FLOP rate (FLOPs per second) of the baseline, one shared SegNet with the same
task heads (``split``). The issue's target is MTAN's step time at most 1.1x its FLOP-predicted time.
``mtan (per-task loop)`` is the reference code's way (every task's attention path and every shared
``f`` run separately), the same function as ``mtan``. Architectures are timed in turns (round robin)
so that a change of machine load hits them alike. A measurement, never a test: numbers depend on the
machine and its load.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import mtlutils as mu
from mtlutils.tasks import TASKS, seg_task

ARCHS = ("single", "split", "split_wide", "mtan", "mtan (per-task loop)")


def make_batch(tasks, n: int, size: tuple[int, int], classes: int, device) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    h, w = size
    batch = {"image": torch.rand(n, 3, h, w, generator=gen), "seg": torch.randint(0, classes, (n, h, w), generator=gen),
             "depth": torch.rand(n, 1, h, w, generator=gen) + 0.5,
             "normal": torch.nn.functional.normalize(torch.randn(n, 3, h, w, generator=gen), dim=1)}
    return {k: v.to(device) for k, v in batch.items() if k == "image" or k in {t.name for t in tasks}}


def build(arch: str, tasks, width: float, device):
    mu.seed_everything(0)
    name = "mtan" if arch.startswith("mtan") else arch
    model = mu.models.create(name, tasks, width=width).to(device)
    if arch == "mtan (per-task loop)":
        model.fast = False
    return model, torch.optim.Adam(model.parameters(), lr=1e-4)


def step(model, opt, tasks, batch) -> None:
    out = model(batch["image"])
    loss = sum(t.loss(out[t.name], batch[t.name]) for t in tasks)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def step_flops(model, opt, tasks, batch) -> int:
    """FLOPs of forward + backward. FlopCounterMode over-counts the weight gradient of a grouped
    convolution by its number of groups (torch 2.13), so MTAN is counted on its per-task loop: the same
    convolutions, ungrouped."""
    fast = getattr(model, "fast", None)
    if fast is not None:
        model.fast = False
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            out = model(batch["image"])
            sum(t.loss(out[t.name], batch[t.name]) for t in tasks).backward()
    finally:
        if fast is not None:
            model.fast = fast
    opt.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def measure(archs, tasks, batch, width: float, steps: int, warmup: int, device, clock=time.perf_counter
            ) -> dict[str, dict[str, float]]:
    runs = {arch: build(arch, tasks, width, device) for arch in archs}
    flops = {arch: step_flops(m, o, tasks, batch) for arch, (m, o) in runs.items()}
    times: dict[str, list[float]] = {arch: [] for arch in archs}
    for i in range(warmup + steps):
        for arch, (model, opt) in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = clock()
            step(model, opt, tasks, batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times[arch].append(clock() - start)
    return {arch: {"flops": flops[arch], "seconds": statistics.median(times[arch]),
                   "params": mu.models.count_parameters(runs[arch][0])} for arch in archs}


def report(results: dict[str, dict[str, float]], baseline: str = "split") -> None:
    base = results[baseline]
    rate = base["flops"] / base["seconds"]
    print(f"{'architecture':>22} {'params':>9} {'GFLOP/step':>10} {'ms/step':>8} {'x split':>8} "
          f"{'FLOP-predicted ms':>17} {'time / predicted':>16}")
    for arch, r in results.items():
        predicted = r["flops"] / rate
        print(f"{arch:>22} {r['params']:>9d} {r['flops'] / 1e9:>10.3f} {1000 * r['seconds']:>8.1f} "
              f"{r['seconds'] / base['seconds']:>8.2f} {1000 * predicted:>17.1f} {r['seconds'] / predicted:>16.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(64, 64), metavar=("H", "W"))
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tasks", type=int, choices=(2, 3), default=3, help="3: seg13+depth+normal, 2: seg7+depth")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's choice)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or the process's CPU time (with --threads 1 on a CPU: the compute time "
                             "of the step, insensitive to other processes competing for the cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = mu.get_device()
    classes = 13 if args.tasks == 3 else 7
    tasks = [seg_task(classes), TASKS["depth"], TASKS["normal"]][: args.tasks]
    batch = make_batch(tasks, args.batch, tuple(args.size), classes, device)
    archs = list(dict.fromkeys(["split"] + args.archs))
    print(f"device={device} threads={torch.get_num_threads()} size={args.size[0]}x{args.size[1]} "
          f"width={args.width} batch={args.batch} tasks={[t.name for t in tasks]}")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"clock={args.clock}")
    report(measure(archs, tasks, batch, args.width, args.steps, args.warmup, device, clock))


if __name__ == "__main__":
    main()
