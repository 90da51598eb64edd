"""Model zoo: ``create(arch, tasks, **kw)`` builds a multi-task network whose forward returns
``{task name: prediction}``.

Architectures (:data:`ARCHS`) are separate from backbones: ``single`` and ``split`` work on the small
VGG-style backbone for image-level tasks (``backbone="vgg"``); the dense-prediction chapter adds the
SegNet backbone and the remaining architectures.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Iterable, Mapping

from torch import nn

from ..tasks import Task, as_task_dict
from .multitask import HardSharedNetwork, MultiTaskModel, SingleTaskNetworks
from .vgg import MLPHead, VGGTrunk

__all__ = ["ARCHS", "BACKBONES", "create", "count_parameters", "width_for_budget", "MultiTaskModel"]


def _vgg_parts(in_channels: int = 1, width: float = 1.0, stages=None, pool=(2, 2), hidden: int = 64):
    kw = {} if stages is None else {"stages": stages}
    make_trunk = partial(VGGTrunk, in_channels=in_channels, width=width, pool=pool, **kw)
    make_head = partial(MLPHead, hidden=hidden)
    return make_trunk, make_head


# backbone name -> function(**kw) -> (trunk factory, head factory)
BACKBONES: dict[str, Callable[..., tuple[Callable[[], nn.Module], Callable[[int, Task], nn.Module]]]] = {
    "vgg": _vgg_parts,
}

# architecture name -> class taking (tasks, make_trunk, make_head)
ARCHS: dict[str, type[MultiTaskModel]] = {
    "single": SingleTaskNetworks,
    "split": HardSharedNetwork,
}


def _default_backbone(tasks: Mapping[str, Task]) -> str:
    if all(t.image_level for t in tasks.values()):
        return "vgg"
    raise ValueError(f"no backbone for tasks of kinds {sorted({t.kind for t in tasks.values()})} yet; "
                     f"available backbones: {sorted(BACKBONES)}")


def create(arch: str, tasks: "Mapping[str, Task] | Iterable[Task]", backbone: str | None = None,
           **kwargs: Any) -> MultiTaskModel:
    """Build architecture ``arch`` for ``tasks``.

    Args:
        arch: one of :data:`ARCHS` (``"single"``: one network per task; ``"split"``: hard sharing).
        tasks: the tasks (list or ``{name: Task}``); one head per task.
        backbone: one of :data:`BACKBONES`; default chosen from the task kinds (``"vgg"`` for
            image-level tasks).
        **kwargs: backbone options, e.g. ``in_channels``, ``width`` (channel multiplier), ``hidden``.

    Raises:
        ValueError: unknown architecture or backbone name (the message lists the valid ones).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; valid choices: {sorted(ARCHS)}")
    task_dict = as_task_dict(list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks))
    backbone = backbone or _default_backbone(task_dict)
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; valid choices: {sorted(BACKBONES)}")
    make_trunk, make_head = BACKBONES[backbone](**kwargs)
    return ARCHS[arch](task_dict, make_trunk, make_head)


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
