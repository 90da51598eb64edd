"""MTAN's batched path against its per-task loop, in float32 and under mixed precision, and the
``channels_last`` memory format: one training step, every variant timed in turns (round robin).

Run: ``python benchmarks/bench_mtan_paths.py --clock cpu --threads 1`` (CPU time of one thread: the compute
of the step, insensitive to other processes competing for the cores). Two settings by default: the
chapters' size (batch 16, 32x64, width 1/8) and the paper's width (batch 2, 96x128, width 1), NYUv2's three
tasks. Every row is reported as a ratio to the float32 per-task loop of the same setting (the structure of
the MTAN authors' code). A measurement, never a test: the numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

import mtlutils as mu
from mtlutils import precision as P
from mtlutils.tasks import TASKS, seg_task

from bench_mtan import make_batch

SETTINGS = {"chapters": dict(batch=16, size=(32, 64), width=0.125),
            "width 1": dict(batch=2, size=(96, 128), width=1.0)}
VARIANTS = {  # name -> (batched path, precision, channels_last)
    "loop, fp32": (False, "fp32", False),
    "batched, fp32": (True, "fp32", False),
    "loop, auto": (False, "auto", False),
    "batched, auto": (True, "auto", False),
    "batched, fp32, channels_last": (True, "fp32", True),
}


def one_step(model, opt, tasks, batch, precision: str) -> None:
    with P.autocast(precision, "cpu"):
        out = model(batch["image"])
        loss = sum(t.loss(out[t.name], batch[t.name]) for t in tasks)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def measure(setting: dict, steps: int, warmup: int, clock, variants=tuple(VARIANTS)) -> dict[str, float]:
    tasks = [seg_task(13), TASKS["depth"], TASKS["normal"]]
    batch = make_batch(tasks, setting["batch"], setting["size"], 13, "cpu")
    runs = {}
    for name in variants:
        fast, precision, channels_last = VARIANTS[name]
        mu.seed_everything(0)
        model = mu.models.create("mtan", tasks, width=setting["width"])
        model.fast = fast
        data = dict(batch)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            data["image"] = data["image"].contiguous(memory_format=torch.channels_last)
        runs[name] = (model, torch.optim.Adam(model.parameters(), 1e-4), data, P.resolve(precision, "cpu"))
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(warmup + steps):
        for name, (model, opt, data, precision) in runs.items():
            start = clock()
            one_step(model, opt, tasks, data, precision)
            if i >= warmup:
                times[name].append(clock() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        help="fewer variants: shorter rounds, less drift within a round")
    args = parser.parse_args()
    if "loop, fp32" not in args.variants:
        parser.error("--variants must include 'loop, fp32' (the reference of every ratio)")
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"threads={torch.get_num_threads()} clock={args.clock} auto={P.resolve('auto', 'cpu')}")
    for key in args.settings:
        result = measure(SETTINGS[key], args.steps, args.warmup, clock, args.variants)
        base = result["loop, fp32"]
        print(f"\n{key}: {SETTINGS[key]}")
        for name, seconds in result.items():
            print(f"  {name:<30} {1000 * seconds:9.1f} ms   {seconds / base:5.2f} x the fp32 loop")


if __name__ == "__main__":
    main()
