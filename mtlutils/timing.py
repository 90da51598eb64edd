"""Timing several pieces of code against each other on a machine that other work shares.

A chapter that compares the cost of two implementations (a hand-written and an autograd backward pass, a
masked and a one-convolution filter-group layer, the weighting methods' training steps) times them
*interleaved*: every round calls each contender once, in an order drawn afresh (from a seeded generator)
every round, so that a change in the machine's load falls on all of them alike and none always runs first,
or always right after the same other contender (whose leftovers in the caches it would inherit). The first rounds are warm-up and are dropped; the medians of
the rest are compared. Such numbers describe this machine under its load of the moment: the benchmarks in
``benchmarks/`` measure with more care, and no test asserts a time.
"""
from __future__ import annotations

import random
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch


def sync(device: torch.device | str | None = None) -> None:
    """Wait for the accelerator's queued work, so that a wall-clock interval covers it (no-op on CPU)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def seconds(fn: Callable[[], Any], device: torch.device | str | None = None) -> float:
    """Wall-clock seconds of one call of ``fn``, synchronised with ``device`` before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(contenders: Mapping[str, Callable[[], Any]], rounds: int, warmup: int = 1,
                device: torch.device | str | None = None, seed: int = 0) -> dict[str, list[float]]:
    """Seconds per call of every contender, over ``rounds`` kept rounds after ``warmup`` dropped ones.

    Every round calls each contender once, in a random order drawn from ``random.Random(seed)`` (the
    global random generators are not touched). Returns ``{name: [seconds of each kept round]}``."""
    if not contenders:
        raise ValueError("interleaved: no contenders to time")
    if rounds < 1 or warmup < 0:
        raise ValueError(f"interleaved: rounds must be >= 1 and warmup >= 0 (got {rounds}, {warmup})")
    order = random.Random(seed)
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        for name in order.sample(names, len(names)):
            taken = seconds(contenders[name], device)
            if r >= warmup:
                times[name].append(taken)
    return times


def summary(times: Mapping[str, Sequence[float]], reference: str | None = None,
            scale: float = 1.0, unit: str = "s") -> pd.DataFrame:
    """One row per contender: the median, quartiles, fastest and slowest round (times ``scale``, labelled
    ``unit``) and the rounds timed; with ``reference``, each median over the reference's median."""
    if not times or any(len(values) == 0 for values in times.values()):
        raise ValueError(f"summary: every contender needs at least one time (got {dict(times)})")
    if reference is not None and reference not in times:
        raise KeyError(f"summary: reference {reference!r} is not one of {list(times)}")
    rows = {}
    for name, values in times.items():
        v = np.asarray(values, dtype=float) * scale
        rows[name] = {f"median ({unit})": np.median(v), f"25% ({unit})": np.percentile(v, 25),
                      f"75% ({unit})": np.percentile(v, 75), f"fastest ({unit})": v.min(),
                      f"slowest ({unit})": v.max(), "rounds": len(v)}
    table = pd.DataFrame(rows).T
    table["rounds"] = table["rounds"].astype(int)
    if reference is not None:
        table[f"median / {reference}"] = table[f"median ({unit})"] / table.loc[reference, f"median ({unit})"]
    return table
