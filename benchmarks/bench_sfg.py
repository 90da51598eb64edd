"""Training-step time of Stochastic Filter Groups against the hard-shared network of the same width.

Run: ``python benchmarks/bench_sfg.py [--steps 30] [--rounds 5] [--threads 2] [--setting vgg|segnet|all]``.

One optimiser step = forward, task losses (+ the SFG entropy regulariser), backward, Adam step. Per setting
it times, interleaved round by round so that a change of machine load hits every model alike:

* ``split``: the hard-shared network (the reference, 1.00x);
* ``sfg``: learned grouping, the efficient filter-group convolution (one convolution per layer);
* ``sfg masked``: the same network with the readable masked implementation (one convolution per group);
* ``sfg fixed``: a fixed one-hot grouping (no sampling), the "fixed grouping" baseline;
* ``single x2, half width``: two single-task networks of half the width.

The issue's target: ``sfg`` at most 1.2x ``split``. Reports medians and interquartile ranges over all
timed steps. ``--clock cpu`` times the process's CPU time instead of wall time: on a loaded machine
(other jobs competing for the cores) it is far less noisy, and with ``--threads 1`` it is the step's own
compute. Numbers depend on the machine and its load: a measurement, never a test.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import mtlutils as mu
from mtlutils.data import make_scenes, multidigits

SETTINGS = {
    # the chapter's image-level setting: MultiDigits, sum + left, VGG-style backbone
    "vgg": dict(tasks=["sum", "left"], width=0.5, batch=32),
    # the same at full width (16-32-64-64 kernels)
    "vgg-w1": dict(tasks=["sum", "left"], width=1.0, batch=32),
    # dense: scenes, 7-class segmentation + depth, SegNet
    "segnet": dict(tasks=["seg", "depth"], width=0.125, batch=16, size=(64, 64)),
    # the chapter's dense experiment: 32x32 images
    "segnet-32": dict(tasks=["seg", "depth"], width=0.125, batch=16, size=(32, 32)),
}


def make_batch(setting: str, batch: int) -> tuple[list[mu.Task], dict[str, torch.Tensor]]:
    if setting.startswith("vgg"):
        data = multidigits("train", n=batch, seed=0, targets=("sum", "left"))
        return [mu.TASKS["sum"], mu.TASKS["left"]], {"image": data.images, **data.targets}
    scenes = make_scenes(batch, size=SETTINGS[setting]["size"], classes=7, seed=0, split="train")
    samples = [scenes[i] for i in range(batch)]
    stacked = {k: torch.stack([s[k] for s in samples]) for k in ("image", "seg", "depth")}
    return [mu.tasks.seg_task(7), mu.TASKS["depth"]], stacked


def models(tasks, setting: str, width: float) -> dict[str, torch.nn.Module]:
    backbone = "vgg" if setting.startswith("vgg") else "segnet"
    specs = {
        "split": ("split", width, {}),
        "sfg": ("sfg", width, {"entropy_weight": 1e-4}),
        "sfg masked": ("sfg", width, {"entropy_weight": 1e-4, "impl": "masked"}),
        "sfg fixed": ("sfg", width, {"fixed": [1, 1, 1]}),
        "single x2, half width": ("single", width / 2, {}),
    }
    out = {}
    for label, (arch, w, kw) in specs.items():
        mu.seed_everything(0)
        out[label] = mu.models.create(arch, tasks, backbone=backbone, width=w, **kw)
    return out


def stepper(model, tasks, batch, device, clock=time.perf_counter):
    params = model.param_groups(1e-3) if hasattr(model, "param_groups") else model.parameters()
    optimizer = torch.optim.Adam(params, lr=1e-3)
    batch = {k: v.to(device) for k, v in batch.items()}
    model.to(device).train()
    regularization = getattr(model, "regularization", None)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = clock()
        out = model(batch["image"])
        loss = sum(t.loss(out[t.name], batch[t.name]) for t in tasks)
        if regularization is not None:
            loss = loss + regularization()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return clock() - start

    return step


def run(setting: str, steps: int, rounds: int, warmup: int, device: torch.device,
        clock=time.perf_counter) -> dict[str, list[float]]:
    spec = SETTINGS[setting]
    tasks, batch = make_batch(setting, spec["batch"])
    steppers = {label: stepper(m, tasks, batch, device, clock) for label, m in models(tasks, setting, spec["width"]).items()}
    for step in steppers.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {label: [] for label in steppers}
    for _ in range(rounds):  # interleaved: every model sees the same load drift
        for label, step in steppers.items():
            times[label] += [step() for _ in range(steps)]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--setting", choices=[*SETTINGS, "all"], default="all")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time, or the process's CPU time (robust to other jobs' load)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = mu.get_device()
    for setting in SETTINGS if args.setting == "all" else [args.setting]:
        spec = SETTINGS[setting]
        print(f"\n{setting}: width {spec['width']}, batch {spec['batch']}, device={device}, "
              f"threads={torch.get_num_threads()}, {args.clock} clock, {args.rounds} rounds x {args.steps} steps")
        clock = time.perf_counter if args.clock == "wall" or device.type != "cpu" else time.process_time
        times = run(setting, args.steps, args.rounds, args.warmup, device, clock)
        reference = statistics.median(times["split"])
        for label, ts in times.items():
            median = statistics.median(ts)
            q1, _, q3 = statistics.quantiles(ts, n=4)
            print(f"{label:>24}: {1000 * median:8.2f} ms/step (IQR {1000 * q1:.2f}-{1000 * q3:.2f}), "
                  f"{median / reference:.2f}x split")


if __name__ == "__main__":
    main()
