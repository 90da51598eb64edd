"""Where things live: the repository (if the package runs from a checkout of it), data, results and
checkpoints.

An editable install (``pip install -e .``, what ``make`` does) runs the package from the repository, and
the folders default to the repository's ``data/``, ``results/`` and ``checkpoints/``. An ordinary install
runs it from ``site-packages``, which is no place for data: there the folders default to the current
working directory. The environment variables ``MTL_DATA``, ``MTL_RESULTS`` and ``MTL_CHECKPOINTS`` override
either.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def repository_root() -> Path | None:
    """The repository checkout the package runs from (the folder holding ``pyproject.toml`` and
    ``mtlutils/``), or None for an installed copy."""
    root = PACKAGE.parent
    return root if (root / "pyproject.toml").is_file() and (root / "experiments").is_dir() else None


def _base() -> Path:
    return repository_root() or Path.cwd()


def _env_or(variable: str, default: Path) -> Path:
    value = os.environ.get(variable)
    return Path(value).expanduser() if value else default


def data_root() -> Path:
    """``$MTL_DATA`` if set, else ``data/`` of the repository (or of the working directory)."""
    return _env_or("MTL_DATA", _base() / "data")


def results_root() -> Path:
    """``$MTL_RESULTS`` if set, else ``results/`` of the repository (or of the working directory)."""
    return _env_or("MTL_RESULTS", _base() / "results")


def checkpoints_root() -> Path:
    """``$MTL_CHECKPOINTS`` if set, else ``checkpoints/`` of the repository (or of the working directory)."""
    return _env_or("MTL_CHECKPOINTS", _base() / "checkpoints")
