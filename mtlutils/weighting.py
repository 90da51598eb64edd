"""Loss weightings: how the per-task losses become one training loss, ``L = Σ_t λ_t L_t``.

A weighting sees only the per-task losses (design.md §4), so any architecture works with any
weighting. The training loop talks to it through three calls:

* :meth:`Weighting.combine` every step: unweighted task losses -> total loss (differentiable);
* :meth:`Weighting.end_epoch` after every epoch: the epoch-mean **unweighted** training loss of each
  task (what Dynamic Weight Average needs);
* :meth:`Weighting.weights` for the History: the current λ_t as floats.

A weighting is an ``nn.Module``: one with learnable parameters (uncertainty weighting's
log-variances) exposes them through ``parameters()`` and the loop adds them to the optimiser; its
state (parameters, buffers and ``get_extra_state``) is saved in every checkpoint.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn

from .tasks import Task


class Weighting(nn.Module):
    """Base class of loss weightings. Subclasses override :meth:`combine` and, if needed, the rest."""

    def __init__(self, task_names: Iterable[str]) -> None:
        super().__init__()
        self.task_names: list[str] = list(task_names)
        if not self.task_names:
            raise ValueError("a weighting needs at least one task")

    def _check(self, losses: Mapping[str, torch.Tensor]) -> None:
        if set(losses) != set(self.task_names):
            raise KeyError(f"weighting expects losses for tasks {self.task_names}, got {sorted(losses)}")

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The total loss from the unweighted per-task losses."""
        raise NotImplementedError(f"{type(self).__name__} must implement combine()")

    def weights(self) -> dict[str, float]:
        """The current task weights λ_t (for the History and plots)."""
        raise NotImplementedError(f"{type(self).__name__} must implement weights()")

    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        """Called after each training epoch with the epoch-mean unweighted loss of every task."""


class EqualWeighting(Weighting):
    """λ_t = 1 for every task: ``L = Σ_t L_t`` (the "equal" rows of the MTAN tables)."""

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self._check(losses)
        return torch.stack([losses[name] for name in self.task_names]).sum()

    def weights(self) -> dict[str, float]:
        return {name: 1.0 for name in self.task_names}


WEIGHTINGS: dict[str, type[Weighting]] = {"equal": EqualWeighting}


def create(name: str, tasks: "Mapping[str, Task] | Iterable[Task] | Iterable[str]", **kwargs) -> Weighting:
    """Build the weighting called ``name`` (one of :data:`WEIGHTINGS`) for the given tasks."""
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; valid choices: {sorted(WEIGHTINGS)}")
    if isinstance(tasks, Mapping):
        names = list(tasks)
    else:
        names = [t.name if isinstance(t, Task) else str(t) for t in tasks]
    return WEIGHTINGS[name](names, **kwargs)
