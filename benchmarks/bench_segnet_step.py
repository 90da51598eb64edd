"""SegNet training step on the CPU profile sizes: images/s and peak memory.

Run: ``make bench`` or ``python benchmarks/bench_segnet_step.py [--size 64] [--width 0.25] [--batch 16]``.
Measures one optimiser step (forward, three dense losses, backward, Adam) of the ``single`` (one SegNet per
task) and ``split`` (one shared SegNet) architectures on seg + depth + normal, after a warm-up. Peak memory
is the process's maximum resident set size (CPU) or ``torch.cuda.max_memory_allocated`` (GPU).
A measurement, never a test.
"""
from __future__ import annotations

import argparse
import resource
import statistics

import torch

import mtlutils as mu
from _timing import train_step_seconds
from mtlutils.tasks import TASKS, seg_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    device = mu.get_device()
    tasks = [seg_task(7), TASKS["depth"], TASKS["normal"]]
    gen = torch.Generator().manual_seed(0)
    n, s = args.batch, args.size
    normal = torch.nn.functional.normalize(torch.randn(n, 3, s, s, generator=gen), dim=1)
    batch = {"image": torch.rand(n, 3, s, s, generator=gen), "seg": torch.randint(0, 7, (n, s, s), generator=gen),
             "depth": torch.rand(n, 1, s, s, generator=gen) + 0.5, "normal": normal}
    batch = {k: v.to(device) for k, v in batch.items()}
    print(f"device={device} threads={torch.get_num_threads()} size={s}x{s} width={args.width} batch={n}")
    for arch in ("single", "split"):
        mu.seed_everything(0)
        model = mu.models.create(arch, tasks, width=args.width).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        times = [train_step_seconds(model, opt, batch, tasks, device)
                 for _ in range(args.warmup + args.steps)][args.warmup:]
        median = statistics.median(times)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        params = mu.models.count_parameters(model)
        print(f"{arch:>7}: {1000 * median:7.1f} ms/step, {n / median:7.1f} images/s, "
              f"{params:>9d} parameters, peak memory {peak:.0f} MiB")


if __name__ == "__main__":
    main()
