"""The training loop shared by every chapter: ``fit(model, data, tasks, weighting) -> History``.

Data flow (docs/ARCHITECTURE.md): batch dict -> ``model(image)`` -> ``{task: prediction}`` ->
``task.loss`` -> ``{task: loss}`` -> ``weighting.combine`` -> backward -> optimiser step.

* **History**: per epoch, the mean unweighted training loss of every task, the task weights, the
  training metrics and, with ``val_data``, the validation losses and metrics.
* **Checkpoints**: with ``checkpoint=path`` the full state (model, optimiser, weighting, scheduler,
  history) is written after every epoch, atomically (a temporary file renamed over the old one), so a
  crash at any moment leaves the last complete checkpoint loadable. Checkpoints load with
  ``torch.load(..., weights_only=True)``.
* **Resume**: ``resume=True`` continues from the checkpoint. Every epoch starts from random state
  derived from ``(seed, epoch)`` only, so on a CPU a resumed run ends with exactly the History of an
  uninterrupted one.
* **NaN guard**: a non-finite loss stops training with :class:`NonFiniteLossError` naming the task,
  epoch and step; the last good checkpoint is left untouched.

Optional model hooks (duck-typed, so any ``nn.Module`` works without them):

* ``model.param_groups(lr) -> list[dict]``: the optimiser's parameter groups (e.g. cross-stitch units
  with a larger learning rate); used when ``optimizer`` is a name.
* ``model.regularization() -> Tensor``: a scalar added to the weighted task loss every step (e.g. the
  entropy term of stochastic filter groups). Its epoch mean is recorded as ``train/model/regularization``.
* ``model.on_train_step(step)``: called before every training step with the global step (0-based, counted
  over all epochs), e.g. to anneal a temperature. It must depend on ``step`` only, so that a resumed run
  equals an uninterrupted one.
* ``model.calibrate(data)``: called with the training data after an epoch's training whenever the model
  is about to be evaluated (before the validation of every epoch, and after the last epoch), e.g. to
  re-estimate batch-norm statistics that training leaves stale (stochastic filter groups). It runs
  before the checkpoint is written, so a resumed run equals an uninterrupted one.

Several processes (``torchrun``, see :mod:`mtlutils.distributed`): pass a model prepared with
:func:`~mtlutils.distributed.prepare_model` and data from a
:class:`~mtlutils.distributed.ShardedBatchSampler`; the loop then sums the epoch's losses and merges the
metrics of all processes, averages the gradients of the weighting's own parameters, and only the main
process writes checkpoints and shows progress. The hooks above are looked up on the wrapped model.
"""
from __future__ import annotations

import math
import os
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from . import distributed
from . import precision as precisions
from .config import get_device
from .fileio import atomic_write
from .progress import Progress
from .tasks import Task, as_task_dict
from .weighting import EqualWeighting, Weighting

CHECKPOINT_FORMAT = 2   # 2: with the run's settings, checked on resume
Batch = Mapping[str, torch.Tensor]


