"""Generation speed of the procedural scenes (images per second, one CPU thread by default).

Run: ``make bench`` or ``python benchmarks/bench_scenes.py [--n 512] [--repeats 3] [--threads 1]``.
Renders uncached data sets (default settings: 3-6 objects, shadows, pixel noise) at 64x64 and 128x128
after a warm-up and reports the median and range of the throughput over the repeats. Numbers depend on
the machine and its load: this is a measurement, never a test. Target: >= 200 images/s at 64x64.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mtlutils.data.scenes import make_scenes


def throughput(size: tuple[int, int], n: int, repeats: int, shadows: bool) -> list[float]:
    """Images per second of ``repeats`` uncached builds of ``n`` images (different seeds)."""
    make_scenes(8, size=size, seed=10_000, cache=False, shadows=shadows)   # warm-up
    rates = []
    for r in range(repeats):
        start = time.perf_counter()
        make_scenes(n, size=size, seed=r, cache=False, shadows=shadows)
        rates.append(n / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="images per build at 64x64 (a quarter at 128x128)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-shadows", action="store_true", help="also time without shadow rays")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"scenes generation, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"{'size':>9} {'shadows':>7} {'images':>6} {'img/s median':>12} {'(min-max)':>15}")
    for shadows in ((True, False) if args.no_shadows else (True,)):
        for size, n in (((64, 64), args.n), ((128, 128), max(1, args.n // 4))):
            rates = throughput(size, n, args.repeats, shadows)
            print(f"{size[0]:>4}x{size[1]:<4} {str(shadows):>7} {n:>6} {statistics.median(rates):>12.0f} "
                  f"({min(rates):.0f}-{max(rates):.0f})")


if __name__ == "__main__":
    main()
