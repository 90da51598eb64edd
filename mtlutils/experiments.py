"""The experiment runner: a grid of (data × model × weighting × seed) from a plain TOML file.

    python -m mtlutils.experiments run experiments/mtan_scenes.toml        # resumable
    python -m mtlutils.experiments aggregate experiments/mtan_scenes.toml  # tables: mean ± std, Δ_MTL
    python -m mtlutils.experiments list experiments/*.toml                 # what a grid contains
    torchrun --nproc_per_node=2 -m mtlutils.experiments run CONFIG         # several processes (DDP)

A config file (see ``experiments/*.toml``) holds

* ``name`` (results go to ``results/<name>/``), ``description``, ``baseline`` (the model that Δ_MTL is
  measured against, usually ``"single"``);
* ``[data.<name>]``: ``kind`` (:data:`DATA_KINDS`) and its options (sizes, classes, ``n_train`` ...),
  optionally ``train`` overrides and ``model_options.<model>`` (model options that depend on the data,
  e.g. a regulariser scaled by the number of training images);
* ``[train]``: ``epochs``, ``batch_size`` (global), ``lr``, ``optimizer``, ``weight_decay``, ``scheduler``
  (``"cosine"``, ``"step"`` or ``"none"``), ``width``, ``last_epochs`` (the protocol: metrics are the mean
  of the last N epochs' validation metrics, as the MTAN paper averages its last 10 epochs);
* ``[models.<name>]`` (optional): ``arch`` plus ``options`` passed to ``models.create`` and ``train``
  overrides; a grid entry that names an architecture directly needs no section;
* ``[grid]``: lists ``data``, ``models``, ``weightings``, ``seeds``; models listed in ``single_task``
  (default ``["single", "stan"]``) run with ``equal`` weighting only, since a weighting of one loss per
  network changes nothing but the learning-rate scale; if ``weighted_models`` is given, only those models
  run with every weighting and the others with ``equal`` only (a smaller grid);
* ``[profile.quick]`` / ``[profile.paper]``: nested overrides for a profile (``MTL_PROFILE``).

Each finished run writes ``results/<name>/runs/<run id>.json``: the command, the resolved config and its
hash, the git commit, seed, device, number of processes, library versions, the machine's fingerprint
(:func:`mtlutils.provenance.fingerprint`: what bit-equality of a repeat depends on), wall time, the final metrics
under the stated protocol and the per-epoch history. A run whose file exists with the same config hash is
skipped; an interrupted run resumes from its checkpoint (``checkpoints/<name>/<run id>.pt``, git-ignored).
Only the main process writes files.
"""
from __future__ import annotations

import argparse
import copy
import fnmatch
import hashlib
import json
import math
import os
import shlex
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from . import distributed, provenance
from . import weighting as W
from .config import PROFILE, PROFILES, seed_everything
from .metrics import delta_mtl
from .tasks import TASKS, Task, seg_task

REPO = Path(__file__).resolve().parents[1]
RESULT_FORMAT = 1
DEFAULT_TRAIN: dict[str, Any] = {"epochs": 10, "batch_size": 16, "lr": 1e-3, "optimizer": "adam",
                                 "weight_decay": 0.0, "scheduler": "cosine", "width": 1.0, "last_epochs": 1,
                                 "grad_clip": None}


# ------------------------------------------------------------------------------------------------ data

def _scenes(opts: Mapping[str, Any]) -> tuple[Dataset, Dataset, list[Task]]:
    from .data import make_scenes

    classes = int(opts.get("classes", 7))
    common = dict(size=tuple(opts.get("size", (64, 64))), classes=classes, seed=int(opts.get("data_seed", 0)),
                  invalid=float(opts.get("invalid", 0.0)))
    train = make_scenes(int(opts.get("n_train", 800)), split="train", **common)
    val = make_scenes(int(opts.get("n_val", 200)), split="val", **common)
    by_name = {"seg": seg_task(classes), "depth": TASKS["depth"], "normal": TASKS["normal"]}
    return train, val, [by_name[t] for t in opts.get("tasks", ["seg", "depth", "normal"])]