class NonFiniteLossError(FloatingPointError):
    """A task loss (or the weighted total) became NaN or infinite during training.

    Attributes: ``task`` (its name, or ``None`` for the weighted total / the epoch record), ``epoch``,
    ``step`` (1-based within the epoch), ``value`` and ``history`` (the epochs completed before it)."""

    def __init__(self, message: str, *, task: str | None = None, epoch: int = 0, step: int = 0,
                 value: float = math.nan, history: "History | None" = None) -> None:
        super().__init__(message)
        self.task, self.epoch, self.step, self.value = task, epoch, step, value
        self.history = history if history is not None else History()


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: corrupt, or written by a run with other settings."""


@dataclass
class History:
    """Per-epoch records of a training run.

    ``rows[e]`` holds epoch ``e + 1``: keys ``"epoch"``, ``"train/<task>/loss"``, ``"weight/<task>"``,
    ``"train/<task>/<metric>"`` and, with validation data, ``"val/<task>/loss"``, ``"val/<task>/<metric>"``.
    Wall-clock and CPU seconds per epoch (this process's CPU time) are kept apart (``seconds``,
    ``cpu_seconds``), survive a resume from a checkpoint, and do not take part in equality. A checkpoint
    written before ``cpu_seconds`` existed has none: after resuming from it the list is shorter than
    ``seconds`` and holds the later epochs only (``experiments.training_cpu_seconds`` then falls back).
    """

    rows: list[dict[str, float]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list, compare=False)
    cpu_seconds: list[float] = field(default_factory=list, compare=False)
    precision: str = field(default="fp32", compare=False)   # the arithmetic of the training (mtlutils.precision)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def keys(self) -> list[str]:
        return list(self.rows[0]) if self.rows else []

    def series(self, key: str) -> list[float]:
        """The values of ``key`` over the epochs, e.g. ``history.series("val/left/accuracy")``."""
        if self.rows and key not in self.rows[0]:
            raise KeyError(f"no {key!r} in the history; keys: {self.keys}")
        return [row[key] for row in self.rows]

    def curve(self, split: str, task: str, quantity: str = "loss") -> list[float]:
        """One quantity over the epochs: ``curve("val", "seg", "miou")``, ``curve("train", "depth")`` (the
        loss), ``curve("weight", "depth")`` (the task weight; ``quantity`` ignored)."""
        if split == "weight":
            return self.series(f"weight/{task}")
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train', 'val' or 'weight', got {split!r}")
        return self.series(f"{split}/{task}/{quantity}")

    def last(self) -> dict[str, float]:
        """The record of the last epoch."""
        if not self.rows:
            raise IndexError("the history is empty")
        return dict(self.rows[-1])

    def to_frame(self):
        """A long pandas DataFrame (columns epoch, split, task, quantity, value), ready for seaborn."""
        import pandas as pd

        records = []
        for row in self.rows:
            for key, value in row.items():
                if key == "epoch":
                    continue
                parts = key.split("/")
                if parts[0] == "weight":
                    split, task, quantity = "train", parts[1], "weight"
                else:
                    split, task, quantity = parts[0], parts[1], "/".join(parts[2:])
                records.append({"epoch": int(row["epoch"]), "split": split, "task": task,
                                "quantity": quantity, "value": value})
        return pd.DataFrame.from_records(records, columns=["epoch", "split", "task", "quantity", "value"])

    def state(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows], "seconds": list(self.seconds),
                "cpu_seconds": list(self.cpu_seconds), "precision": self.precision}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "History":
        # checkpoints written before cpu_seconds existed have none: the list stays shorter than seconds
        return cls(rows=[dict(r) for r in state["rows"]], seconds=list(state["seconds"]),
                   cpu_seconds=list(state.get("cpu_seconds", [])), precision=state.get("precision", "fp32"))


# ---------------------------------------------------------------------------------------------------
# checkpoints
def previous_checkpoint(path: str | os.PathLike) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint before the last one (the fallback)."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically, keeping the checkpoint it replaces as
    :func:`previous_checkpoint`: a crash mid-write leaves the last complete checkpoint, and a checkpoint
    damaged later on disk still has an intact predecessor."""
    return atomic_write(path, lambda handle: torch.save(dict(state), handle),
                        keep_previous=previous_checkpoint(path))


