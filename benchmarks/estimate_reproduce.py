"""What `make reproduce` costs on this machine: every distinct (data, model, weighting) cell of every grid
trains one epoch (seed 0, one thread, a scratch folder), and its process CPU time per epoch is scaled by the
cell's epochs and seeds. Prints core-hours per grid and the wall-clock time with JOBS lanes. A run that an
earlier grid already trains with the same settings (the runner copies its result) costs nothing.

Run: ``python benchmarks/estimate_reproduce.py [experiments/*.toml] [--jobs 2]``

CPU time of the process, not wall time: on a shared machine other processes stretch the wall clock, while
the CPU time of one thread stays close to the cost of the work (two lanes still share caches and memory
bandwidth, so the wall-clock estimate is a lower bound). A measurement, never a test.
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

from mtlutils import experiments as E


def one_epoch(cfg: dict) -> dict:
    """The grid with every run cut to one epoch and seed 0 (the hashes change: nothing real is reused)."""
    cut = copy.deepcopy(cfg)
    cut["train"]["epochs"] = 1
    for section in cut["data"].values():
        if "epochs" in section.get("train", {}):
            section["train"]["epochs"] = 1
    for spec in cut.get("models", {}).values():
        spec.get("train", {}).pop("epochs", None)
    cut["grid"]["seeds"] = [0]
    cut["grid"].pop("keep_models", None)
    return cut


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", type=Path, default=sorted(Path("experiments").glob("*.toml")))
    parser.add_argument("--jobs", type=int, default=2, help="lanes of `make reproduce` (default 2)")
    parser.add_argument("--profile", default="full")
    args = parser.parse_args()
    torch.set_num_threads(1)
    total = 0.0
    rows = []
    trained: set[str] = set()     # training keys of the runs of earlier grids (make reproduce's order)
    for path in sorted(args.configs):
        cfg = E.load_config(path, args.profile)
        cut = one_epoch(cfg)
        seconds_per_epoch: dict[tuple[str, str, str], float] = {}
        with tempfile.TemporaryDirectory() as scratch:
            for run in E.grid(cut):
                start = time.process_time()
                result = E.execute(cut, run, Path(scratch) / "r", Path(scratch) / "c", torch.device("cpu"),
                                   "estimate", False)
                seconds_per_epoch[(run.data, run.model, run.weighting)] = (
                    result.get("cpu_time_s") or time.process_time() - start)
        hours, copied = 0.0, 0
        for run in E.grid(cfg):
            resolved = E.run_config(cfg, run)
            key = E.training_key(resolved)
            if key in trained:
                copied += 1
                continue
            trained.add(key)
            hours += (int(resolved["train"]["epochs"])
                      * seconds_per_epoch[(run.data, run.model, run.weighting)] / 3600)
        total += hours
        rows.append((cfg["name"], len(E.grid(cfg)), hours))
        print(f"{cfg['name']:<24} {len(E.grid(cfg)):>4} runs  {hours:6.2f} core-hours"
              + (f" ({copied} copied from earlier grids)" if copied else ""), flush=True)
    print(f"{'all grids':<24} {sum(r[1] for r in rows):>4} runs  {total:6.2f} core-hours; "
          f"with {args.jobs} lanes at least {total / args.jobs:.1f} h of wall-clock time")


if __name__ == "__main__":
    main()
