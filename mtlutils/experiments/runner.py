"""Running a grid: one run -> one result file with its provenance; skipping, resuming, locking.

A run's checkpoint is named by its settings' hash (``checkpoints/<grid>/<run id>.<hash>.pt``), so a run
whose settings changed starts afresh instead of resuming someone else's training, and it is deleted once
the result file is written. A result file counts for a run only while its ``config_hash`` matches the
run's current settings. Each run is trained under an exclusive lock (``<run id>.lock`` beside the
checkpoints), so two runners started on one grid share the work instead of racing. A run that another
grid has already trained with the same settings (same :func:`~mtlutils.experiments.config.training_key`:
only the names differ) is not trained again: its result is copied, with ``copied_from`` naming the source.
"""
from __future__ import annotations

import contextlib
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .. import distributed, paths, provenance
from .. import weighting as W
from ..config import seed_everything
from ..data.builders import build_data, input_channels
from ..fileio import Busy, atomic_write, atomic_write_text, exclusive
from .config import Run, config_hash, grid, run_config, training_key

REPO = paths.PACKAGE.parent   # the checkout whose git commit a result names
RESULT_FORMAT = 2   # 2: with the machine fingerprint (mtlutils.provenance)
# pin the code and commit this process runs now: edits or commits made while it trains are not its own
provenance.code_hash(), provenance.git_commit(REPO)


def make_loaders(train: Dataset, val: Dataset, batch_size: int, seed: int) -> tuple[DataLoader, DataLoader]:
    """Loaders whose batches are the global batches of one shuffled order, split between processes (one
    process: ordinary shuffled batching). ``fit`` reseeds the shared generator every epoch."""
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train, batch_sampler=distributed.ShardedBatchSampler(len(train), batch_size, generator),
                              generator=generator)
    val_sampler = distributed.ShardedBatchSampler(len(val), max(batch_size, 64 * distributed.world()[1]),
                                                  torch.Generator(), shuffle=False)
    return train_loader, DataLoader(val, batch_sampler=val_sampler)


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


def checkpoint_path(checkpoints: Path, run: Run, resolved: Mapping[str, Any]) -> Path:
    """Where a run's checkpoint lives: named by the run and the hash of its settings."""
    return checkpoints / f"{run.id}.{config_hash(resolved)}.pt"


def keeps_model(cfg: Mapping[str, Any], run: Run) -> bool:
    """True if the grid's ``keep_models`` (globs over run ids) asks to keep this run's trained weights."""
    import fnmatch

    return any(fnmatch.fnmatch(run.id, pattern) for pattern in cfg["grid"].get("keep_models", []))


def model_path(results: Path, run: Run) -> Path:
    """Where a kept model's weights live: ``results/<grid>/models/<run id>.pt``."""
    return results / "models" / f"{run.id}.pt"


