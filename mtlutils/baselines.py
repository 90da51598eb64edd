"""The best predictions that ignore the image: the floor that a trained network has to clear.

For each task kind, the constant that is optimal (or nearly) for its metric on the training targets:

* ``class`` / ``seg``: the most frequent label (void, -1, excluded): the best constant for accuracy;
* ``regress`` / ``depth``: the median target (invalid depth, 0, excluded): the constant that minimises
  the L1 error, the training loss of these tasks;
* ``normal``: the mean of the valid unit normals, normalised: the constant that maximises the summed
  cosine, the training objective of the normal task.

Without a floor, "the network learned depth" means little: on the scenes, a constant depth already has a
sizeable absolute error, and a majority-class map a sizeable pixel accuracy.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from .tasks import KINDS, Task, as_task_dict


def constant_prediction(task: Task, train_target: torch.Tensor) -> torch.Tensor:
    """The constant for ``task`` fitted on all its training targets: a label (``class``/``seg``), a
    scalar (``regress``/``depth``) or a unit 3-vector (``normal``)."""
    rule = KINDS[task.kind].constant
    if rule == "majority":
        labels = train_target[train_target >= 0].long()
        if labels.numel() == 0:
            raise ValueError(f"task {task.name!r}: no valid training label")
        return torch.bincount(labels, minlength=task.out_channels).argmax()
    if rule == "median":
        values = train_target.reshape(-1).double()
        if KINDS[task.kind].invalid is not None:   # depth: 0 marks a missing value
            values = values[values != 0]
        if values.numel() == 0:
            raise ValueError(f"task {task.name!r}: no valid training target")
        return values.median()
    if rule == "mean_direction":
        if train_target.dim() != 4 or train_target.shape[1] != 3:
            raise ValueError(f"task {task.name!r}: normals must be (N, 3, H, W), got {tuple(train_target.shape)}")
        mean = train_target.double().sum(dim=(0, 2, 3))   # invalid pixels are all-zero: they add nothing
        return torch.nn.functional.normalize(mean, dim=0)
    raise ValueError(f"task {task.name!r}: no constant predictor for kind {task.kind!r}")


def _broadcast(task: Task, constant: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The constant shaped as the metric of ``task`` expects its predictions for ``target``."""
    kind = KINDS[task.kind]
    if kind.labels and kind.image_level:   # one-hot logits (N, C)
        logits = torch.zeros(len(target), task.out_channels)
        logits[:, int(constant)] = 1.0
        return logits
    if kind.labels:                        # label maps (N, H, W)
        return torch.full_like(target, int(constant))
    if kind.channels == 3:                 # one unit vector everywhere
        return constant.float().view(1, 3, 1, 1).expand_as(target)
    return torch.full(target.shape, float(constant))


def constant_predictor_scores(tasks: Sequence[Task] | Mapping[str, Task],
                              train_targets: Mapping[str, torch.Tensor],
                              eval_targets: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Metrics (``"<task>/<metric>"``, as :func:`mtlutils.evaluate`) of the constant predictor of every task,
    fitted on ``train_targets`` and scored on ``eval_targets`` (full target tensors, e.g. the
    ``targets`` of a generated data set)."""
    scores: dict[str, float] = {}
    for name, task in as_task_dict(tasks).items():
        if name not in train_targets or name not in eval_targets:
            raise KeyError(f"no targets for task {name!r}; have {sorted(train_targets)} / {sorted(eval_targets)}")
        constant = constant_prediction(task, train_targets[name])
        metric = task.new_metrics()
        metric.update(_broadcast(task, constant, eval_targets[name]), eval_targets[name])
        scores.update({f"{name}/{k}": v for k, v in metric.compute().items()})
    return scores
