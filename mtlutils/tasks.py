"""Task specifications: what a model must predict for a task, how it is scored and how it is evaluated.

A :class:`Task` ties together a name (also the key of the target in a data sample), a kind, the number
of output channels, the training loss and the set of evaluation metrics. Architectures build one head
per task from ``out_channels``; the training loop calls :meth:`Task.loss`; evaluation calls
:meth:`Task.new_metrics`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F

from . import metrics as M
from .metrics import Metric

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _class_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits ``(N, C)`` against integer labels ``(N,)``."""
    return F.cross_entropy(pred, target.long())


def _regress_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 (mean absolute error) between predictions ``(N, 1)`` and targets ``(N,)`` or ``(N, 1)``."""
    return F.l1_loss(pred.reshape(-1), target.reshape(-1).to(pred.dtype))


def _seg_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel-wise negative log-likelihood of log-probabilities ``(N, C, H, W)``; label -1 (void) ignored."""
    if (target >= 0).any():
        return F.nll_loss(pred, target.long(), ignore_index=-1)
    return pred.sum() * 0.0  # an all-void batch: no signal, but a valid graph


def _depth_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 over valid pixels (target != 0), as the MTAN reference code."""
    valid = target != 0
    if not valid.any():
        return pred.sum() * 0.0
    return (pred - target).abs()[valid].mean()


def _normal_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − mean cosine between unit predictions and targets ``(N, 3, H, W)`` over valid pixels
    (target not all-zero). The MTAN paper writes −mean dot product: same gradient, non-negative value."""
    valid = target.abs().sum(dim=1) > 0
    if not valid.any():
        return pred.sum() * 0.0
    return 1.0 - (pred * target).sum(dim=1)[valid].mean()


@dataclass(frozen=True)
class Kind:
    """Everything the package knows about one kind of task, in one place (the table :data:`KINDS`).

    ``loss`` (prediction, target) -> scalar; ``metrics`` (task) -> a fresh streaming metric; ``activation``
    applied by the head; ``image_level`` (one prediction per image) or dense (one per pixel);
    ``labels``: the target is class labels (classification: at least 2 outputs, uncertainty weighting's
    ``1/σ²`` form); ``channels``: the fixed number of head outputs, or None when the task sets it (classes,
    regression dimensions); ``constant``: the best constant predictor (the floor of
    :mod:`mtlutils.baselines`): ``"majority"`` label, ``"median"`` target or ``"mean_direction"``;
    ``invalid``: what marks a target element as missing (``None``: nothing does).
    """

    loss: Loss
    metrics: Callable[["Task"], Metric]
    activation: Callable[[torch.Tensor], torch.Tensor]
    image_level: bool
    labels: bool
    channels: int | None
    constant: str
    invalid: str | None = None

    @property
    def regression(self) -> bool:
        """A scalar target whose head may start at the training mean (:attr:`Task.output_bias`)."""
        return not self.labels and self.channels in (None, 1) and self.constant == "median"


KINDS: dict[str, Kind] = {
    "class": Kind(_class_loss, lambda task: M.ClassMetrics(), lambda x: x, image_level=True, labels=True,
                  channels=None, constant="majority"),
    "regress": Kind(_regress_loss, lambda task: M.RegressMetrics(), lambda x: x, image_level=True, labels=False,
                    channels=None, constant="median"),
    "seg": Kind(_seg_loss, lambda task: M.SegMetrics(task.out_channels), lambda x: F.log_softmax(x, dim=1),
                image_level=False, labels=True, channels=None, constant="majority", invalid="label -1"),
    "depth": Kind(_depth_loss, lambda task: M.DepthMetrics(), lambda x: x, image_level=False, labels=False,
                  channels=1, constant="median", invalid="depth 0"),
    "normal": Kind(_normal_loss, lambda task: M.NormalMetrics(), lambda x: F.normalize(x, p=2, dim=1),
                   image_level=False, labels=False, channels=3, constant="mean_direction",
                   invalid="all-zero normal"),
}
IMAGE_LEVEL_KINDS = tuple(k for k, v in KINDS.items() if v.image_level)
DENSE_KINDS = tuple(k for k, v in KINDS.items() if not v.image_level)


