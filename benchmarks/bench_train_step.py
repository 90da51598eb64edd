"""Training-step time of the chapter-1 architectures on MultiDigits (CPU or GPU).

Run: ``make bench`` or ``python benchmarks/bench_train_step.py [--steps 50] [--batch 32]``.
Reports the median and interquartile range of the wall time of one optimiser step (forward, loss,
backward, Adam step) after a warm-up, per architecture, and the ratio to two single-task networks.
Numbers depend on the machine and its load: this is a measurement, never a test.
"""
from __future__ import annotations

import argparse
import statistics

import torch

import mtlutils as mu
from _timing import train_step_seconds
from mtlutils.data import multidigits


def step_times(arch: str, width: float, batch: dict[str, torch.Tensor], tasks, steps: int,
               warmup: int, device: torch.device) -> list[float]:
    mu.seed_everything(0)
    model = mu.models.create(arch, tasks, width=width).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = {k: v.to(device) for k, v in batch.items()}
    times = [train_step_seconds(model, optimizer, batch, tasks, device) for _ in range(warmup + steps)]
    return times[warmup:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    device = mu.get_device()
    tasks = [mu.TASKS["left"], mu.TASKS["right"]]
    data = multidigits("train", n=args.batch, seed=0)
    batch = {"image": data.images, **data.targets}
    budget = mu.models.count_parameters(mu.models.create("single", tasks))
    setups = {"single-task x2": ("single", 1.0),
              "hard-shared, equal budget": ("split", mu.models.width_for_budget("split", tasks, budget)),
              "hard-shared, width 1": ("split", 1.0)}
    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch} steps={args.steps}")
    reference = None
    for label, (arch, width) in setups.items():
        times = step_times(arch, width, batch, tasks, args.steps, args.warmup, device)
        median = statistics.median(times)
        q1, _, q3 = statistics.quantiles(times, n=4)
        reference = reference or median
        params = mu.models.count_parameters(mu.models.create(arch, tasks, width=width))
        print(f"{label:>26}: {1000 * median:7.2f} ms/step (IQR {1000 * q1:.2f}-{1000 * q3:.2f}), "
              f"{params:>7d} parameters, {median / reference:.2f}x single-task x2")


if __name__ == "__main__":
    main()
