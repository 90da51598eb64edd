"""The grid runner's training step: CPU seconds per optimiser step of one run of an experiment grid, trained by
the runner itself (:func:`mtlutils.experiments.runner.execute`: data loaders, ``fit``, validation), under
each precision setting.

Run: ``python benchmarks/bench_runner_step.py [--grid experiments/mtan_nyu_scenes.toml]
[--run nyu_like__mtan__equal__seed0] [--epochs 2] [--precisions fp32 auto] [--threads 1]``.

Trains the run for ``--epochs`` epochs (the grid's other settings unchanged) into a temporary folder, once per
precision, and reports each epoch's CPU seconds divided by its optimiser steps (the first epoch is a
warm-up and dropped when there are two or more), with the ratio to the first precision listed. To compare
two versions of the code, run the script in a checkout of each (it reads only the package's public
runner). A measurement, never a test: numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path

import torch

from mtlutils.config import get_device
from mtlutils.experiments import load_config
from mtlutils.experiments.config import grid
from mtlutils.experiments.runner import execute


def seconds_per_step(grid_file: str, run_id: str, epochs: int, precision: str) -> list[float]:
    """CPU seconds per optimiser step of every epoch after the first (all epochs if only one)."""
    cfg = load_config(grid_file)
    cfg["train"] = {**cfg.get("train", {}), "epochs": epochs, "precision": precision}
    runs = {r.id: r for r in grid(cfg)}
    if run_id not in runs:
        raise SystemExit(f"no run {run_id!r} in {grid_file}; runs: {', '.join(runs)}")
    data = cfg["data"][runs[run_id].data]
    steps = math.ceil(int(data["n_train"]) / int(cfg["train"]["batch_size"]))
    with tempfile.TemporaryDirectory() as tmp:
        result = execute(cfg, runs[run_id], Path(tmp) / "results", Path(tmp) / "checkpoints", get_device(),
                         command="bench_runner_step", progress=False)
    per_epoch = [s / steps for s in result["cpu_seconds_per_epoch"]]
    return per_epoch[1:] if len(per_epoch) > 1 else per_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="experiments/mtan_nyu_scenes.toml")
    parser.add_argument("--run", default="nyu_like__mtan__equal__seed0")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "auto"],
                        choices=("fp32", "bf16", "fp16", "auto"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.run} of {args.grid}, {args.epochs} epoch(s), threads={torch.get_num_threads()}")
    base = None
    for precision in args.precisions:
        times = seconds_per_step(args.grid, args.run, args.epochs, precision)
        median = statistics.median(times)
        base = base or median
        print(f"  {precision:<5} {1000 * median:8.1f} ms CPU per step (epochs: "
              f"{', '.join(f'{1000 * t:.1f}' for t in times)})   {median / base:5.2f} x {args.precisions[0]}")


if __name__ == "__main__":
    main()