@dataclass(frozen=True)
class Task:
    """One task of a multi-task problem.

    Args:
        name: the task's name, also the key of its target in each data sample.
        kind: one of :data:`KINDS`: ``"class"`` (classification), ``"regress"`` (scalar regression),
            ``"seg"`` (per-pixel classes, label -1 = void), ``"depth"`` (per-pixel depth, 0 = invalid),
            ``"normal"`` (per-pixel unit normal, all-zero = invalid).
        out_channels: outputs of the task's head (classes for ``class``/``seg``, 1 for ``regress``/
            ``depth``, 3 for ``normal``).
        output_bias: the initial bias of the head's last layer for a ``regress`` or ``depth`` task
            (``None``: 0, the usual initialisation). Set to the training targets' mean, a network starts
            by predicting that mean instead of 0, and a short run does not spend its first steps learning
            an offset (depth in metres has a mean of several metres; see chapter 2).
    """

    name: str
    kind: str
    out_channels: int
    output_bias: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown task kind {self.kind!r} for task {self.name!r}; "
                             f"expected one of {sorted(KINDS)}")
        if self.out_channels < 1:
            raise ValueError(f"task {self.name!r}: out_channels must be >= 1, got {self.out_channels}")
        kind = KINDS[self.kind]
        if kind.labels and self.out_channels < 2:
            raise ValueError(f"task {self.name!r}: a classification task needs >= 2 classes")
        if self.output_bias is not None and (not kind.regression or not math.isfinite(self.output_bias)):
            raise ValueError(f"task {self.name!r}: output_bias is for regress/depth tasks and must be finite, "
                             f"got {self.output_bias!r} for kind {self.kind!r}")
        fixed = kind.channels
        if fixed is not None and self.out_channels != fixed:
            raise ValueError(f"task {self.name!r} of kind {self.kind!r} has {fixed} output channel(s), "
                             f"got {self.out_channels}")

    @property
    def image_level(self) -> bool:
        """True for tasks with one prediction per image (as opposed to one per pixel)."""
        return KINDS[self.kind].image_level

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The task's training loss (a scalar tensor), unweighted."""
        return KINDS[self.kind].loss(pred, target)

    def new_metrics(self) -> Metric:
        """A fresh streaming metric object for this task."""
        return KINDS[self.kind].metrics(self)

    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        """The output activation applied by a model's head: identity for logits and scalars,
        log-softmax over classes for ``seg``, L2 normalisation for ``normal``."""
        return KINDS[self.kind].activation(raw)


def as_task_dict(tasks: "dict[str, Task] | list[Task] | tuple[Task, ...]") -> dict[str, Task]:
    """Normalise a list or dict of tasks to an ordered ``{name: Task}`` dict, checking names."""
    if isinstance(tasks, dict):
        items = list(tasks.values())
    elif isinstance(tasks, (list, tuple)):
        items = list(tasks)
    else:
        raise TypeError(f"tasks must be a list or dict of Task, got {type(tasks).__name__}")
    if not items:
        raise ValueError("at least one task is needed")
    out: dict[str, Task] = {}
    for task in items:
        if not isinstance(task, Task):
            raise TypeError(f"expected Task objects, got {type(task).__name__}")
        if task.name in out:
            raise ValueError(f"two tasks are named {task.name!r}")
        out[task.name] = task
    return out


# The ready-made tasks of the embedded data sets.
TASKS: dict[str, Task] = {
    "left": Task("left", "class", 10),    # MultiDigits: the left digit
    "right": Task("right", "class", 10),  # MultiDigits: the right digit
    "sum": Task("sum", "regress", 1),     # MultiDigits: (left + right) / 18 (targets=("sum", ...))
    "depth": Task("depth", "depth", 1),   # scenes, NYUv2 (metres), CityScapes (inverse depth)
    "normal": Task("normal", "normal", 3),  # scenes, NYUv2
    "age": Task("age", "regress", 1),     # UTKFace: age / 100
    "gender": Task("gender", "class", 2),  # UTKFace
}


def with_output_bias(task: Task, bias: float) -> Task:
    """``task`` whose head starts at ``bias`` (see :attr:`Task.output_bias`)."""
    return replace(task, output_bias=float(bias))


def seg_task(classes: int, name: str = "seg") -> Task:
    """The semantic segmentation task with ``classes`` classes (13 for NYUv2, 7 or 19 for CityScapes)."""
    return Task(name, "seg", classes)