def remove_checkpoint(path: str | os.PathLike) -> None:
    """Delete a checkpoint and its predecessor (missing files are fine)."""
    for p in (Path(path), previous_checkpoint(path)):
        p.unlink(missing_ok=True)


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` naming ``path`` unless it is an intact checkpoint archive: every
    member of the zip archive that ``torch.save`` writes is read and its CRC-32 checked, which catches
    truncation and damaged bytes before anything is loaded."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} is damaged or truncated ({err})") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is damaged: the CRC of {bad!r} does not match its data")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`fit` after verifying it (:func:`verify_checkpoint`;
    ``weights_only=True``: no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    verify_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds; the path must be named
        raise CheckpointError(f"checkpoint {path} could not be loaded: {err}") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not a mtlutils checkpoint of format {CHECKPOINT_FORMAT} (found {found!r}); "
                         f"delete it to start the run afresh")
    return state


def _resume_state(path: Path, device: torch.device) -> dict[str, Any] | None:
    """The newest intact checkpoint of ``path`` or its predecessor; None if neither exists. A damaged
    newest one falls back to the predecessor with a warning; if both are damaged, one error names both."""
    candidates = [p for p in (path, previous_checkpoint(path)) if p.is_file()]
    problems = []
    for candidate in candidates:
        try:
            state = load_checkpoint(candidate, map_location=device)
        except (CheckpointError, ValueError) as err:
            problems.append(str(err))
            continue
        if problems:
            warnings.warn(f"{problems[0]}; resuming from the previous checkpoint {candidate} instead "
                          f"(epoch {state.get('epoch')})", RuntimeWarning, stacklevel=3)
        return state
    if problems:
        raise CheckpointError("; ".join(problems) + f". No intact checkpoint is left: delete {path} (and "
                              f"{previous_checkpoint(path).name}) to train the run again from the start")
    return None


def _settings(seed: int, epochs: int, opt: torch.optim.Optimizer, weighting: Weighting, model: nn.Module,
              sched: Any) -> dict[str, Any]:
    """What a checkpoint must agree with to be resumed: a checkpoint of other settings is another run."""
    return {"seed": seed, "epochs": epochs, "model": type(model).__name__,
            "optimizer": type(opt).__name__, "param_groups": len(opt.param_groups),
            "lr": [float(g.get("initial_lr", g["lr"])) for g in opt.param_groups],
            "weight_decay": [float(g.get("weight_decay", 0.0)) for g in opt.param_groups],
            "weighting": type(weighting).__name__, "scheduler": type(sched).__name__ if sched is not None else None}


def _check_settings(path: Path, stored: Mapping[str, Any] | None, current: Mapping[str, Any]) -> None:
    if stored is None:
        raise CheckpointError(f"checkpoint {path} records no settings; delete it to start afresh")
    differ = [f"{k} {stored.get(k)!r} (checkpoint) vs {current[k]!r} (now)" for k in current
              if stored.get(k) != current[k]]
    if differ:
        raise CheckpointError(f"checkpoint {path} belongs to a run with other settings: {'; '.join(differ)}. "
                              f"Delete it to start this run afresh, or restore the settings to resume it")


# ---------------------------------------------------------------------------------------------------
# one pass over data
def _move(batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
    if not isinstance(batch, Mapping):
        raise TypeError(f"batches must be dicts {{'image': ..., <task>: ...}}, got {type(batch).__name__}")
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _task_losses(model: nn.Module, batch: Mapping[str, torch.Tensor], tasks: Mapping[str, Task]
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    if "image" not in batch:
        raise KeyError(f"batch has no 'image'; keys: {sorted(batch)}")
    missing = [name for name in tasks if name not in batch]
    if missing:
        raise KeyError(f"batch has no target for task(s) {missing}; keys: {sorted(batch)}")
    preds = model(batch["image"])
    absent = [name for name in tasks if name not in preds]
    if absent:
        raise KeyError(f"model returned no prediction for task(s) {absent}; it returned {sorted(preds)}")
    return preds, {name: task.loss(preds[name], batch[name]) for name, task in tasks.items()}


@torch.no_grad()
def evaluate(model: nn.Module, data: Iterable[Batch], tasks: "Mapping[str, Task] | Iterable[Task]",
             device: torch.device | str | None = None, precision: str = "fp32") -> dict[str, float]:
    """Mean unweighted loss and metrics of every task over ``data`` (model in eval mode; the forward pass
    in ``precision``, see :mod:`mtlutils.precision`; metrics accumulated in float32/64).

    Returns a flat dict ``{"<task>/loss": ..., "<task>/<metric>": ...}``. Losses are averaged per
    sample over the whole set; metrics are accumulated over the whole set (over the shards of all
    processes when several train together).
    """
    tasks = as_task_dict(list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks))
    device = torch.device(device) if device is not None else next(model.parameters()).device
    precision = precisions.resolve(precision, device)
    was_training = model.training
    model.eval()
    sums = {name: 0.0 for name in tasks}
    count = 0
    metrics = {name: task.new_metrics() for name, task in tasks.items()}
    for batch in data:
        batch = _move(batch, device)
        with precisions.autocast(precision, device):
            preds, losses = _task_losses(model, batch, tasks)
        n = batch["image"].shape[0]
        count += n
        for name in tasks:
            sums[name] += float(losses[name]) * n
            metrics[name].update(preds[name], batch[name])
    model.train(was_training)
    *loss_sums, count = distributed.all_reduce_sums([sums[name] for name in tasks] + [count])
    sums = dict(zip(tasks, loss_sums))
    distributed.merge_metrics(metrics)
    if count == 0:
        raise ValueError("evaluate() got no data")
    out: dict[str, float] = {}
    for name in tasks:
        out[f"{name}/loss"] = sums[name] / count
        out.update({f"{name}/{k}": v for k, v in metrics[name].compute().items()})
    return out


def _make_optimizer(optimizer: "str | torch.optim.Optimizer | None", params: "list[nn.Parameter] | list[dict]",
                    lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    name = (optimizer or "adam").lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        # foreach: one fused update for all parameters, bit-identical to the per-tensor loop and faster
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, foreach=True)
    raise ValueError(f"unknown optimizer {optimizer!r}; use 'adam', 'sgd' or pass a torch.optim.Optimizer")


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed that fixes all randomness of epoch ``epoch`` (1-based) of a run with ``seed``."""
    return (seed * 1_000_003 + epoch) % (2**63 - 1)


@dataclass
class TrainState:
    """What :func:`fit` shows its callbacks: the objects being trained and where the loop stands.

    ``epoch`` (1-based), ``step`` (1-based within the epoch), ``global_step`` (steps done over all epochs,
    this one included), ``losses`` (this step's unweighted task losses, detached; ``None`` at the end of
    an epoch) and ``history`` (the epochs completed so far; at ``on_epoch_end`` it holds this epoch).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    weighting: Weighting
    history: "History"
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    losses: dict[str, torch.Tensor] | None = None
    precision: str = "fp32"
    scaler: Any = None   # torch.amp.GradScaler for fp16


class Callback:
    """Base of :func:`fit`'s callbacks: override what you need. ``on_step`` runs after every optimiser
    step, ``on_epoch_end`` after every epoch (validation and checkpoint done). A callback observes; to keep
    a resumed run equal to an uninterrupted one, it must not change the training."""

    def on_step(self, state: TrainState) -> None:
        """After every optimiser step."""

    def on_epoch_end(self, state: TrainState) -> None:
        """After every epoch (its History row appended, its checkpoint written)."""


def fit(model: nn.Module, data: Iterable[Batch], tasks: "Mapping[str, Task] | Iterable[Task]",
        weighting: Weighting | None = None, *, epochs: int = 10, lr: float = 1e-3,
        optimizer: "str | torch.optim.Optimizer | None" = None, weight_decay: float = 0.0,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        val_data: Iterable[Batch] | None = None, device: torch.device | str | None = None, seed: int = 0,
        checkpoint: str | os.PathLike | None = None, resume: bool = False, progress: bool = True,
        label: str = "", grad_clip: float | None = None, train_metrics: bool = True,
        callbacks: "Iterable[Callback]" = (), precision: str = "fp32") -> History:
    """Train ``model`` on ``data`` for the ``tasks``, combining their losses with ``weighting``.

    Args:
        model: returns ``{task: prediction}`` for a batch of images.
        data: iterable of batch dicts (e.g. a DataLoader); re-iterated every epoch.
        tasks: the tasks to train (their names are keys of each batch).
        weighting: a :class:`~mtlutils.weighting.Weighting`; default equal weights. Its parameters, if
            any, are trained with the model.
        epochs: total number of epochs (a resumed run continues up to this number).
        lr, optimizer, weight_decay: ``"adam"`` (default) or ``"sgd"`` (momentum 0.9), or a ready
            ``torch.optim.Optimizer`` (e.g. with parameter groups); then ``lr`` is ignored.
        scheduler: ``optimizer -> LR scheduler``, stepped once per epoch.
        val_data: evaluated after every epoch (losses and metrics in the History).
        device: default :func:`~mtlutils.config.get_device` (CUDA > MPS > CPU).
        seed: fixes the randomness of every epoch (shuffling, dropout, sampling).
        checkpoint: file written after every epoch (the one before is kept as ``<file>.prev``);
            ``resume=True`` continues from it if it exists. A damaged checkpoint falls back to the previous
            one; a checkpoint of other settings (seed, epochs, optimiser, learning rates, weight decay,
            weighting, model class, scheduler) is refused with :class:`CheckpointError`.
        progress: show a progress bar; ``label`` names the run on it.
        grad_clip: clip the gradient norm to this value.
        train_metrics: also compute the tasks' metrics on the training batches (``train/<task>/<metric>``
            in the History); ``False`` records the losses only and saves their cost (about 7 % of a
            step for a small SegNet on CPU). Training itself is the same either way.
        callbacks: :class:`Callback` objects (anything with ``on_step(state)`` / ``on_epoch_end(state)``)
            that observe the training, e.g. to record α or group fractions as they move.
        precision: ``"fp32"`` (default), ``"bf16"``, ``"fp16"`` (CUDA, with a gradient scaler) or
            ``"auto"`` (bf16 where the device runs it fast): the forward pass and the losses under
            autocast (:mod:`mtlutils.precision`); recorded as ``History.precision``.

    Raises:
        NonFiniteLossError: a task loss became NaN/inf; it carries the task, epoch, step and the History
            of the epochs before (the last checkpoint is kept).
        CheckpointError: ``resume`` found only damaged checkpoints, or one of other settings.
    """
    tasks = as_task_dict(list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks))
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    weighting = weighting if weighting is not None else EqualWeighting(tasks)
    if set(weighting.task_names) != set(tasks):
        raise ValueError(f"weighting is for tasks {weighting.task_names}, training tasks are {list(tasks)}")
    device = torch.device(device) if device is not None else get_device()
    precision = precisions.resolve(precision, device)
    if precision == "fp16" and getattr(weighting, "needs", None) is not None:
        raise ValueError("precision 'fp16' trains with a gradient scaler, which gradient-level weightings do "
                         "not support; use 'bf16' or 'fp32'")
    model.to(device)
    weighting.to(device)
    extra = [p for p in weighting.parameters() if p.requires_grad]
    inner = distributed.unwrap(model)
    params: list = [p for p in model.parameters() if p.requires_grad]
    if callable(getattr(inner, "param_groups", None)):
        params = list(inner.param_groups(lr))
    opt = _make_optimizer(optimizer, params, lr, weight_decay)
    known = {id(p) for group in opt.param_groups for p in group["params"]}
    if extra and not all(id(p) in known for p in extra):
        if callable(getattr(weighting, "param_groups", None)):   # e.g. GradNorm's w at its own rate
            for group in weighting.param_groups(lr):
                opt.add_param_group(group)
        else:
            opt.add_param_group({"params": [p for p in extra if id(p) not in known]})
    sched = scheduler(opt) if scheduler is not None else None
    settings = {**_settings(seed, epochs, opt, weighting, inner, sched), "precision": precision}
    callbacks = list(callbacks)

    history = History(precision=precision)
    scaler = precisions.scaler(precision, device)
    start = 0
    if checkpoint is not None and resume:
        state = _resume_state(Path(checkpoint), device)
        if state is not None:
            _check_settings(Path(checkpoint), state.get("settings"), settings)
            inner.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            weighting.load_state_dict(state["weighting"])
            if sched is not None and state.get("scheduler") is not None:
                sched.load_state_dict(state["scheduler"])
            if scaler is not None and state.get("scaler") is not None:
                scaler.load_state_dict(state["scaler"])
            history = History.from_state(state["history"])
            history.precision = precision
            start = int(state["epoch"])

    steps = _steps_per_epoch(data, needed=False)
    prefix = f"{label} · " if label else ""
    bar = Progress(total=steps * epochs, desc=f"{prefix}epoch {start}/{epochs}",
                   enabled=progress and distributed.is_main(), initial=steps * start)
    loop = TrainState(model=model, optimizer=opt, weighting=weighting, history=history,
                      global_step=steps * start, precision=precision, scaler=scaler)
    setup = _Setup(data, tasks, device, seed, grad_clip, checkpoint, bar, train_metrics, callbacks)
    try:
        for epoch in range(start + 1, epochs + 1):
            began, cpu_began = time.perf_counter(), time.process_time()
            bar.set_description(f"{prefix}epoch {epoch}/{epochs}")
            loop.epoch = epoch
            try:
                row = _train_epoch(loop, setup)
            except NonFiniteLossError as err:
                err.history = History.from_state(history.state())
                raise
            if callable(getattr(inner, "calibrate", None)) and (val_data is not None or epoch == epochs):
                inner.calibrate(data)  # before the model is evaluated (see the hooks in the module doc)
            weighting.end_epoch({name: row[f"train/{name}/loss"] for name in tasks})
            if getattr(weighting, "needs", None) is not None:   # gradient-level: the epoch's mean weights, known only now
                row.update({f"weight/{k}": float(v) for k, v in weighting.weights().items()})
            if val_data is not None:
                row.update({f"val/{k}": v for k, v in evaluate(model, val_data, tasks, device, precision).items()})
            if sched is not None:
                sched.step()
            history.rows.append(row)
            history.seconds.append(time.perf_counter() - began)
            history.cpu_seconds.append(time.process_time() - cpu_began)
            if val_data is not None:
                bar.update(0, **{f"val {name}": row[f"val/{name}/loss"] for name in tasks})
            if checkpoint is not None and distributed.is_main():
                save_checkpoint({"format": CHECKPOINT_FORMAT, "epoch": epoch, "seed": seed, "settings": settings,
                                 "model": inner.state_dict(), "optimizer": opt.state_dict(),
                                 "weighting": weighting.state_dict(),
                                 "scheduler": sched.state_dict() if sched is not None else None,
                                 "scaler": scaler.state_dict() if scaler is not None else None,
                                 "history": history.state()}, checkpoint)
            loop.losses = None
            for callback in callbacks:
                if hasattr(callback, "on_epoch_end"):
                    callback.on_epoch_end(loop)
    finally:
        bar.close()
    return history


def _steps_per_epoch(data: Iterable[Batch], needed: bool) -> int:
    """Batches per epoch (``len(data)``); 0 when unknown and not needed."""
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        if needed:
            raise TypeError("a model with on_train_step(step) needs data with a length (e.g. a DataLoader) "
                            "so that the global step is known on resume") from None
        return 0


def _non_finite(loop: TrainState, names: list[str], values: torch.Tensor, step: int, checkpoint: Any
                ) -> NonFiniteLossError:
    """The error for the first non-finite entry of ``values`` (task losses, then the weighted total), or
    for another process's loss when every local value is finite."""
    finite = torch.isfinite(values)
    kept = f"; the last good checkpoint is kept at {checkpoint}" if checkpoint else ""
    where = dict(epoch=loop.epoch, step=step)
    if bool(finite.all()):
        return NonFiniteLossError(f"a loss of another process is non-finite at epoch {loop.epoch}, step {step}"
                                  f"{kept}", **where)
    bad = int((~finite).nonzero()[0, 0])
    value = float(values[bad])
    if bad < len(names):
        return NonFiniteLossError(f"loss of task {names[bad]!r} is {value} at epoch {loop.epoch}, step {step}{kept}",
                                  task=names[bad], value=value, **where)
    return NonFiniteLossError(f"the weighted total loss is {value} at epoch {loop.epoch}, step {step}{kept}",
                              value=value, **where)


@dataclass
class _Setup:
    """The settings of one :func:`fit` call that every epoch needs (what :func:`_train_epoch` reads)."""

    data: Iterable[Batch]
    tasks: Mapping[str, Task]
    device: torch.device
    seed: int
    grad_clip: float | None
    checkpoint: Any
    bar: Progress
    train_metrics: bool
    callbacks: list[Any]


def _train_epoch(loop: TrainState, setup: _Setup) -> dict[str, float]:
    """One training epoch; returns the epoch's History row (without validation entries).

    The step reads one value from the device (whether every loss is finite, in every process, together
    with the running loss sums for the progress bar): one host synchronisation per step."""
    model, weighting, opt, epoch = loop.model, loop.weighting, loop.optimizer, loop.epoch
    data, tasks, device, seed, grad_clip = setup.data, setup.tasks, setup.device, setup.seed, setup.grad_clip
    checkpoint, bar, train_metrics, callbacks = setup.checkpoint, setup.bar, setup.train_metrics, setup.callbacks
    s = epoch_seed(seed, epoch)
    torch.manual_seed(s)
    generator = getattr(data, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(s)
    model.train()
    weighting.train()
    names = list(tasks)
    sums = torch.zeros(len(names), dtype=torch.float64, device=device)   # per-task loss * batch size
    reg_sum = torch.zeros((), dtype=torch.float64, device=device)
    metrics = {name: task.new_metrics() for name, task in tasks.items()} if train_metrics else {}
    count = 0
    row: dict[str, float] = {"epoch": float(epoch)}
    row.update({f"weight/{k}": float(v) for k, v in weighting.weights().items()})
    inner = distributed.unwrap(model)
    on_step = getattr(inner, "on_train_step", None)
    regularization = getattr(inner, "regularization", None)
    own_params = [p for p in weighting.parameters() if p.requires_grad]
    clip_params = [p for group in opt.param_groups for p in group["params"]] if grad_clip is not None else []
    first_step = (epoch - 1) * _steps_per_epoch(data, needed=callable(on_step))
    step = 0
    for step, batch in enumerate(data, start=1):
        batch = _move(batch, device)
        if callable(on_step):
            on_step(first_step + step - 1)
        with precisions.autocast(loop.precision, device):
            preds, losses = _task_losses(model, batch, tasks)
            total = weighting.combine(losses)
            if callable(regularization):
                reg = regularization()
                reg_sum += reg.detach().double()
                total = total + reg
        detached = torch.stack([losses[name].detach() for name in names] + [total.detach()])
        ok = distributed.all_agree_finite(detached)
        n = batch["image"].shape[0]
        sums += detached[:-1].double() * n
        read = torch.cat([ok.reshape(1).double(), sums]).tolist()   # the step's one host synchronisation
        if not read[0]:
            raise _non_finite(loop, names, detached, step, checkpoint)
        opt.zero_grad(set_to_none=True)
        if getattr(weighting, "needs", None) is not None:   # gradient-level: the weighting writes the gradients
            weighting.backward(losses, model, extra=reg if callable(regularization) else None)
        elif loop.scaler is not None:
            loop.scaler.scale(total).backward()
        else:
            total.backward()
        distributed.average_gradients(own_params)
        if loop.scaler is not None:
            loop.scaler.unscale_(opt)
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(clip_params, grad_clip)
        if loop.scaler is not None:
            loop.scaler.step(opt)
            loop.scaler.update()
        else:
            opt.step()
        count += n
        for name, metric in metrics.items():  # empty without train_metrics
            metric.update(preds[name].detach(), batch[name])
        bar.update(1, **{name: read[1 + i] / count for i, name in enumerate(names)})
        loop.step, loop.global_step = step, loop.global_step + 1
        if callbacks:
            loop.losses = {name: losses[name].detach() for name in names}
            for callback in callbacks:
                if hasattr(callback, "on_step"):
                    callback.on_step(loop)
    *loss_sums, reg_total, steps, count = distributed.all_reduce_sums(
        sums.tolist() + [float(reg_sum), step if count else 0, count])
    distributed.merge_metrics(metrics)
    if count == 0:
        raise ValueError("the training data yielded no batch")
    for name, value in zip(names, loss_sums):
        row[f"train/{name}/loss"] = value / count
        if name in metrics:  # none without train_metrics
            row.update({f"train/{name}/{k}": v for k, v in metrics[name].compute().items()})
    if callable(regularization):
        row["train/model/regularization"] = reg_total / steps
    if any(not math.isfinite(v) for v in row.values()):  # metrics can only be non-finite on bad data
        raise NonFiniteLossError(f"non-finite value in the epoch {epoch} record: {row}", epoch=epoch, step=step)
    return row
