"""Task specifications: what a model must predict for a task, how it is scored and how it is evaluated.

A :class:`Task` ties together a name (also the key of the target in a data sample), a kind, the number
of output channels, the training loss and the set of evaluation metrics. Architectures build one head
per task from ``out_channels``; the training loop calls :meth:`Task.loss`; evaluation calls
:meth:`Task.new_metrics`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .metrics import ClassMetrics, Metric, RegressMetrics

# kind -> (image-level?, loss, metric factory). Dense kinds (seg, depth, normal) join with the
# dense-prediction chapter.
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _class_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits ``(N, C)`` against integer labels ``(N,)``."""
    return F.cross_entropy(pred, target.long())


def _regress_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 (mean absolute error) between predictions ``(N, 1)`` and targets ``(N,)`` or ``(N, 1)``."""
    return F.l1_loss(pred.reshape(-1), target.reshape(-1).to(pred.dtype))


KINDS: dict[str, tuple[Loss, Callable[[], Metric]]] = {
    "class": (_class_loss, ClassMetrics),
    "regress": (_regress_loss, RegressMetrics),
}
IMAGE_LEVEL_KINDS = ("class", "regress")


@dataclass(frozen=True)
class Task:
    """One task of a multi-task problem.

    Args:
        name: the task's name, also the key of its target in each data sample.
        kind: one of :data:`KINDS` (``"class"``: classification, ``"regress"``: scalar regression).
        out_channels: outputs of the task's head (classes for ``class``, 1 for ``regress``).
    """

    name: str
    kind: str
    out_channels: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown task kind {self.kind!r} for task {self.name!r}; "
                             f"expected one of {sorted(KINDS)}")
        if self.out_channels < 1:
            raise ValueError(f"task {self.name!r}: out_channels must be >= 1, got {self.out_channels}")
        if self.kind == "class" and self.out_channels < 2:
            raise ValueError(f"task {self.name!r}: a classification task needs >= 2 classes")

    @property
    def image_level(self) -> bool:
        """True for tasks with one prediction per image (as opposed to one per pixel)."""
        return self.kind in IMAGE_LEVEL_KINDS

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The task's training loss (a scalar tensor), unweighted."""
        return KINDS[self.kind][0](pred, target)

    def new_metrics(self) -> Metric:
        """A fresh streaming metric object for this task."""
        return KINDS[self.kind][1]()

    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        """The output activation applied by a model's head (identity for logits and scalars)."""
        return raw


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
}
