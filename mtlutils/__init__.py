"""mtlutils: the shared package of mtl-book.

Each chapter of the book derives a method from its paper's equations, implements it from scratch, then
switches to the version kept here. Modules:

``config`` profile, device, seeding · ``data`` data sets (dict samples) · ``tasks`` task specs and the
table of task kinds · ``models`` architectures (``create``) · ``layers`` the papers' building blocks ·
``weighting`` loss- and gradient-level weightings · ``metrics`` streaming metrics · ``train`` the training
loop (``fit``) · ``precision`` mixed precision · ``provenance`` what a result depends on · ``progress``
progress bars · ``baselines`` the constant predictor (the floor) · ``fileio`` atomic writes and locks.

Loaded on first use (they pull in pandas, matplotlib or seaborn, which a training process does not need):
``plots`` figures · ``checks`` coursework self-checks · ``tables`` cross-run tables · ``experiments`` the
reproduction grids · ``assignments`` the student notebooks. The repository's ``docs/ARCHITECTURE.md``
describes how the parts fit together.
"""
from __future__ import annotations

import importlib
from typing import Any

from . import baselines, config, data, layers, metrics, models, precision, provenance, tasks, train, weighting
from .config import PROFILE, by_profile, get_device, seed_everything
from .tasks import TASKS, Task
from .train import History, evaluate, fit

__version__ = "0.1.0"
_LAZY = ("plots", "checks", "tables", "experiments", "assignments", "timing")

__all__ = ["baselines", "checks", "plots", "tables", "experiments", "precision", "provenance", "config", "data",
           "layers", "metrics", "models", "tasks", "timing", "train", "weighting", "PROFILE", "by_profile", "get_device",
           "seed_everything", "Task", "TASKS", "History", "fit", "evaluate", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'mtlutils' has no attribute {name!r}")
