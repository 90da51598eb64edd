"""The command line of the experiment runner (``python -m mtlutils.experiments -h``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .. import distributed, paths
from ..config import PROFILES
from . import __doc__ as DOC
from .config import ConfigError, grid, load_config, run_config
from ..fileio import is_busy
from .runner import aggregate, is_done, run_grid
from .state import grid_state


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtlutils.experiments",
                                     description=DOC.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=DOC)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "train the unfinished runs of a grid"),
                       ("aggregate", "write results/<name>/summary.csv"),
                       ("list", "print the runs of a grid: done, todo, or busy (being trained by a runner now)"),
                       ("status", "one line per grid: runs with a result out of the planned ones")):
        p = sub.add_parser(name, help=text)
        p.add_argument("configs", nargs="+", type=Path, help="experiment config files (TOML)")
        p.add_argument("--profile", choices=PROFILES, default=None, help="default: $MTL_PROFILE or 'full'")
        p.add_argument("--results", type=Path, default=None, help="results root (default: $MTL_RESULTS or results/)")
        if name in ("run", "list"):
            p.add_argument("--checkpoints", type=Path, default=None, help="default: $MTL_CHECKPOINTS or checkpoints/")
        if name == "run":
            p.add_argument("--only", default=None, help="glob over run ids, e.g. '*__mtan__*'")
            p.add_argument("--no-progress", action="store_true")
            p.add_argument("--no-reuse", action="store_true",
                           help="train every run, even one that another grid trained with the same settings")
    args = parser.parse_args(argv)
    try:
        for path in args.configs:
            cfg = load_config(path, args.profile)
            if args.command == "run":
                run_grid(cfg, args.results, args.checkpoints, args.only, not args.no_progress,
                         reuse=not args.no_reuse)
                if distributed.is_main():
                    aggregate(cfg, args.results)
            elif args.command == "aggregate":
                aggregate(cfg, args.results)
            elif args.command == "status":
                print(grid_state(cfg, args.results).describe())
            else:
                root = (args.results or paths.results_root()) / cfg["name"] / "runs"
                locks = (args.checkpoints or paths.checkpoints_root()) / cfg["name"]
                for run in grid(cfg):
                    done = is_done(root / f"{run.id}.json", run_config(cfg, run))
                    state = "done" if done else ("busy" if is_busy(locks / f"{run.id}.lock") else "todo")
                    print(f"{state}  {run.id}")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        distributed.cleanup()
    return 0
