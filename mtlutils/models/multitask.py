"""Generic multi-task architectures, independent of the backbone.

* :class:`SingleTaskNetworks` ("single", the *One Task* rows of the MTAN tables): one complete
  network per task, nothing shared; forward returns every task's prediction.
* :class:`HardSharedNetwork` ("split", hard parameter sharing): one trunk shared by all tasks and one
  head per task.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn

from ..tasks import Task

TrunkFactory = Callable[[], nn.Module]
HeadFactory = Callable[[int, Task], nn.Module]


class MultiTaskModel(nn.Module):
    """Base class: checks the input and returns ``{task name: prediction}``."""

    def __init__(self, tasks: Mapping[str, Task], in_channels: int, min_size: int) -> None:
        super().__init__()
        self.tasks = dict(tasks)
        self.in_channels = in_channels
        self.min_size = min_size

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` that says what was expected when ``x`` has the wrong shape."""
        expected = f"a float tensor of shape (N, {self.in_channels}, H, W) with H, W >= {self.min_size}"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__} expects {expected}, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects {expected}, got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"{type(self).__name__} expects {expected}, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{type(self).__name__} expects {expected}, got dtype {x.dtype}")


class SingleTaskNetworks(MultiTaskModel):
    """One independent network (trunk + head) per task."""

    def __init__(self, tasks: Mapping[str, Task], make_trunk: TrunkFactory, make_head: HeadFactory) -> None:
        trunks = {name: make_trunk() for name in tasks}
        first = next(iter(trunks.values()))
        super().__init__(tasks, first.in_channels, first.min_size)
        self.trunks = nn.ModuleDict(trunks)
        self.heads = nn.ModuleDict({name: make_head(trunks[name].out_features, task)
                                    for name, task in tasks.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(x)
        return {name: self.heads[name](self.trunks[name](x)) for name in self.tasks}


class HardSharedNetwork(MultiTaskModel):
    """One shared trunk and one head per task (hard parameter sharing)."""

    def __init__(self, tasks: Mapping[str, Task], make_trunk: TrunkFactory, make_head: HeadFactory) -> None:
        trunk = make_trunk()
        super().__init__(tasks, trunk.in_channels, trunk.min_size)
        self.trunk = trunk
        self.heads = nn.ModuleDict({name: make_head(trunk.out_features, task) for name, task in tasks.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(x)
        features = self.trunk(x)
        return {name: head(features) for name, head in self.heads.items()}
