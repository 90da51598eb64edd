"""Training-step time of cross-stitch networks against two single-task networks and a split network.

Run: ``make bench`` or ``python benchmarks/bench_cross_stitch.py [--size 64] [--width 0.25] [--batch 16]``.
Segmentation (7 classes) + surface normals on the SegNet backbone, every model at the same width (so the
cross-stitch network holds exactly the two single-task networks plus its α). One step = forward, both
losses, backward, SGD step. The architectures are timed in interleaved rounds (one step of each, in
turn, a different one first every round), so a change of machine load hits all of them alike; reported:
median, interquartile range and minimum, each as a ratio to the two single-task networks (target for
cross-stitch: at most 1.05). On a busy machine the minimum is the steadier estimate.
A second table times the unit alone (forward + backward of one stitch point): Eq. 1 differentiated by
autograd against the hand-written backward of ``CrossStitchFunction`` (what ``CrossStitch`` runs by default).
Numbers depend on the machine and its load: a measurement, never a test.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import mtlutils as mu
from _timing import sync as _sync, train_step_seconds
from mtlutils.layers.cross_stitch import CrossStitchFunction, mix
from mtlutils.tasks import TASKS, seg_task

SETUPS = {  # label -> (architecture, options, units differentiated by autograd)
    "single-task x2": ("single", {}, False),
    "split": ("split", {}, False),
    "cross-stitch (stage, channel)": ("cross_stitch", {}, False),
    "cross-stitch, autograd units": ("cross_stitch", {}, True),
    "cross-stitch (stage, layer)": ("cross_stitch", {"granularity": "layer"}, False),
    "cross-stitch (conv, channel)": ("cross_stitch", {"stitch": "conv"}, False),
}


def make_batch(n: int, size: int, device: torch.device) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    normal = torch.nn.functional.normalize(torch.randn(n, 3, size, size, generator=gen), dim=1)
    batch = {"image": torch.rand(n, 3, size, size, generator=gen),
             "seg": torch.randint(0, 7, (n, size, size), generator=gen), "normal": normal}
    return {k: v.to(device) for k, v in batch.items()}


def training_steps(args, device: torch.device) -> dict[str, list[float]]:
    tasks = [seg_task(7), TASKS["normal"]]
    batch = make_batch(args.batch, args.size, device)
    runs = {}
    for label, (arch, options, autograd) in SETUPS.items():
        mu.seed_everything(0)
        model = mu.models.create(arch, tasks, width=args.width, **options).to(device)
        for unit in getattr(model, "units", []):
            unit.autograd = autograd
        groups = model.param_groups(1e-3) if hasattr(model, "param_groups") else model.parameters()
        runs[label] = (model, torch.optim.SGD(groups, lr=1e-3, momentum=0.9))

    def step(model, optimizer) -> float:
        return train_step_seconds(model, optimizer, batch, tasks, device)

    times: dict[str, list[float]] = {label: [] for label in runs}
    labels = list(runs)
    for i in range(args.warmup + args.steps):
        for k in range(len(labels)):  # one step of each, starting with a different one every round
            label = labels[(i + k) % len(labels)]
            elapsed = step(*runs[label])
            if i >= args.warmup:
                times[label].append(elapsed)
    return times


def unit_times(args, device: torch.device) -> dict[str, list[float]]:
    """Forward + backward of one per-channel unit at the first stitch point (pool1) of the SegNet."""
    channels = mu.models.vgg.scaled(64, args.width)
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, channels, args.size // 2, args.size // 2)
    xs = [torch.randn(*shape, generator=gen).to(device).requires_grad_() for _ in range(2)]
    alpha = torch.rand(2, 2, channels, generator=gen).to(device).requires_grad_()
    weights = [torch.randn(*shape, generator=gen).to(device) for _ in range(2)]
    versions = {"autograd": lambda: mix(alpha, xs),
                "hand-written backward (default)": lambda: CrossStitchFunction.apply(alpha, *xs)}
    times: dict[str, list[float]] = {label: [] for label in versions}
    for i in range(args.warmup + 10 * args.steps):
        for label, run in versions.items():
            _sync(device)
            start = time.perf_counter()
            out = run()
            sum((w * y).sum() for w, y in zip(weights, out)).backward()
            _sync(device)
            if i >= args.warmup:
                times[label].append(time.perf_counter() - start)
            alpha.grad = None
            for x in xs:
                x.grad = None
    return times


def report(times: dict[str, list[float]], reference: str, unit: str = "ms/step") -> None:
    """Median (IQR) and minimum of every entry, each also as a ratio to the reference's."""
    ref_median, ref_min = statistics.median(times[reference]), min(times[reference])
    for label, values in times.items():
        median = statistics.median(values)
        q1, _, q3 = statistics.quantiles(values, n=4)
        print(f"{label:>32}: median {1000 * median:8.2f} {unit} (IQR {1000 * q1:.2f}-{1000 * q3:.2f}), "
              f"{median / ref_median:5.3f}x; min {1000 * min(values):8.2f}, {min(values) / ref_min:5.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="square image side (multiple of 32)")
    parser.add_argument("--width", type=float, default=0.25, help="SegNet width multiplier")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = mu.get_device()
    print(f"device={device} threads={torch.get_num_threads()} size={args.size}x{args.size} width={args.width} "
          f"batch={args.batch} steps={args.steps} (interleaved)")
    tasks = [seg_task(7), TASKS["normal"]]
    for label, (arch, options, _) in SETUPS.items():
        n = mu.models.count_parameters(mu.models.create(arch, tasks, width=args.width, **options))
        print(f"{label:>32}: {n:>9d} parameters")
    print("training step (seg + normals):")
    report(training_steps(args, device), "single-task x2")
    print("one cross-stitch unit at pool1, forward + backward:")
    report(unit_times(args, device), "autograd", unit="ms")


if __name__ == "__main__":
    main()
