"""The parameter table: every architecture's size relative to one single-task SegNet, beside the
MTAN paper's #P column (Liu et al. 2019, the NYUv2 and CityScapes result tables; chapter 4).

Models are built on PyTorch's ``meta`` device, so counting the ~100M parameters of the largest ones
allocates no memory and takes well under a second.
"""
from __future__ import annotations

import torch

from ..tasks import TASKS, Task, seg_task
from . import ARCHS, count_parameters, create

# parameters of one 13-class single-task SegNet: the denominator of the #P column
SEGNET_13 = 24_981_069

SETTINGS: dict[str, list[Task]] = {
    "NYUv2": [seg_task(13), TASKS["depth"], TASKS["normal"]],
    "CityScapes": [seg_task(7), TASKS["depth"]],
}

# the paper's #P per setting; architectures added by later chapters extend this dict
PAPER_P: dict[str, dict[str, float]] = {
    "single": {"NYUv2": 3.0, "CityScapes": 2.0},
    "split_wide": {"NYUv2": 1.75, "CityScapes": 1.75},
    "split_deep": {"NYUv2": 2.0, "CityScapes": 2.0},
    "dense": {"NYUv2": 4.95, "CityScapes": 3.63},
    "cross_stitch": {"NYUv2": 3.0, "CityScapes": 2.0},
    "mtan": {"NYUv2": 1.77, "CityScapes": 1.65},
    "stan": {"NYUv2": 4.56, "CityScapes": 3.04},  # one STAN per task, like "single"
}


def count_on_meta(arch: str, tasks: list[Task], **kwargs) -> int:
    """Trainable parameters of ``create(arch, tasks, **kwargs)``, built without allocating memory."""
    with torch.device("meta"):
        return count_parameters(create(arch, tasks, **kwargs))


def parameter_table(archs: list[str] | None = None):
    """A pandas DataFrame: per architecture and setting, the parameters, the ratio to one single-task
    13-class SegNet, the paper's #P and the relative difference in %."""
    import pandas as pd

    rows = []
    for arch in archs or [a for a in ARCHS]:
        for setting, tasks in SETTINGS.items():
            n = count_on_meta(arch, tasks)
            paper = PAPER_P.get(arch, {}).get(setting)
            ratio = n / SEGNET_13
            rows.append({"architecture": arch, "setting": setting, "parameters": n, "ratio": round(ratio, 3),
                         "paper #P": paper,
                         "difference %": None if paper is None else round(100 * (ratio / paper - 1), 2)})
    return pd.DataFrame(rows)
