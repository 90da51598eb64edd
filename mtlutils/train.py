"""The training loop shared by every chapter: ``fit(model, data, tasks, weighting) -> History``.

Data flow (design.md §4): batch dict -> ``model(image)`` -> ``{task: prediction}`` ->
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from . import distributed
from .config import get_device
from .progress import Progress
from .tasks import Task, as_task_dict
from .weighting import EqualWeighting, Weighting

CHECKPOINT_FORMAT = 1
Batch = Mapping[str, torch.Tensor]


class NonFiniteLossError(FloatingPointError):
    """A task loss became NaN or infinite during training."""


@dataclass
class History:
    """Per-epoch records of a training run.

    ``rows[e]`` holds epoch ``e + 1``: keys ``"epoch"``, ``"train/<task>/loss"``, ``"weight/<task>"``,
    ``"train/<task>/<metric>"`` and, with validation data, ``"val/<task>/loss"``, ``"val/<task>/<metric>"``.
    Wall-clock seconds per epoch are kept apart (``seconds``) and do not take part in equality.
    """

    rows: list[dict[str, float]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list, compare=False)

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
        return {"rows": [dict(r) for r in self.rows], "seconds": list(self.seconds)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "History":
        return cls(rows=[dict(r) for r in state["rows"]], seconds=list(state["seconds"]))


# ---------------------------------------------------------------------------------------------------
# checkpoints
def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: a crash mid-write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(dict(state), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`fit` (``weights_only=True``: no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a mtlutils checkpoint (format {state.get('format')!r})")
    return state


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
             device: torch.device | str | None = None) -> dict[str, float]:
    """Mean unweighted loss and metrics of every task over ``data`` (model in eval mode).

    Returns a flat dict ``{"<task>/loss": ..., "<task>/<metric>": ...}``. Losses are averaged per
    sample over the whole set; metrics are accumulated over the whole set (over the shards of all
    processes when several train together).
    """
    tasks = as_task_dict(list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks))
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums = {name: 0.0 for name in tasks}
    count = 0
    metrics = {name: task.new_metrics() for name, task in tasks.items()}
    for batch in data:
        batch = _move(batch, device)
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


def fit(model: nn.Module, data: Iterable[Batch], tasks: "Mapping[str, Task] | Iterable[Task]",
        weighting: Weighting | None = None, *, epochs: int = 10, lr: float = 1e-3,
        optimizer: "str | torch.optim.Optimizer | None" = None, weight_decay: float = 0.0,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        val_data: Iterable[Batch] | None = None, device: torch.device | str | None = None, seed: int = 0,
        checkpoint: str | os.PathLike | None = None, resume: bool = False, progress: bool = True,
        label: str = "", grad_clip: float | None = None, train_metrics: bool = True) -> History:
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
        checkpoint: file written after every epoch; ``resume=True`` continues from it if it exists.
        progress: show a progress bar; ``label`` names the run on it.
        grad_clip: clip the gradient norm to this value.
        train_metrics: also compute the tasks' metrics on the training batches (``train/<task>/<metric>``
            in the History); ``False`` records the losses only and saves their cost (about 7 % of a
            step for a small SegNet on CPU). Training itself is the same either way.

    Raises:
        NonFiniteLossError: a task loss became NaN/inf (the last checkpoint is kept).
    """
    tasks = as_task_dict(list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks))
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    weighting = weighting if weighting is not None else EqualWeighting(tasks)
    if set(weighting.task_names) != set(tasks):
        raise ValueError(f"weighting is for tasks {weighting.task_names}, training tasks are {list(tasks)}")
    device = torch.device(device) if device is not None else get_device()
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
        opt.add_param_group({"params": [p for p in extra if id(p) not in known]})
    sched = scheduler(opt) if scheduler is not None else None

    history = History()
    start = 0
    if checkpoint is not None and resume and Path(checkpoint).is_file():
        state = load_checkpoint(checkpoint, map_location=device)
        inner.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        weighting.load_state_dict(state["weighting"])
        if sched is not None and state.get("scheduler") is not None:
            sched.load_state_dict(state["scheduler"])
        history = History.from_state(state["history"])
        start = int(state["epoch"])

    steps = _steps_per_epoch(data, needed=False)
    prefix = f"{label} · " if label else ""
    bar = Progress(total=steps * epochs, desc=f"{prefix}epoch {start}/{epochs}",
                   enabled=progress and distributed.is_main())
    bar.n = steps * start
    try:
        for epoch in range(start + 1, epochs + 1):
            began = time.perf_counter()
            bar.set_description(f"{prefix}epoch {epoch}/{epochs}")
            row = _train_epoch(model, data, tasks, weighting, opt, device, epoch, seed, grad_clip,
                               checkpoint, bar, train_metrics)
            if callable(getattr(inner, "calibrate", None)) and (val_data is not None or epoch == epochs):
                inner.calibrate(data)  # before the model is evaluated (see the hooks in the module doc)
            weighting.end_epoch({name: row[f"train/{name}/loss"] for name in tasks})
            if val_data is not None:
                row.update({f"val/{k}": v for k, v in evaluate(model, val_data, tasks, device).items()})
            if sched is not None:
                sched.step()
            history.rows.append(row)
            history.seconds.append(time.perf_counter() - began)
            if val_data is not None:
                bar.update(0, **{f"val {name}": row[f"val/{name}/loss"] for name in tasks})
            if checkpoint is not None and distributed.is_main():
                save_checkpoint({"format": CHECKPOINT_FORMAT, "epoch": epoch, "seed": seed,
                                 "model": inner.state_dict(), "optimizer": opt.state_dict(),
                                 "weighting": weighting.state_dict(),
                                 "scheduler": sched.state_dict() if sched is not None else None,
                                 "history": history.state()}, checkpoint)
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


