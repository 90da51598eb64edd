"""mtlutils: the shared package of mtl-book.

Each chapter of the book derives a method from its paper's equations, implements it from scratch, then
switches to the version kept here. Modules (design.md §3):

``config`` profile, device, seeding · ``data`` data sets (dict samples) · ``tasks`` task specs ·
``models`` architectures (``create``) · ``layers`` the papers' building blocks · ``weighting`` loss weightings · ``metrics`` streaming metrics ·
``train`` the training loop (``fit``) · ``plots`` figures · ``checks`` coursework self-checks ·
``progress`` progress bars for terminal and book · ``baselines`` the constant predictor (the floor).
``experiments`` (not imported here) runs the reproduction grids.
"""
from . import baselines, checks, config, data, layers, metrics, models, plots, provenance, tasks, train, weighting
from .config import PROFILE, by_profile, get_device, seed_everything
from .tasks import TASKS, Task
from .train import History, evaluate, fit

__version__ = "0.1.0"

__all__ = ["baselines", "checks", "plots", "provenance", "config", "data", "layers", "metrics", "models", "tasks", "train", "weighting", "PROFILE", "by_profile",
           "get_device", "seed_everything", "Task", "TASKS", "History", "fit", "evaluate", "__version__"]
