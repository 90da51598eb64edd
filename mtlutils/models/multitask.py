"""Generic multi-task architectures, independent of the backbone.

* :class:`SingleTaskNetworks` ("single", the *One Task* rows of the MTAN tables): one complete
  network per task, nothing shared; forward returns every task's prediction.
* :class:`HardSharedNetwork` ("split", hard parameter sharing): one trunk shared by all tasks and one
  head per task.
* :class:`DenseNetwork` ("dense"): a shared network plus one task network per task reading its stage inputs.

Every architecture is a :class:`MultiTaskModel` built as ``Model(tasks, make_trunk, make_head, **options)``
from a backbone's factories; it starts with ``super().__init__(tasks, trunk)``, which takes the input
contract (:class:`~mtlutils.models.contract.InputSpec`) from the trunk, and builds its heads with
:meth:`MultiTaskModel.task_heads`. What a trunk provides is written down in :mod:`mtlutils.models.contract`.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..tasks import Task
from .contract import HeadFactory, InputSpec, SideInputTrunk, TrunkFactory, require

__all__ = ["MultiTaskModel", "SingleTaskNetworks", "HardSharedNetwork", "DenseNetwork", "TrunkFactory",
           "HeadFactory"]


class _Latest:
    """Holds the shared representation of the last forward pass. It is neither copied (``deepcopy`` of a
    model works whatever the last forward left) nor pickled."""

    value: torch.Tensor | None = None

    def __deepcopy__(self, memo: dict) -> "_Latest":
        return _Latest()

    def __getstate__(self) -> dict:
        return {}


class MultiTaskModel(nn.Module):
    """Base class: checks the input and returns ``{task name: prediction}``.

    Args:
        tasks: ``{name: Task}``, in the order of the model's heads and outputs.
        trunk: the network whose input the model takes (its trunk, or for models made of several networks
            one of them): ``in_channels``, ``min_size`` and ``size_multiple`` are copied from it.

    Subclasses build their trunk(s) *before* calling ``super().__init__`` and register modules after it,
    in the order that fixes their parameters' initialisation and ``state_dict`` keys.
    """

    def __init__(self, tasks: Mapping[str, Task], trunk: InputSpec) -> None:
        super().__init__()
        self.tasks = dict(tasks)
        self.in_channels = trunk.in_channels
        self.min_size = trunk.min_size
        self.size_multiple = trunk.size_multiple

    def task_heads(self, make_head: HeadFactory, features: "int | Mapping[str, int]") -> nn.ModuleDict:
        """One head per task, in task order: ``make_head(features, task)``; ``features`` is the width the
        heads read, or ``{task: width}`` when every task has its own trunk."""
        return nn.ModuleDict({name: make_head(features if isinstance(features, int) else features[name], task)
                              for name, task in self.tasks.items()})

    # -- what gradient-level weightings need (mtlutils.weighting.base) -----------------------------------
    def shared_modules(self) -> list[nn.Module]:
        """The modules whose parameters every task's loss reaches (the shared trunk first); [] when the
        tasks share nothing (separate task networks)."""
        return []

    def shared_parameters(self) -> list[nn.Parameter]:
        """The parameters θ_s of :meth:`shared_modules`: what gradient-level weightings combine."""
        return [p for module in self.shared_modules() for p in module.parameters()]

    def last_shared_layer(self) -> nn.Module | None:
        """The last convolution or linear layer of the shared trunk (GradNorm's W), or None."""
        layers = [m for module in self.shared_modules()[:1] for m in module.modules()
                  if isinstance(m, (nn.Conv2d, nn.Linear))]
        return layers[-1] if layers else None

    def shared_representation(self) -> torch.Tensor | None:
        """The tensor that every head read in the last forward pass (hard sharing), else None (MGDA-UB)."""
        latest = self.__dict__.get("_latest")
        return latest.value if latest is not None else None

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` that says what was expected when ``x`` has the wrong shape."""
        expected = f"a float tensor of shape (N, {self.in_channels}, H, W) with H, W >= {self.min_size}"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__} expects {expected}, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects {expected}, got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"{type(self).__name__} expects {expected}, got shape {tuple(x.shape)}")
        if x.shape[-2] % self.size_multiple or x.shape[-1] % self.size_multiple:
            raise ValueError(f"{type(self).__name__} expects H and W divisible by {self.size_multiple} "
                             f"(one 2x2 pooling per stage), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{type(self).__name__} expects {expected}, got dtype {x.dtype}")


class SingleTaskNetworks(MultiTaskModel):
    """One independent network (trunk + head) per task."""

    def __init__(self, tasks: Mapping[str, Task], make_trunk: TrunkFactory, make_head: HeadFactory) -> None:
        trunks = {name: make_trunk() for name in tasks}
        super().__init__(tasks, next(iter(trunks.values())))
        self.trunks = nn.ModuleDict(trunks)
        self.heads = self.task_heads(make_head, {name: trunk.out_features for name, trunk in trunks.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(x)
        return {name: self.heads[name](self.trunks[name](x)) for name in self.tasks}


class HardSharedNetwork(MultiTaskModel):
    """One shared trunk and one head per task (hard parameter sharing)."""

    def __init__(self, tasks: Mapping[str, Task], make_trunk: TrunkFactory, make_head: HeadFactory) -> None:
        trunk = make_trunk()
        super().__init__(tasks, trunk)
        self.trunk = trunk
        self.heads = self.task_heads(make_head, trunk.out_features)

    def shared_modules(self) -> list[nn.Module]:
        return [self.trunk]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(x)
        features = self.trunk(x)
        self.__dict__.setdefault("_latest", _Latest()).value = features   # what every head reads: MGDA-UB's Z
        return {name: head(features) for name, head in self.heads.items()}


class DenseNetwork(MultiTaskModel):
    """Dense baseline of the MTAN tables: a shared network plus one network per task whose stages read
    ``[task features ; shared features]`` (the shared network's input to the same stage), no attention.

    Needs a trunk with side inputs (:class:`~mtlutils.models.contract.SideInputTrunk`: the SegNet backbone).
    """

    def __init__(self, tasks: Mapping[str, Task], make_trunk: TrunkFactory, make_head: HeadFactory) -> None:
        shared = make_trunk()
        require(shared, SideInputTrunk, "dense", "side inputs", "backbone='segnet'")
        super().__init__(tasks, shared)
        self.shared = shared
        side = shared.side_channel_sizes()
        self.trunks = nn.ModuleDict({name: make_trunk(side_channels=side) for name in tasks})
        self.heads = self.task_heads(make_head, {name: trunk.out_features for name, trunk in self.trunks.items()})

    def shared_modules(self) -> list[nn.Module]:
        return [self.shared]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(x)
        _, taps = self.shared.stage_inputs(x)
        return {name: self.heads[name](self.trunks[name](x, side=taps)) for name in self.tasks}