def execute(cfg: Mapping[str, Any], run: Run, results: Path, checkpoints: Path, device: torch.device,
            command: str, progress: bool = True, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train one run (resuming from its checkpoint) and write its result file; returns the result.

    A run whose training loss or validation metrics become non-finite is recorded with ``status``
    ``"diverged"`` (and no metrics). ``callbacks`` are passed to :func:`~mtlutils.train.fit`. A run named
    by the grid's ``keep_models`` also writes its trained weights (:func:`model_path`; their SHA-256 in the
    result file as ``model_sha256``), for the chapters' figures of trained models (:func:`load_model`)."""
    from ..models import count_parameters, create
    from ..train import NonFiniteLossError, fit, remove_checkpoint

    resolved = run_config(cfg, run)
    train_cfg = resolved["train"]
    train_set, val_set, tasks = build_data(resolved["data"])
    seed_everything(run.seed)
    options = {"in_channels": input_channels(train_set), **resolved["options"]}
    model = create(resolved["arch"], tasks, width=train_cfg["width"], **options)
    n_params = count_parameters(model)
    weighting = W.create(run.weighting, tasks, **resolved["weighting_options"])
    model = distributed.prepare_model(model, device)
    train_loader, val_loader = make_loaders(train_set, val_set, int(train_cfg["batch_size"]), run.seed)
    began, cpu_began = time.perf_counter(), time.process_time()
    checkpoint = checkpoint_path(checkpoints, run, resolved)
    status, error = "finished", None
    try:
        history = fit(model, train_loader, tasks, weighting, epochs=int(train_cfg["epochs"]),
                      lr=float(train_cfg["lr"]), optimizer=train_cfg["optimizer"],
                      weight_decay=float(train_cfg["weight_decay"]), scheduler=_scheduler(train_cfg),
                      val_data=val_loader, device=device, seed=run.seed, checkpoint=checkpoint, resume=True,
                      progress=progress, label=run.id, grad_clip=train_cfg.get("grad_clip"),
                      train_metrics=bool(train_cfg.get("train_metrics", True)), callbacks=callbacks,
                      precision=train_cfg.get("precision", "fp32"))
    except NonFiniteLossError as err:  # a result too (the cross-stitch paper's "higher rates diverged")
        status, error, history = "diverged", str(err), err.history
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    last = int(train_cfg["last_epochs"])
    metrics = protocol_metrics(history.rows, last) if status == "finished" else {}
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
        status, error, metrics = "diverged", f"non-finite validation metric(s) {bad}", {}
    result = {
        "format": RESULT_FORMAT, "run": run.id, "experiment": cfg["name"], "command": command,
        "config": resolved, "config_hash": config_hash(resolved), "git_commit": provenance.git_commit(REPO),
        "seed": run.seed, "device": str(device), "processes": distributed.world()[1],
        "precision": history.precision,
        "threads": torch.get_num_threads(),
        "fingerprint": provenance.fingerprint(device, distributed.world()[1]),
        # wall_time_s and cpu_time_s: this process only (a resumed run trained its first epochs in another);
        # training_seconds() and training_cpu_seconds() add up the epochs of every process
        "versions": provenance.versions(), "wall_time_s": round(wall, 2),
        "cpu_time_s": round(cpu, 2),   # this process's CPU time: the cost whatever else ran on the machine
        "seconds_per_epoch": [round(s, 3) for s in history.seconds],
        "cpu_seconds_per_epoch": [round(s, 3) for s in history.cpu_seconds], "parameters": n_params,
        "protocol": f"mean of the last {last} epoch(s)' validation metrics (dataset-wide)",
        "status": status, "error": error, "metrics": metrics, "history": history.rows,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if distributed.is_main():
        if status == "finished" and keeps_model(cfg, run):
            from ..data.download import file_sha256

            inner = distributed.unwrap(model)
            path = model_path(results, run)
            atomic_write(path, lambda handle: torch.save({"run": run.id, "config_hash": result["config_hash"],
                                                         "state_dict": inner.state_dict()}, handle))
            result["model_file"] = str(path.relative_to(results))
            result["model_sha256"] = file_sha256(path)
        write_result(results / "runs" / f"{run.id}.json", result)
        remove_checkpoint(checkpoint)   # the result holds everything; a stale checkpoint can never resume
    return result


def write_result(path: Path, result: Mapping[str, Any]) -> None:
    """Write a result file atomically."""
    atomic_write_text(path, json.dumps(result, indent=1, sort_keys=False) + "\n")


def training_seconds(result: Mapping[str, Any]) -> float:
    """Wall-clock seconds a run's epochs took (training and validation), summed over every process that
    trained it: a run resumed from a checkpoint has a ``wall_time_s`` of its last process only."""
    per_epoch = result.get("seconds_per_epoch") or []
    return float(sum(per_epoch)) if per_epoch else float(result.get("wall_time_s", 0.0))


def training_cpu_seconds(result: Mapping[str, Any]) -> float | None:
    """CPU seconds of a run's finished epochs over every process that trained it, in the main process
    (``cpu_seconds_per_epoch``; with several processes, multiply by ``processes`` for the whole cost).
    For a result file without them (made before they were recorded) or whose first epochs came from an
    older checkpoint: its ``cpu_time_s`` if one process trained (nearly) every epoch (its wall time is at
    least 90 % of the epochs' time), else ``None``. ``None`` too for a run without a finished epoch."""
    if not result.get("seconds_per_epoch"):
        return None
    per_epoch = result.get("cpu_seconds_per_epoch") or []
    if per_epoch and len(per_epoch) == len(result.get("seconds_per_epoch") or []):
        return float(sum(per_epoch))
    if result.get("cpu_time_s") and float(result.get("wall_time_s", 0.0)) >= 0.9 * training_seconds(result):
        return float(result["cpu_time_s"])
    return None


def read_result(path: Path, resolved: Mapping[str, Any]) -> dict[str, Any] | None:
    """The result file at ``path`` if it was made with the settings ``resolved`` (same hash), else None."""
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return result if result.get("config_hash") == config_hash(resolved) else None


# path -> (mtime_ns, training key or None): a result file is parsed once per change, not once per run
_TWIN_KEYS: dict[Path, tuple[int, str | None]] = {}


def _twin_key(path: Path) -> str | None:
    """The :func:`training_key` of the result at ``path`` if it can stand in for another grid's run
    (consistent, finished or diverged, no kept model file), else None; cached by modification time."""
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return None
    cached = _TWIN_KEYS.get(path)
    if cached and cached[0] == mtime:
        return cached[1]
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        result = {}
    config = result.get("config")
    key = (training_key(config) if isinstance(config, dict)
           and result.get("status") in ("finished", "diverged") and "model_file" not in result
           and result.get("config_hash") == config_hash(config) else None)
    _TWIN_KEYS[path] = (mtime, key)
    return key


def find_twin(results_root: Path, name: str, resolved: Mapping[str, Any]) -> dict[str, Any] | None:
    """A result of another grid under ``results_root`` that trained what ``resolved`` asks for (same
    :func:`training_key`; finished or diverged, with no kept model file), or None."""
    key = training_key(resolved)
    for path in sorted(results_root.glob("*/runs/*.json")):
        if path.parent.parent.name != name and _twin_key(path) == key:
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
    return None


def adopt_twin(twin: Mapping[str, Any], cfg: Mapping[str, Any], run: Run) -> dict[str, Any]:
    """``twin``'s result as the result of ``run`` of ``cfg``: the run's own names, settings and hash,
    ``copied_from`` naming the source (``<grid>/<run id>``); everything that training made (metrics,
    history, times, commit, command, machine) stays the source's."""
    resolved = run_config(cfg, run)
    if training_key(twin["config"]) != training_key(resolved):
        raise ValueError(f"{twin['experiment']}/{twin['run']} trained other settings than {run.id!r} asks for")
    return {**twin, "run": run.id, "experiment": cfg["name"], "config": resolved,
            "config_hash": config_hash(resolved),
            "copied_from": twin.get("copied_from") or f"{twin['experiment']}/{twin['run']}"}


def is_done(path: Path, resolved: Mapping[str, Any]) -> bool:
    """True if ``path`` holds a result made with the settings ``resolved``."""
    return read_result(path, resolved) is not None


def _agree(flag: bool) -> bool:
    """True on every process if it is true on any (one all-reduce; one process: the flag itself)."""
    return distributed.all_reduce_sums([float(flag)])[0] > 0 if distributed.active() else flag


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min" if seconds >= 3600 else \
        f"{seconds // 60} min {seconds % 60:02d} s"


def run_grid(cfg: Mapping[str, Any], results_root: Path | None = None, checkpoint_root: Path | None = None,
             only: str | None = None, progress: bool = True, command: str | None = None,
             reuse: bool = True) -> list[Path]:
    """Run every unfinished run of the grid (those matching the glob ``only``); returns the result files
    that exist afterwards. Prints one line per run and an estimate of the time left (this invocation's
    seconds per trained epoch times the epochs left). With ``reuse``, a run that another grid under the
    same results root has trained with the same settings (:func:`find_twin`) gets a copy of that result
    instead of training again (not for runs whose model the grid keeps)."""
    import fnmatch

    results = (results_root or paths.results_root()) / cfg["name"]
    checkpoints = (checkpoint_root or paths.checkpoints_root()) / cfg["name"]
    device = distributed.setup()
    command = command or " ".join(shlex.quote(a) for a in [Path(sys.executable).name, "-m", "mtlutils.experiments",
                                                             *sys.argv[1:]])
    runs = [r for r in grid(cfg) if only is None or fnmatch.fnmatch(r.id, only)]
    written: list[Path] = []
    say = print if distributed.is_main() else (lambda *a, **k: None)
    todo = [r for r in runs if not is_done(results / "runs" / f"{r.id}.json", run_config(cfg, r))]
    say(f"{cfg['name']}: {len(runs)} run(s), {len(runs) - len(todo)} done, {len(todo)} to train; profile "
        f"{cfg['profile']}, {distributed.world()[1]} process(es), device {device}", flush=True)
    trained_seconds, trained_epochs = 0.0, 0
    epochs = {r: int(run_config(cfg, r)["train"]["epochs"]) for r in todo}
    for k, run in enumerate(runs, start=1):
        path = results / "runs" / f"{run.id}.json"
        if run not in todo:
            written.append(path)
            continue
        tag = f"[{cfg['name']} {k}/{len(runs)}] {run.id}"
        held, busy = contextlib.ExitStack(), False
        if distributed.is_main():
            try:
                held.enter_context(exclusive(checkpoints / f"{run.id}.lock"))
            except Busy:
                busy = True
        if _agree(busy):
            say(f"{tag}: being trained by another runner, skipped", flush=True)
            continue
        with held:
            resolved = run_config(cfg, run)
            if _agree(is_done(path, resolved)):   # finished by another runner meanwhile
                written.append(path)
                continue
            twin = (find_twin(results.parent, cfg["name"], resolved)
                    if reuse and not keeps_model(cfg, run) else None)
            if _agree(twin is not None):      # every process reads the same files
                if distributed.is_main():
                    write_result(path, adopt_twin(twin, cfg, run))
                say(f"{tag}: trained already as {twin['experiment']}/{twin['run']} (the same settings): "
                    "result copied", flush=True)
                written.append(path)
                continue
            say(f"{tag}: training", flush=True)
            result = execute(cfg, run, results, checkpoints, device, command, progress)
        trained_seconds += result["wall_time_s"]
        trained_epochs += epochs[run]
        rest = todo[todo.index(run) + 1:]
        left, left_epochs = len(rest), sum(epochs[r] for r in rest)
        outcome = ", ".join(f"{m} {v:.4g}" for m, v in result["metrics"].items()) or result["error"]
        say(f"{tag}: {result['status']} in {result['wall_time_s']:.0f} s: {outcome}", flush=True)
        if left:   # from this invocation's seconds per epoch (models differ in cost: a rough guide)
            say(f"[{cfg['name']}] {left} run(s) left, about "
                f"{_duration(left_epochs * trained_seconds / max(trained_epochs, 1))} at this process's pace",
                flush=True)
        written.append(path)
    return written


def load_model(cfg: Mapping[str, Any], run_id: str, results_root: Path | None = None,
               device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained model a grid kept for ``run_id`` and its result: rebuilt from the result's settings,
    its weights checked against the SHA-256 the result records and against the run's current settings
    (a stale or foreign file raises a ``ValueError`` that names it). The model is in eval mode."""
    from ..data.download import file_sha256
    from ..models import create

    run = next((r for r in grid(cfg) if r.id == run_id), None)
    if run is None:
        raise ValueError(f"grid {cfg['name']!r} has no run {run_id!r}")
    results = (results_root or paths.results_root()) / cfg["name"]
    result = read_result(results / "runs" / f"{run_id}.json", run_config(cfg, run))
    if result is None or "model_file" not in result:
        raise ValueError(f"no kept model for {run_id!r} under {results}: the grid's keep_models must name it "
                         f"and the run must have finished with the current settings (make reproduce)")
    path = results / result["model_file"]
    if not path.is_file() or file_sha256(path) != result["model_sha256"]:
        raise ValueError(f"{path} is missing or does not match the SHA-256 in its result file: run the grid again")
    state = torch.load(path, map_location=device, weights_only=True)
    if state.get("config_hash") != result["config_hash"]:
        raise ValueError(f"{path} was trained with other settings than {run_id!r} has now")
    resolved = result["config"]
    train_set, _, tasks = build_data(resolved["data"])   # the tasks (and input channels) of the run
    model = create(resolved["arch"], tasks, width=resolved["train"]["width"],
                   **{"in_channels": input_channels(train_set), **resolved["options"]})
    model.load_state_dict(state["state_dict"])
    return model.to(device).eval(), result


def load_results(cfg: Mapping[str, Any], results_root: Path | None = None) -> list[dict[str, Any]]:
    """The result files of a config's grid that exist and match its current settings."""
    results = (results_root or paths.results_root()) / cfg["name"] / "runs"
    found = (read_result(results / f"{run.id}.json", run_config(cfg, run)) for run in grid(cfg))
    return [result for result in found if result is not None]


def aggregate(cfg: Mapping[str, Any], results_root: Path | None = None) -> Path:
    """Write ``results/<name>/summary.csv`` (atomically) from the run files; returns its path."""
    from ..tables import summarise

    results = load_results(cfg, results_root)
    expected = len(grid(cfg))
    table = summarise(results, cfg.get("baseline", "single"))
    out = (results_root or paths.results_root()) / cfg["name"] / "summary.csv"
    atomic_write_text(out, table.to_csv(index=False, float_format="%.8g"))
    print(f"{cfg['name']}: {len(results)}/{expected} runs summarised -> {out}")
    return out
