"""Data sets named by an experiment grid: a ``[data.<name>]`` section -> (train set, evaluation set, tasks).

Each kind of :data:`DATA_KINDS` lists the options its section may hold (checked before anything trains,
see :mod:`mtlutils.experiments.config`). Every kind also takes ``tasks`` (which of its tasks to train) and
``head_bias``: ``"train_mean"`` starts the head of every regression and depth task at the mean of its
training targets (:attr:`mtlutils.tasks.Task.output_bias`), ``"zero"`` (default) at 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch.utils.data import Dataset, Subset

from ..tasks import TASKS, Task, seg_task, with_output_bias

Built = tuple[Dataset, Dataset, list[Task]]
HEAD_BIAS = ("zero", "train_mean")


def _pick(available: Mapping[str, Task], names: Any, kind: str) -> list[Task]:
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"data kind {kind!r} has no task(s) {unknown}; valid choices: {sorted(available)}")
    return [available[n] for n in names]


def _scenes(opts: Mapping[str, Any]) -> Built:
    from .scenes import make_scenes

    classes = int(opts.get("classes", 7))
    common = dict(size=tuple(opts.get("size", (64, 64))), classes=classes, seed=int(opts.get("data_seed", 0)),
                  invalid=float(opts.get("invalid", 0.0)))
    train = make_scenes(int(opts.get("n_train", 800)), split="train", **common)
    val = make_scenes(int(opts.get("n_val", 200)), split="val", **common)
    tasks = {"seg": seg_task(classes), "depth": TASKS["depth"], "normal": TASKS["normal"]}
    return train, val, _pick(tasks, opts.get("tasks", ["seg", "depth", "normal"]), "scenes")


_MULTIDIGITS_OWN = ("size", "digit_size", "noise", "targets")


def _multidigits(opts: Mapping[str, Any]) -> Built:
    from .multidigits import multidigits

    seed = int(opts.get("data_seed", 0))
    extra = {k: (tuple(v) if isinstance(v, list) else v) for k, v in opts.items() if k in _MULTIDIGITS_OWN}
    train = multidigits("train", n=int(opts.get("n_train", 2000)), seed=seed, **extra)
    val = multidigits("test", n=int(opts.get("n_val", 1000)), seed=seed + 1000, **extra)
    return train, val, _pick(TASKS, opts.get("tasks", ["left", "right"]), "multidigits")


def _size(opts: Mapping[str, Any]) -> tuple[int, int] | None:
    return tuple(opts["size"]) if opts.get("size") else None


def _nyuv2(opts: Mapping[str, Any]) -> Built:
    from .real import NYUv2

    tasks = {"seg": seg_task(13), "depth": TASKS["depth"], "normal": TASKS["normal"]}
    return (NYUv2(opts.get("root"), "train", _size(opts)), NYUv2(opts.get("root"), "val", _size(opts)),
            _pick(tasks, opts.get("tasks", ["seg", "depth", "normal"]), "nyuv2"))


def _cityscapes(opts: Mapping[str, Any]) -> Built:
    from .real import CityScapes

    classes = int(opts.get("classes", 7))
    tasks = {"seg": seg_task(classes), "depth": TASKS["depth"]}
    return (CityScapes(opts.get("root"), "train", classes, _size(opts)),
            CityScapes(opts.get("root"), "val", classes, _size(opts)),
            _pick(tasks, opts.get("tasks", ["seg", "depth"]), "cityscapes"))


def _utkface(opts: Mapping[str, Any]) -> Built:
    from .real import UTKFace

    size = tuple(opts.get("size", (64, 64)))
    train: Dataset = UTKFace(opts.get("root"), "train", size)
    if opts.get("n_train"):  # limited-data runs: the first n of the fixed training split
        train = Subset(train, range(min(len(train), int(opts["n_train"]))))
    return (train, UTKFace(opts.get("root"), "test", size),
            _pick(TASKS, opts.get("tasks", ["age", "gender"]), "utkface"))


@dataclass(frozen=True)
class DataKind:
    """A builder and the options (besides ``kind``, ``tasks``, ``head_bias``) its section may set, with
    their types (see :mod:`mtlutils.experiments.config`)."""

    build: Callable[[Mapping[str, Any]], Built]
    options: Mapping[str, str]


_COMMON = {"n_train": "int>=0", "n_val": "int>=1", "data_seed": "int>=0"}
DATA_KINDS: dict[str, DataKind] = {
    "scenes": DataKind(_scenes, {**_COMMON, "classes": "int>=2", "size": "size", "invalid": "fraction"}),
    "multidigits": DataKind(_multidigits, {**_COMMON, "size": "size", "digit_size": "int>=1", "noise": "num>=0",
                                           "targets": "strings"}),
    "nyuv2": DataKind(_nyuv2, {"size": "size", "root": "str"}),
    "cityscapes": DataKind(_cityscapes, {"size": "size", "root": "str", "classes": "int>=2"}),
    "utkface": DataKind(_utkface, {"size": "size", "root": "str", "n_train": "int>=0"}),
}


def target_mean(dataset: Dataset, task: Task) -> float:
    """Mean training target of a regression or depth task (depth: over valid pixels, target != 0).

    In-memory data sets (``targets`` attribute) are read directly; others sample by sample."""
    def valid(t: torch.Tensor) -> torch.Tensor:
        t = t.double().reshape(-1)
        return t[t != 0] if task.kind == "depth" else t

    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    targets = getattr(base, "targets", None)
    if isinstance(targets, Mapping) and task.name in targets:
        t = targets[task.name]
        values = valid(t[list(dataset.indices)] if isinstance(dataset, Subset) else t)
        total, count = float(values.sum()), values.numel()
    else:
        total, count = 0.0, 0
        for i in range(len(dataset)):
            values = valid(torch.as_tensor(dataset[i][task.name]))
            total, count = total + float(values.sum()), count + values.numel()
    if count == 0:
        raise ValueError(f"no valid training target for task {task.name!r}: cannot take its mean")
    return total / count


def build_data(opts: Mapping[str, Any]) -> Built:
    """``(train set, evaluation set, tasks)`` for a ``[data.<name>]`` section (``kind`` and options)."""
    kind = opts.get("kind")
    if kind not in DATA_KINDS:
        raise ValueError(f"unknown data kind {kind!r}; valid choices: {sorted(DATA_KINDS)}")
    train, val, tasks = DATA_KINDS[kind].build(opts)
    head_bias = opts.get("head_bias", "zero")
    if head_bias not in HEAD_BIAS:
        raise ValueError(f"head_bias must be one of {HEAD_BIAS}, got {head_bias!r}")
    if head_bias == "train_mean":
        tasks = [with_output_bias(t, target_mean(train, t)) if t.kind in ("regress", "depth") else t
                 for t in tasks]
    return train, val, tasks


def input_channels(dataset: Dataset) -> int:
    """Channels of the images of ``dataset`` (its ``in_channels`` or ``images`` if it has them)."""
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    if isinstance(getattr(base, "in_channels", None), int):
        return base.in_channels
    images = getattr(base, "images", None)
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        return int(images.shape[1])
    return int(dataset[0]["image"].shape[0])
