"""Model zoo: ``create(arch, tasks, **kw)`` builds a multi-task network whose forward returns
``{task name: prediction}``.

Architectures (:data:`ARCHS`) are separate from backbones (:data:`BACKBONES`): the small VGG-style
backbone for image-level tasks (``backbone="vgg"``) and SegNet for dense tasks (``backbone="segnet"``),
chosen from the task kinds by default. What a backbone's trunk must provide, and the optional
capabilities some architectures need, is written in :mod:`mtlutils.models.contract`; the layers both
backbones are made of are in :mod:`mtlutils.models.blocks`. ``python -m mtlutils.models --params``
prints the parameter table of the MTAN paper's #P column.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Iterable, Mapping

from torch import nn

from ..tasks import Task, as_task_dict
from .blocks import check_width
from .contract import Trunk
from .cross_stitch import CrossStitchNetwork
from .multitask import DenseNetwork, HardSharedNetwork, MultiTaskModel, SingleTaskNetworks
from .mtan import MTAN, STAN
from .segnet import DenseHead, SegNetTrunk
from .sfg import SFGNetwork
from .vgg import DEFAULT_STAGES, MLPHead, VGGTrunk

__all__ = ["ARCHS", "LABELS", "BACKBONES", "create", "count_parameters", "width_for_budget", "MultiTaskModel", "Trunk"]


def _vgg_parts(in_channels: int = 1, width: float = 1.0, stages=None, pool=(2, 2), hidden: int = 64,
               wide: bool = False, deep: bool = False):
    stages = [tuple(st) for st in (stages or DEFAULT_STAGES)]
    if wide:  # last stage twice as wide
        stages[-1] = (2 * stages[-1][0], stages[-1][1])
    if deep:  # every conv doubled
        stages = [(c, 2 * n) for c, n in stages]
    make_trunk = partial(VGGTrunk, in_channels=in_channels, width=width, pool=pool, stages=stages)
    make_head = partial(MLPHead, hidden=hidden)
    return make_trunk, make_head


def _segnet_parts(in_channels: int = 3, width: float = 1.0, wide: bool = False, deep: bool = False):
    make_trunk = partial(SegNetTrunk, in_channels=in_channels, width=width, wide=wide, deep=deep)
    return make_trunk, DenseHead


# backbone name -> function(**kw) -> (trunk factory, head factory)
BACKBONES: dict[str, Callable[..., tuple[Callable[..., nn.Module], Callable[[int, Task], nn.Module]]]] = {
    "vgg": _vgg_parts,
    "segnet": _segnet_parts,
}

# architecture name -> (model class taking (tasks, make_trunk, make_head, **OPTIONS), backbone options it implies)
ARCHS: dict[str, tuple[type[MultiTaskModel], dict[str, Any]]] = {
    "single": (SingleTaskNetworks, {}),           # one network per task (One Task)
    "split": (HardSharedNetwork, {}),             # hard sharing: shared trunk, task heads
    "split_wide": (HardSharedNetwork, {"wide": True}),  # Split-Wide: last stage twice as wide
    "split_deep": (HardSharedNetwork, {"deep": True}),  # Split-Deep: every conv unit doubled
    "dense": (DenseNetwork, {}),                  # Dense: shared net + task nets reading its features
    "cross_stitch": (CrossStitchNetwork, {}),     # Cross-Stitch: task nets mixed by learned alpha units
    "mtan": (MTAN, {}),                           # MTAN: shared net + per-task attention networks
    "stan": (STAN, {}),                           # STAN: one single-task MTAN per task
    "sfg": (SFGNetwork, {}),                      # Stochastic Filter Groups: learned kernel grouping
}

# How tables and plots name each architecture (the papers' names; "single" is one network per task).
LABELS: dict[str, str] = {
    "single": "single-task", "split": "Split", "split_wide": "Split-Wide", "split_deep": "Split-Deep",
    "dense": "Dense", "cross_stitch": "Cross-Stitch", "mtan": "MTAN", "stan": "STAN", "sfg": "SFG",
}


def _default_backbone(tasks: Mapping[str, Task]) -> str:
    if all(t.image_level for t in tasks.values()):
        return "vgg"
    if not any(t.image_level for t in tasks.values()):
        return "segnet"
    raise ValueError(f"tasks mix image-level and dense kinds {sorted({t.kind for t in tasks.values()})}: "
                     f"pass backbone= one of {sorted(BACKBONES)}")


def create(arch: str, tasks: "Mapping[str, Task] | Iterable[Task]", backbone: str | None = None,
           **kwargs: Any) -> MultiTaskModel:
    """Build architecture ``arch`` for ``tasks``.

    Args:
        arch: one of :data:`ARCHS`.
        tasks: the tasks (list or ``{name: Task}``); one head per task.
        backbone: one of :data:`BACKBONES`; default chosen from the task kinds (``"vgg"`` for
            image-level tasks, ``"segnet"`` for dense ones).
        **kwargs: backbone options, e.g. ``in_channels``, ``width`` (channel multiplier), ``hidden``,
            and the architecture's own options, named in its class's ``OPTIONS`` (e.g. ``stitch`` of
            ``cross_stitch``).

    Raises:
        ValueError: unknown architecture or backbone name (the message lists the valid ones), or a
            ``width`` that is not a finite number > 0.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; valid choices: {sorted(ARCHS)}")
    if "width" in kwargs:
        check_width(kwargs["width"])
    task_dict = as_task_dict(list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks))
    backbone = backbone or _default_backbone(task_dict)
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; valid choices: {sorted(BACKBONES)}")
    cls, implied = ARCHS[arch]
    options = {k: kwargs.pop(k) for k in getattr(cls, "OPTIONS", ()) if k in kwargs}
    make_trunk, make_head = BACKBONES[backbone](**{**implied, **kwargs})
    return cls(task_dict, make_trunk, make_head, **options)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def width_for_budget(arch: str, tasks: "Mapping[str, Task] | Iterable[Task]", budget: int,
                     low: float = 0.05, high: float = 8.0, **kwargs: Any) -> float:
    """The width multiplier that brings ``arch``'s parameter count closest to ``budget``.

    Used to compare architectures at an equal parameter budget (e.g. one hard-shared network as large
    as two single-task networks). Bisection on the multiplier; parameter counts grow with width.
    """
    tasks = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)

    def size(w: float) -> int:
        return count_parameters(create(arch, tasks, width=w, **kwargs))

    if size(high) < budget:
        raise ValueError(f"{arch} cannot reach {budget} parameters with width <= {high}")
    for _ in range(40):
        mid = (low + high) / 2
        if size(mid) < budget:
            low = mid
        else:
            high = mid
    return high if abs(size(high) - budget) <= abs(size(low) - budget) else low
