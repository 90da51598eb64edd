"""Run-time configuration: the profile, the device and seeding.

The profile (environment variable ``MTL_PROFILE``) sets sizes and step counts, never the algorithm:

* ``quick``: tests and CI (nbval); the shortest runs (a few minutes per chapter on 2 CPU cores).
* ``full``: the default of the rendered book on a CPU; minutes per chapter.
* ``paper``: the papers' settings on the real datasets (meant for a GPU).
"""
from __future__ import annotations

import os
import random
from typing import Any, TypeVar

import numpy as np
import torch

PROFILES = ("quick", "full", "paper")
T = TypeVar("T")


def _read_profile() -> str:
    value = os.environ.get("MTL_PROFILE", "full").strip().lower()
    if value not in PROFILES:
        raise ValueError(f"MTL_PROFILE={value!r} is not a profile; expected one of {PROFILES}")
    return value


PROFILE: str = _read_profile()


def by_profile(quick: T, full: T, paper: T | None = None, profile: str | None = None) -> T:
    """Pick the value for the active profile (``paper`` falls back to ``full`` when not given).

    >>> by_profile(quick=2, full=20, profile="quick")
    2
    """
    profile = profile or PROFILE
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    if profile == "quick":
        return quick
    if profile == "paper" and paper is not None:
        return paper
    return full


def get_device(prefer: str | None = None) -> torch.device:
    """The device to train on: CUDA if present, else Apple MPS, else the CPU.

    ``prefer`` (or the environment variable ``MTL_DEVICE``) forces one, e.g. ``"cpu"``.
    """
    prefer = prefer or os.environ.get("MTL_DEVICE")
    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and PyTorch (all devices); with ``deterministic`` ask for deterministic kernels.

    On a CPU the same seed then gives bit-identical runs. On a GPU a few kernels have no deterministic
    form; PyTorch warns about them instead of failing (``warn_only=True``). Deterministic mode would also
    fill every new tensor's memory with NaN before a kernel writes it (a check for kernels that read
    memory they never wrote); that fill costs about a tenth of a CPU training step and changes no result
    (the same numbers with and without it: ``tests/test_config.py``), so it is switched off.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this workspace setting to be deterministic; harmless elsewhere.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def describe_environment() -> dict[str, Any]:
    """Versions, device, profile and threads, for the top of a chapter (the result files record more:
    :func:`mtlutils.provenance.fingerprint`)."""
    from .provenance import versions

    device = get_device()
    info: dict[str, Any] = {**versions(), "device": str(device), "profile": PROFILE,
                            "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