def _multidigits(opts: Mapping[str, Any]) -> tuple[Dataset, Dataset, list[Task]]:
    from .data import multidigits

    seed = int(opts.get("data_seed", 0))
    extra = {k: v for k, v in opts.items() if k not in ("kind", "n_train", "n_val", "data_seed", "tasks")}
    train = multidigits("train", n=int(opts.get("n_train", 2000)), seed=seed, **extra)
    val = multidigits("test", n=int(opts.get("n_val", 1000)), seed=seed + 1000, **extra)
    return train, val, [TASKS[t] for t in opts.get("tasks", ["left", "right"])]


def _nyuv2(opts: Mapping[str, Any]) -> tuple[Dataset, Dataset, list[Task]]:
    from .data import NYUv2

    size = tuple(opts["size"]) if opts.get("size") else None
    tasks = {"seg": seg_task(13), "depth": TASKS["depth"], "normal": TASKS["normal"]}
    return (NYUv2(opts.get("root"), "train", size), NYUv2(opts.get("root"), "val", size),
            [tasks[t] for t in opts.get("tasks", ["seg", "depth", "normal"])])


def _cityscapes(opts: Mapping[str, Any]) -> tuple[Dataset, Dataset, list[Task]]:
    from .data import CityScapes

    size = tuple(opts["size"]) if opts.get("size") else None
    classes = int(opts.get("classes", 7))
    tasks = {"seg": seg_task(classes), "depth": TASKS["depth"]}
    return (CityScapes(opts.get("root"), "train", classes, size), CityScapes(opts.get("root"), "val", classes, size),
            [tasks[t] for t in opts.get("tasks", ["seg", "depth"])])


def _utkface(opts: Mapping[str, Any]) -> tuple[Dataset, Dataset, list[Task]]:
    from .data import UTKFace

    size = tuple(opts.get("size", (64, 64)))
    train = UTKFace(opts.get("root"), "train", size)
    if opts.get("n_train"):  # limited-data runs: the first n of the fixed training split
        train = torch.utils.data.Subset(train, range(min(len(train), int(opts["n_train"]))))
    return train, UTKFace(opts.get("root"), "test", size), [TASKS[t] for t in opts.get("tasks", ["age", "gender"])]


DATA_KINDS: dict[str, Callable[[Mapping[str, Any]], tuple[Dataset, Dataset, list[Task]]]] = {
    "scenes": _scenes, "multidigits": _multidigits, "nyuv2": _nyuv2, "cityscapes": _cityscapes,
    "utkface": _utkface,
}


def build_data(opts: Mapping[str, Any]) -> tuple[Dataset, Dataset, list[Task]]:
    """``(train set, evaluation set, tasks)`` for a ``[data.<name>]`` section."""
    kind = opts.get("kind")
    if kind not in DATA_KINDS:
        raise ValueError(f"unknown data kind {kind!r}; valid choices: {sorted(DATA_KINDS)}")
    return DATA_KINDS[kind](opts)


def make_loaders(train: Dataset, val: Dataset, batch_size: int, seed: int) -> tuple[DataLoader, DataLoader]:
    """Loaders whose batches are the global batches of one shuffled order, split between processes (one
    process: ordinary shuffled batching). ``fit`` reseeds the shared generator every epoch."""
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train, batch_sampler=distributed.ShardedBatchSampler(len(train), batch_size, generator),
                              generator=generator)
    val_sampler = distributed.ShardedBatchSampler(len(val), max(batch_size, 64 * distributed.world()[1]),
                                                  torch.Generator(), shuffle=False)
    return train_loader, DataLoader(val, batch_sampler=val_sampler)


# ---------------------------------------------------------------------------------------------- config