def _train_epoch(model: nn.Module, data: Iterable[Batch], tasks: Mapping[str, Task], weighting: Weighting,
                 opt: torch.optim.Optimizer, device: torch.device, epoch: int, seed: int,
                 grad_clip: float | None, checkpoint: Any, bar: Progress,
                 train_metrics: bool) -> dict[str, float]:
    """One training epoch; returns the epoch's History row (without validation entries)."""
    s = epoch_seed(seed, epoch)
    torch.manual_seed(s)
    generator = getattr(data, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(s)
    model.train()
    weighting.train()
    sums = {name: 0.0 for name in tasks}
    metrics = {name: task.new_metrics() for name, task in tasks.items()} if train_metrics else {}
    count = 0
    row: dict[str, float] = {"epoch": float(epoch)}
    row.update({f"weight/{k}": float(v) for k, v in weighting.weights().items()})
    inner = distributed.unwrap(model)
    on_step = getattr(inner, "on_train_step", None)
    regularization = getattr(inner, "regularization", None)
    own_params = [p for p in weighting.parameters() if p.requires_grad]
    first_step = (epoch - 1) * _steps_per_epoch(data, needed=callable(on_step))
    reg_sum = 0.0
    for step, batch in enumerate(data, start=1):
        batch = _move(batch, device)
        if callable(on_step):
            on_step(first_step + step - 1)
        preds, losses = _task_losses(model, batch, tasks)
        for name, value in losses.items():
            if not torch.isfinite(value):
                kept = f"; the last good checkpoint is kept at {checkpoint}" if checkpoint else ""
                raise NonFiniteLossError(f"loss of task {name!r} is {float(value.detach())} at epoch {epoch}, "
                                         f"step {step}{kept}")
        total = weighting.combine(losses)
        if callable(regularization):
            reg = regularization()
            reg_sum += float(reg.detach())
            total = total + reg
        if not torch.isfinite(total):
            raise NonFiniteLossError(f"the weighted total loss is {float(total.detach())} at epoch {epoch}, step {step}")
        opt.zero_grad(set_to_none=True)
        total.backward()
        distributed.average_gradients(own_params)
        if grad_clip is not None:
            params = [p for group in opt.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        n = batch["image"].shape[0]
        count += n
        for name in tasks:
            sums[name] += float(losses[name].detach()) * n
        for name, metric in metrics.items():  # empty without train_metrics
            metric.update(preds[name].detach(), batch[name])
        bar.update(1, **{name: sums[name] / count for name in tasks})
    *loss_sums, reg_sum, steps, count = distributed.all_reduce_sums(
        [sums[name] for name in tasks] + [reg_sum, step if count else 0, count])
    sums = dict(zip(tasks, loss_sums))
    distributed.merge_metrics(metrics)
    if count == 0:
        raise ValueError("the training data yielded no batch")
    for name in tasks:
        row[f"train/{name}/loss"] = sums[name] / count
        if name in metrics:  # none without train_metrics
            row.update({f"train/{name}/{k}": v for k, v in metrics[name].compute().items()})
    if callable(regularization):
        row["train/model/regularization"] = reg_sum / steps
    if any(not math.isfinite(v) for v in row.values()):  # metrics can only be non-finite on bad data
        raise NonFiniteLossError(f"non-finite value in the epoch {epoch} record: {row}")
    return row
