"""Task weightings: how the per-task losses, or their gradients, become one update.

* loss-level (:mod:`~mtlutils.weighting.loss_level`): ``equal``, ``uncertainty`` (Kendall et al. 2018),
  ``dwa`` (Dynamic Weight Average, MTAN paper Eq. 7), ``rlw`` (random loss weighting, Lin et al. 2022);
* gradient-level (:mod:`~mtlutils.weighting.gradient_level`): ``mgda`` (MGDA-UB, Sener & Koltun 2018),
  ``pcgrad`` (Yu et al. 2020), ``cagrad`` (Liu et al. 2021), ``gradnorm`` (Chen et al. 2018).

How the training loop talks to each kind: :mod:`~mtlutils.weighting.base`. ``create(name, tasks, **kw)``
builds one by name; an unknown name lists the valid choices.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from ..tasks import Task
from . import solvers
from .base import GradientWeighting, Weighting
from .gradient_level import CAGrad, GradNorm, MGDA, PCGrad
from .loss_level import (CLASSIFICATION_KINDS, DWA, REGRESSION_KINDS, EqualWeighting, RandomLossWeighting,
                         UncertaintyWeighting, dwa_weights)

__all__ = ["Weighting", "GradientWeighting", "EqualWeighting", "UncertaintyWeighting", "DWA", "dwa_weights",
           "RandomLossWeighting", "MGDA", "PCGrad", "CAGrad", "GradNorm", "WEIGHTINGS", "create", "solvers",
           "REGRESSION_KINDS", "CLASSIFICATION_KINDS"]

WEIGHTINGS: dict[str, type[Weighting]] = {
    "equal": EqualWeighting, "uncertainty": UncertaintyWeighting, "dwa": DWA, "rlw": RandomLossWeighting,
    "mgda": MGDA, "pcgrad": PCGrad, "cagrad": CAGrad, "gradnorm": GradNorm,
}


def create(name: str, tasks: "Mapping[str, Task] | Iterable[Task] | Iterable[str]", **kwargs) -> Weighting:
    """Build the weighting called ``name`` (one of :data:`WEIGHTINGS`) for the given tasks.

    ``tasks`` may be names or :class:`~mtlutils.tasks.Task` objects; a weighting that needs more than the
    names (``accepts_tasks = True``, e.g. the per-kind uncertainty form) receives the objects.
    """
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; valid choices: {sorted(WEIGHTINGS)}")
    if isinstance(tasks, Mapping):
        items = [task if isinstance(task, Task) else name for name, task in tasks.items()]
    else:
        items = list(tasks)
    if getattr(WEIGHTINGS[name], "accepts_tasks", False):
        return WEIGHTINGS[name](items, **kwargs)
    names = [t.name if isinstance(t, Task) else str(t) for t in items]
    return WEIGHTINGS[name](names, **kwargs)