def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def load_config(path: str | os.PathLike, profile: str | None = None) -> dict[str, Any]:
    """Read a config file and apply the overrides of ``profile`` (default: the active profile)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no experiment config at {path}")
    with open(path, "rb") as fh:
        raw = tomllib.load(fh)
    profile = profile or PROFILE
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    overrides = raw.pop("profile", {})
    unknown = set(overrides) - set(PROFILES)
    if unknown:
        raise ValueError(f"{path}: [profile.*] sections must be one of {PROFILES}, got {sorted(unknown)}")
    cfg = _merge(raw, overrides.get(profile, {}))
    for key in ("name", "data", "grid"):
        if key not in cfg:
            raise ValueError(f"{path}: the config needs a '{key}' entry (see `python -m mtlutils.experiments -h`)")
    cfg["profile"] = profile
    cfg["source"] = str(path)
    return cfg


@dataclass(frozen=True)
class Run:
    """One cell of the grid."""

    data: str
    model: str
    weighting: str
    seed: int

    @property
    def id(self) -> str:
        return f"{self.data}__{self.model}__{self.weighting}__seed{self.seed}"


def grid(cfg: Mapping[str, Any]) -> list[Run]:
    """Every run of the config, in order (data, model, weighting, seed)."""
    g = cfg["grid"]
    for key in ("data", "models", "weightings", "seeds"):
        values = list(g.get(key, []))
        for v in values:
            if values.count(v) > 1:
                raise ValueError(f"grid {key} lists {v!r} twice")
    single = set(g.get("single_task", ["single", "stan"]))
    weighted = set(g.get("weighted_models", g["models"]))
    unknown = weighted - set(g["models"])
    if unknown:
        raise ValueError(f"grid weighted_models {sorted(unknown)} are not in grid models {g['models']}")
    runs = []
    for data in g["data"]:
        if data not in cfg["data"]:
            raise ValueError(f"grid data {data!r} has no [data.{data}] section")
        for model in g["models"]:
            for weighting in g.get("weightings", ["equal"]):
                if weighting != "equal" and (model in single or model not in weighted):
                    continue
                for seed in g.get("seeds", [0]):
                    runs.append(Run(data, model, weighting, int(seed)))
    return runs


def run_config(cfg: Mapping[str, Any], run: Run) -> dict[str, Any]:
    """The resolved settings of one run (what its result file records and what its hash covers)."""
    from .models import ARCHS

    spec = dict(cfg.get("models", {}).get(run.model, {}))
    data_section = cfg["data"][run.data]
    arch = spec.get("arch", run.model)
    if arch not in ARCHS:
        raise ValueError(f"model {run.model!r}: unknown architecture {arch!r}; valid choices: {sorted(ARCHS)}")
    if run.weighting not in W.WEIGHTINGS:
        raise ValueError(f"unknown weighting {run.weighting!r}; valid choices: {sorted(W.WEIGHTINGS)}")
    train = _merge(DEFAULT_TRAIN, cfg.get("train", {}))
    train = _merge(train, spec.get("train", {}))
    train = _merge(train, data_section.get("train", {}))
    data = {k: v for k, v in data_section.items() if k not in ("train", "model_options")}
    options = _merge(spec.get("options", {}), data_section.get("model_options", {}).get(run.model, {}))
    return {"experiment": cfg["name"], "run": run.id, "data_name": run.data, "data": data, "model": run.model,
            "arch": arch, "options": options, "weighting": run.weighting,
            "weighting_options": cfg.get("weighting_options", {}).get(run.weighting, {}), "seed": run.seed,
            "train": train, "profile": cfg["profile"]}


def config_hash(resolved: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ runs

def protocol_metrics(rows: Sequence[Mapping[str, float]], last: int) -> dict[str, float]:
    """Mean over the last ``last`` epochs of every validation metric (``val/<task>/<metric>``, losses
    excluded): the protocol of the result files."""
    if not rows:
        raise ValueError("no epochs recorded")
    tail = rows[-max(1, last):]
    keys = [k for k in tail[0] if k.startswith("val/") and not k.endswith("/loss")]
    return {k[4:]: float(np.mean([row[k] for row in tail])) for k in keys}


def _scheduler(train: Mapping[str, Any]):
    name = (train.get("scheduler") or "none").lower()
    epochs = int(train["epochs"])
    if name == "cosine":
        return lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    if name == "step":  # the MTAN code: halve the rate at half of the training
        return lambda opt: torch.optim.lr_scheduler.StepLR(opt, max(1, epochs // 2), 0.5)
    if name == "none":
        return None
    raise ValueError(f"unknown scheduler {name!r}; use 'cosine', 'step' or 'none'")


def execute(cfg: Mapping[str, Any], run: Run, results: Path, checkpoints: Path, device: torch.device,
            command: str, progress: bool = True) -> dict[str, Any]:
    """Train one run (resuming from its checkpoint) and write its result file; returns the result."""
    from .models import count_parameters, create
    from .train import NonFiniteLossError, fit, load_checkpoint

    resolved = run_config(cfg, run)
    train_cfg = resolved["train"]
    train_set, val_set, tasks = build_data(resolved["data"])
    seed_everything(run.seed)
    options = {"in_channels": int(train_set[0]["image"].shape[0]), **resolved["options"]}  # from the data
    model = create(resolved["arch"], tasks, width=train_cfg["width"], **options)
    n_params = count_parameters(model)
    weighting = W.create(run.weighting, tasks, **resolved["weighting_options"])
    model = distributed.prepare_model(model, device)
    train_loader, val_loader = make_loaders(train_set, val_set, int(train_cfg["batch_size"]), run.seed)
    began = time.perf_counter()
    checkpoint = checkpoints / f"{run.id}.pt"
    status, error = "finished", None
    try:
        history = fit(model, train_loader, tasks, weighting, epochs=int(train_cfg["epochs"]),
                      lr=float(train_cfg["lr"]), optimizer=train_cfg["optimizer"],
                      weight_decay=float(train_cfg["weight_decay"]), scheduler=_scheduler(train_cfg),
                      val_data=val_loader, device=device, seed=run.seed, checkpoint=checkpoint, resume=True,
                      progress=progress, label=run.id, grad_clip=train_cfg.get("grad_clip"))
    except NonFiniteLossError as err:  # a result too (the cross-stitch paper's "higher rates diverged")
        from .train import History

        status, error = "diverged", str(err)
        history = History.from_state(load_checkpoint(checkpoint)["history"]) if checkpoint.is_file() else History()
    wall = time.perf_counter() - began
    last = int(train_cfg["last_epochs"])
    result = {
        "format": RESULT_FORMAT, "run": run.id, "experiment": cfg["name"], "command": command,
        "config": resolved, "config_hash": config_hash(resolved), "git_commit": provenance.git_commit(REPO),
        "seed": run.seed, "device": str(device), "processes": distributed.world()[1],
        "threads": torch.get_num_threads(),
        "fingerprint": provenance.fingerprint(device, distributed.world()[1]),
        "versions": provenance.versions(), "wall_time_s": round(wall, 2),
        "seconds_per_epoch": [round(s, 3) for s in history.seconds], "parameters": n_params,
        "protocol": f"mean of the last {last} epoch(s)' validation metrics (dataset-wide)",
        "status": status, "error": error,
        "metrics": protocol_metrics(history.rows, last) if status == "finished" else {},
        "history": history.rows,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if distributed.is_main():
        _write_json(results / "runs" / f"{run.id}.json", result)
    return result


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _current_result(path: Path, resolved: Mapping[str, Any]) -> dict[str, Any] | None:
    """The result file at ``path`` if it was made with the settings ``resolved`` (same hash), else None."""
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return result if result.get("config_hash") == config_hash(resolved) else None


def _is_done(path: Path, resolved: Mapping[str, Any]) -> bool:
    return _current_result(path, resolved) is not None


def run_grid(cfg: Mapping[str, Any], results_root: Path | None = None, checkpoint_root: Path | None = None,
             only: str | None = None, progress: bool = True, command: str | None = None) -> list[Path]:
    """Run every unfinished run of the grid (those matching the glob ``only``); returns the result files."""
    results = (results_root or REPO / "results") / cfg["name"]
    checkpoints = (checkpoint_root or REPO / "checkpoints") / cfg["name"]
    device = distributed.setup()
    command = command or " ".join(shlex.quote(a) for a in [Path(sys.executable).name, "-m", "mtlutils.experiments",
                                                             *sys.argv[1:]])
    runs = [r for r in grid(cfg) if only is None or fnmatch.fnmatch(r.id, only)]
    written = []
    say = print if distributed.is_main() else (lambda *a, **k: None)
    say(f"{cfg['name']}: {len(runs)} run(s), profile {cfg['profile']}, {distributed.world()[1]} process(es), "
        f"device {device}")
    for k, run in enumerate(runs, start=1):
        path = results / "runs" / f"{run.id}.json"
        if _is_done(path, run_config(cfg, run)):
            say(f"[{k}/{len(runs)}] {run.id}: done, skipped")
            written.append(path)
            continue
        say(f"[{k}/{len(runs)}] {run.id}: training")
        result = execute(cfg, run, results, checkpoints, device, command, progress)
        outcome = ", ".join(f"{m} {v:.4g}" for m, v in result["metrics"].items()) or result["error"]
        say(f"[{k}/{len(runs)}] {run.id}: {result['status']} in {result['wall_time_s']:.0f} s: {outcome}")
        written.append(path)
    return written


# ----------------------------------------------------------------------------------------- aggregation

def load_results(cfg: Mapping[str, Any], results_root: Path | None = None) -> list[dict[str, Any]]:
    """The result files of a config's grid that exist and match its current settings."""
    results = (results_root or REPO / "results") / cfg["name"] / "runs"
    found = (_current_result(results / f"{run.id}.json", run_config(cfg, run)) for run in grid(cfg))
    return [result for result in found if result is not None]


