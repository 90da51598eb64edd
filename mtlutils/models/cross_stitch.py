"""Cross-stitch networks (Misra et al., CVPR 2016): one network per task, and between them cross-stitch
units (:class:`mtlutils.layers.CrossStitch`) that linearly mix their activations.

Built from the backbone's own pieces: every task network is an ordinary trunk of the backbone, run as a
generator (``trunk.run_stitched``) that stops at each stitch point, so the networks advance in lock-step
and the units mix their features in between. A head with a hidden fully-connected layer (the VGG
backbone's) is stitched after that layer in the paper's placement; the output layer stays task-specific
(as the paper's fc8).

Options: see :class:`CrossStitchNetwork`. Start from trained single-task networks (the paper's protocol)
with :meth:`CrossStitchNetwork.load_single`.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..layers.cross_stitch import CrossStitch
from ..tasks import Task
from .multitask import HeadFactory, MultiTaskModel, SingleTaskNetworks, TrunkFactory


def _finish(run, value: torch.Tensor) -> torch.Tensor:
    """Send the last stitched features into a trunk's generator and return the trunk's output."""
    try:
        run.send(value)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("a task network has more stitch points than the cross-stitch units")


class CrossStitchNetwork(MultiTaskModel):
    """T >= 2 task networks of one backbone joined by cross-stitch units; forward returns ``{task: prediction}``.

    Options (keywords of ``models.create("cross_stitch", tasks, ...)``):

    * ``stitch``: where the units go. ``"stage"`` (default): the paper's placement, after every pooling
      and every hidden fully-connected layer (pool1, pool2, pool5, fc6, fc7 in AlexNet);
      on the VGG backbone after every pooling stage and after the head's hidden fully-connected layer
      (point ``"fc"``: this backbone's fc6/fc7); on SegNet after every encoder stage's pooling
      **and** at the end of every decoder stage (the decoder stages play the role of the paper's
      fully-connected layers: the last shared layers before the task-specific output; an unpooled map is
      sparse, with the non-zeros where *its* network's pooling put them, so we do not mix right after
      unpooling). ``"conv"``: after every conv unit only (tried in the paper and found worse; the SFG
      paper's baseline, whose VGG has no hidden fully-connected layer:
      ``create("cross_stitch", tasks, backbone="vgg", width=0.5, stitch="conv")``).
    * ``granularity``: ``"channel"`` (default; one T×T matrix per channel, the paper's choice for
      segmentation + normals) or ``"layer"`` (one T×T matrix per unit).
    * ``alpha_init``: ``(α_S, α_D)``, default ``(0.9, 0.1)``, the paper's best (Table 1). With T > 2 tasks
      α_D is split equally over the other tasks, so every row still sums to α_S + α_D.
    * ``alpha_lr_mult``: the learning rate of α is the model's learning rate times this, default 100 (the
      paper's best range is 10²–10³, Table 2, with SGD); used by ``fit`` through :meth:`param_groups`.
    """

    OPTIONS = ("stitch", "granularity", "alpha_init", "alpha_lr_mult")

    def __init__(self, tasks: Mapping[str, Task], make_trunk: TrunkFactory, make_head: HeadFactory, *,
                 stitch: str = "stage", granularity: str = "channel",
                 alpha_init: tuple[float, float] = (0.9, 0.1), alpha_lr_mult: float = 100.0) -> None:
        if len(tasks) < 2:
            raise ValueError(f"cross-stitch networks need at least two tasks, got {list(tasks)}")
        if len(alpha_init) != 2:
            raise ValueError(f"alpha_init must be (alpha_same, alpha_diff), got {alpha_init!r}")
        trunks = {name: make_trunk() for name in tasks}
        first = next(iter(trunks.values()))
        if not hasattr(first, "run_stitched"):
            raise ValueError(f"the backbone's trunk {type(first).__name__} has no stitch points (run_stitched)")
        super().__init__(tasks, first.in_channels, first.min_size)
        self.size_multiple = getattr(first, "size_multiple", 1)
        self.trunks = nn.ModuleDict(trunks)
        self.heads = nn.ModuleDict({name: make_head(trunks[name].out_features, task)
                                    for name, task in tasks.items()})
        points = first.stitch_points(stitch)
        hidden = getattr(next(iter(self.heads.values())), "hidden_features", None)
        self.stitch_head = stitch == "stage" and hidden is not None  # the paper's fc6/fc7 units
        if self.stitch_head:
            points = points + [("fc", hidden)]
        self.stitch, self.granularity = stitch, granularity
        self.alpha_init, self.alpha_lr_mult = (float(alpha_init[0]), float(alpha_init[1])), float(alpha_lr_mult)
        self.point_names = [name for name, _ in points]
        self.units = nn.ModuleList(CrossStitch(len(tasks), channels, granularity, self.alpha_init)
                                   for _, channels in points)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(x)
        runs = [self.trunks[name].run_stitched(x, self.stitch) for name in self.tasks]
        trunk_units = self.units[:len(self.units) - self.stitch_head]
        features = [next(run) for run in runs]
        for unit in trunk_units[:-1]:
            features = [run.send(f) for run, f in zip(runs, unit(features))]
        features = [_finish(run, f) for run, f in zip(runs, trunk_units[-1](features))]
        heads = [self.heads[name] for name in self.tasks]
        if not self.stitch_head:
            return {name: head(f) for name, head, f in zip(self.tasks, heads, features)}
        hidden = self.units[-1]([head.hidden(f) for head, f in zip(heads, features)])
        return {name: head.output(h) for name, head, h in zip(self.tasks, heads, hidden)}

    # ------------------------------------------------------------------------------------- training
    def alpha_parameters(self) -> list[nn.Parameter]:
        """The α of every unit, in network order."""
        return [unit.alpha for unit in self.units]

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser groups for ``fit``: the networks at ``lr``, the α at ``lr * alpha_lr_mult``."""
        alphas = {id(p) for p in self.alpha_parameters()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in alphas]
        return [{"params": rest, "lr": lr},
                {"params": [p for p in self.alpha_parameters() if p.requires_grad], "lr": lr * self.alpha_lr_mult}]

    @torch.no_grad()
    def load_single(self, single: "SingleTaskNetworks | Mapping[str, SingleTaskNetworks]") -> "CrossStitchNetwork":
        """Copy every task's trunk and head from trained single-task networks (the paper's initialisation).

        ``single``: a ``create("single", tasks, ...)`` model holding a network for each of this model's
        tasks, or a mapping ``{task: model}`` of models that each hold that task's network. Same backbone
        and width needed. α keeps its own initialisation. Returns ``self``.
        """
        sources = single if isinstance(single, Mapping) else {name: single for name in self.tasks}
        for name in self.tasks:
            source = sources.get(name)
            if source is None or name not in getattr(source, "trunks", {}) or name not in source.heads:
                raise ValueError(f"no single-task network for task {name!r} in the given model(s)")
            try:
                self.trunks[name].load_state_dict(source.trunks[name].state_dict())
                self.heads[name].load_state_dict(source.heads[name].state_dict())
            except RuntimeError as err:
                raise ValueError(f"the single-task network of {name!r} does not fit this cross-stitch network "
                                 f"(same backbone and width needed): {err}") from None
        return self

    # ------------------------------------------------------------------------------------- analysis
    def alpha_table(self) -> "pd.DataFrame":
        """Mean α_S and α_D per stitch point and task (α_D: the weight taken from all other tasks).

        Columns: ``point`` (its name), ``depth`` (0, 1, ... in network order), ``task``, ``alpha_S``,
        ``alpha_D``; per-channel values are averaged over the channels.
        """
        import pandas as pd

        rows = []
        for depth, (point, unit) in enumerate(zip(self.point_names, self.units)):
            same, diff = unit.same_and_diff()
            for i, task in enumerate(self.tasks):
                rows.append({"point": point, "depth": depth, "task": task,
                             "alpha_S": float(same[i].float().mean()), "alpha_D": float(diff[i].float().mean())})
        return pd.DataFrame(rows)