def cell_runs(results: Sequence[Mapping[str, Any]], like: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The results of the same cell as ``like`` (same data, model and weighting; every seed)."""
    key = tuple(like["config"][k] for k in ("data_name", "model", "weighting"))
    return [r for r in results if tuple(r["config"][k] for k in ("data_name", "model", "weighting")) == key]


def runs_frame(results: Sequence[Mapping[str, Any]]):
    """One row per run: ``data``, ``model``, ``weighting``, ``seed``, ``parameters``, ``diverged`` (0/1),
    ``seconds_per_epoch`` and the metrics (``<task>/<metric>``, empty for a diverged run)."""
    import pandas as pd

    if not results:
        raise ValueError("no results to summarise: run the grid first")
    records = [{"data": r["config"]["data_name"], "model": r["config"]["model"],
                "weighting": r["config"]["weighting"], "seed": r["seed"], "parameters": r["parameters"],
                "diverged": int(r.get("status") == "diverged"),
                "seconds_per_epoch": float(np.mean(r["seconds_per_epoch"])) if r["seconds_per_epoch"] else np.nan,
                **r["metrics"]} for r in results]
    return pd.DataFrame.from_records(records)


def metric_columns(frame) -> list[str]:
    """The metric columns (``<task>/<metric>``, not their `` std``) of a :func:`runs_frame` or
    :func:`summarise` table."""
    return [c for c in frame.columns if "/" in c and not c.endswith(" std")]


def _delta(row: Mapping[str, float], base: Mapping[str, float], metrics: Sequence[str]) -> float:
    """Δ_MTL over the metrics with a finite, non-zero baseline (a relative change needs one)."""
    usable = [m for m in metrics if math.isfinite(row[m]) and math.isfinite(base[m]) and base[m] != 0]
    return delta_mtl({m: row[m] for m in usable}, {m: base[m] for m in usable}) if usable else float("nan")


def verdict(a_mean: float, a_std: float, b_mean: float, b_std: float, higher_is_better: bool = True) -> str:
    """The claim rule of the reproduction chapter for "A is better than B", from means and standard
    deviations over seeds: ``"held"`` if A's mean is better by more than ``a_std + b_std``, ``"reversed"``
    if worse by more than that, ``"within the spread"`` otherwise (a gap equal to the spread included)."""
    gap = (a_mean - b_mean) if higher_is_better else (b_mean - a_mean)
    spread = a_std + b_std
    if gap > spread:
        return "held"
    if gap < -spread:
        return "reversed"
    return "within the spread"


def deltas_per_run(results: Sequence[Mapping[str, Any]], baseline: str = "single"):
    """:func:`runs_frame` with a ``delta_mtl_%`` column: each run against the ``baseline`` model's mean
    over seeds (same data, equal weighting), so that the spread of Δ_MTL over seeds can be read."""
    frame = runs_frame(results)
    metrics = metric_columns(frame)
    means = frame[frame["diverged"] == 0].groupby(["data", "model", "weighting"])[metrics].mean()
    deltas = []
    for _, row in frame.iterrows():
        key = (row["data"], baseline, "equal")
        deltas.append(_delta(row, means.loc[key], metrics) if key in means.index and not row["diverged"]
                      else float("nan"))
    frame["delta_mtl_%"] = deltas
    return frame


def summarise(results: Sequence[Mapping[str, Any]], baseline: str | None = "single"):
    """A table with one row per (data, model, weighting): mean and std over seeds of every metric,
    the number of seeds that finished and that diverged, parameters, seconds per epoch, and Δ_MTL (in %) of
    the means against the ``baseline`` model of the same data (equal weighting). Diverged runs have no
    metrics and do not enter the means; a metric whose baseline mean is 0 (no relative change defined)
    is left out of Δ_MTL."""
    frame = runs_frame(results)
    metric_cols = metric_columns(frame)
    keys = ["data", "model", "weighting"]
    grouped = frame.groupby(keys, sort=False)
    table = grouped[metric_cols].mean()
    std = grouped[metric_cols].std(ddof=1).fillna(0.0)
    table = table.join(std.add_suffix(" std"))
    table["seeds"] = grouped["seed"].count() - grouped["diverged"].sum()
    table["diverged"] = grouped["diverged"].sum()
    table["parameters"] = grouped["parameters"].first()
    table["seconds_per_epoch"] = grouped["seconds_per_epoch"].mean()
    if baseline is not None:
        table["delta_mtl_%"] = [_delta(row, table.loc[(data, baseline, "equal")], metric_cols)
                                if (data, baseline, "equal") in table.index else float("nan")
                                for (data, _, _), row in table.iterrows()]
    return table.reset_index()


def aggregate(cfg: Mapping[str, Any], results_root: Path | None = None) -> Path:
    """Write ``results/<name>/summary.csv`` from the run files; returns its path."""
    results = load_results(cfg, results_root)
    expected = len(grid(cfg))
    table = summarise(results, cfg.get("baseline", "single"))
    out = (results_root or REPO / "results") / cfg["name"] / "summary.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.8g")
    print(f"{cfg['name']}: {len(results)}/{expected} runs summarised -> {out}")
    return out


# ------------------------------------------------------------------------------------------------- CLI

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtlutils.experiments",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "train the unfinished runs of a grid"),
                       ("aggregate", "write results/<name>/summary.csv"),
                       ("list", "print the runs of a grid and whether they are done")):
        p = sub.add_parser(name, help=text)
        p.add_argument("configs", nargs="+", type=Path, help="experiment config files (TOML)")
        p.add_argument("--profile", choices=PROFILES, default=None, help="default: $MTL_PROFILE or 'full'")
        p.add_argument("--results", type=Path, default=None, help="results root (default: results/)")
        if name == "run":
            p.add_argument("--only", default=None, help="glob over run ids, e.g. '*__mtan__*'")
            p.add_argument("--checkpoints", type=Path, default=None, help="default: checkpoints/")
            p.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        for path in args.configs:
            cfg = load_config(path, args.profile)
            if args.command == "run":
                run_grid(cfg, args.results, args.checkpoints, args.only, not args.no_progress)
                if distributed.is_main():
                    aggregate(cfg, args.results)
            elif args.command == "aggregate":
                aggregate(cfg, args.results)
            else:
                root = (args.results or REPO / "results") / cfg["name"] / "runs"
                for run in grid(cfg):
                    done = _is_done(root / f"{run.id}.json", run_config(cfg, run))
                    print(f"{'done' if done else 'todo'}  {run.id}")
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
