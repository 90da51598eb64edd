"""Stochastic Filter Groups network (Bragman et al., ICCV 2019; papers.md §3), ``create("sfg", ...)``.

The backbone's trunk is built as usual (VGG-style or SegNet, with its pooling, unpooling and
initialisation) and every convolution is turned into a :class:`~mtlutils.layers.FilterGroupConv` that
keeps the convolution's weights. Batch norm and ReLU act per channel and pooling keeps channels, so a
channel's group passes through them unchanged: the trunk runs its own forward, and the group of every
channel travels from one filter-group convolution to the next through a small routing state. Task ``t``'s
head reads the last layer's channels of groups ``t`` and shared (``[F_t | F_s]``). The grouping logits of
all layers live in one parameter, ``group_logits`` (one row per kernel, layers in the trunk's order), so a
step samples all groupings with one call and the optimiser updates one tensor, however deep the network.

Objective (papers.md §3, the book writes the paper's λ1, λ2 as β1, β2): task losses (``fit``'s weighted sum
of per-sample means, i.e. the paper's objective divided by N) plus :meth:`SFGNetwork.regularization`
``= -entropy_weight · Σ_{l,k} H(p^(l),k)`` with ``entropy_weight = β2 / N`` (entropy *maximised*: the KL to
a uniform prior over groups, up to a constant) plus L2 on the weights through the optimiser's
``weight_decay`` (Adam's weight decay adds ``wd · M`` to the gradient: the gradient of ``(wd/2)||M||²``,
so ``wd = 2 β1 / N``). The grouping
logits get their own parameter group (learning rate × ``group_lr``, no weight decay). The temperature is
constant or annealed, ``τ(step) = max(τ_min, τ_0 e^{-r·step})``, set by :meth:`SFGNetwork.on_train_step`.

Inference: ``inference="argmax"`` (default) evaluates the deterministic network of ``argmax p``;
``inference="sample"`` is the authors' stochastic evaluation: ``passes`` sampled networks, the mean for
regression and depth, the mode (majority vote) for classification and segmentation, returned as the log of
the vote frequencies so that losses and metrics work unchanged.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..layers.filter_groups import FilterGroupConv, group_entropy, log_probs, shared_index
from ..layers.gumbel import gumbel_softmax
from ..tasks import Task
from .multitask import HeadFactory, MultiTaskModel, TrunkFactory

__all__ = ["SFGNetwork", "RoutedConv", "INFERENCE_MODES"]

INFERENCE_MODES = ("argmax", "sample")


class _Route:
    """The group of every channel of the tensor flowing through the trunk (None: all shared)."""

    groups: torch.Tensor | None = None


class RoutedConv(nn.Module):
    """A :class:`FilterGroupConv` inside an ordinary trunk: reads its input's groups from the routing
    state and writes its output's groups back, so the trunk's own forward needs no change."""

    def __init__(self, conv: FilterGroupConv, route: _Route) -> None:
        super().__init__()
        self.conv = conv
        self._route = route
        self.groups_out: torch.Tensor | None = None  # a grouping drawn beforehand, else the layer draws
        self.groups_used: torch.Tensor | None = None  # the grouping of the last call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, self._route.groups = self.conv(x, self._route.groups, self.groups_out)
        self.groups_used = self._route.groups.detach()
        return y


def _convert(module: nn.Module, make: "callable") -> None:
    """Replace every ``nn.Conv2d`` below ``module`` by ``make(conv)``, in registration order (which is the
    execution order of both backbones' trunks; the routing itself follows the actual execution)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d):
            setattr(module, name, make(child))
        else:
            _convert(child, make)


class SFGNetwork(MultiTaskModel):
    """A multi-task network whose trunk convolutions are stochastic filter groups (see the module doc).

    Args (besides the factories that ``create`` passes):
        temperature: ``τ_0`` of the Gumbel-Softmax; ``anneal_rate`` ``r`` (0: constant), ``min_temperature``.
        init: initial ``p`` of every kernel: ``"uniform"``, ``"dirichlet"`` or ``T+1`` probabilities.
        parameterization: ``"softmax"`` or the authors' ``"softplus"``.
        fixed: a fixed grouping instead of a learned one: ``T+1`` proportions for every layer, or a list
            with one entry per layer (proportions or a tensor of group indices per kernel).
        impl: ``"fast"`` (one convolution) or ``"masked"`` (one per group, the readable reference).
        entropy_weight: weight of ``-Σ H(p)`` on the per-sample-mean loss scale (the paper's β2 / N).
        group_lr: learning-rate multiplier of the grouping logits.
        inference, passes: evaluation mode (``"argmax"`` or ``"sample"``) and sampled passes.
    """

    OPTIONS = ("temperature", "anneal_rate", "min_temperature", "init", "parameterization", "fixed", "impl",
               "entropy_weight", "group_lr", "inference", "passes")

    def __init__(self, tasks: Mapping[str, Task], make_trunk: TrunkFactory, make_head: HeadFactory, *,
                 temperature: float = 1.0, anneal_rate: float = 0.0, min_temperature: float = 0.05,
                 init: "str | Sequence[float]" = "uniform", parameterization: str = "softmax",
                 fixed: "Sequence | None" = None, impl: str = "fast", entropy_weight: float = 0.0,
                 group_lr: float = 1.0, inference: str = "argmax", passes: int = 10) -> None:
        trunk = make_trunk()
        super().__init__(tasks, trunk.in_channels, trunk.min_size)
        self.size_multiple = getattr(trunk, "size_multiple", 1)
        self.trunk = trunk
        self.heads = nn.ModuleDict({name: make_head(trunk.out_features, task) for name, task in tasks.items()})
        if not (math.isfinite(temperature) and temperature > 0 and min_temperature > 0 and anneal_rate >= 0):
            raise ValueError(f"need temperature > 0, min_temperature > 0, anneal_rate >= 0; got {temperature}, "
                             f"{min_temperature}, {anneal_rate}")
        if entropy_weight < 0 or group_lr <= 0 or passes < 1:
            raise ValueError(f"need entropy_weight >= 0, group_lr > 0, passes >= 1; got {entropy_weight}, "
                             f"{group_lr}, {passes}")
        self.num_tasks = len(tasks)
        self.temperature0, self.anneal_rate, self.min_temperature = temperature, anneal_rate, min_temperature
        self.entropy_weight, self.group_lr, self.passes = entropy_weight, group_lr, passes
        # the convolutions are converted after the heads exist, drawing no random numbers for the weights:
        # with the same seed the trunk and heads start exactly as those of the other architectures
        self._route = _Route()
        convs = [m for m in trunk.modules() if isinstance(m, nn.Conv2d)]
        per_layer = self._per_layer(fixed, len(convs))
        made = iter(per_layer)

        def make(conv: nn.Conv2d) -> RoutedConv:
            layer = FilterGroupConv.from_conv(conv, self.num_tasks, init=init, parameterization=parameterization,
                                              fixed=next(made), impl=impl)
            return RoutedConv(layer, self._route)

        _convert(trunk, make)
        self._routed: list[RoutedConv] = [m for m in trunk.modules() if isinstance(m, RoutedConv)]
        self.group_layers: list[FilterGroupConv] = [m.conv for m in self._routed]
        self.parameterization = parameterization
        # one bank of logits for all learned layers (rows in layer order): one parameter to update and one
        # tensor to sample per step, however deep the network
        learned = [layer for layer in self.group_layers if layer.learnable]
        self.group_logits = nn.Parameter(torch.zeros(sum(l.out_channels for l in learned), self.num_tasks + 1)) \
            if learned else None
        start = 0
        for layer in learned:
            layer.share_logits(self.group_logits, start)
            start += layer.out_channels
        self.temperature = temperature
        self.inference = inference

    def _per_layer(self, fixed, layers: int) -> list:
        if fixed is None:
            return [None] * layers
        groups = self.num_tasks + 1
        if len(fixed) == groups and all(isinstance(f, (int, float)) for f in fixed):
            return [list(fixed)] * layers
        if len(fixed) != layers:
            raise ValueError(f"fixed must be {groups} proportions (T tasks, then shared) or a list with one entry "
                             f"per filter-group layer ({layers}), got {len(fixed)} entries")
        return list(fixed)

    # --- temperature, inference mode ------------------------------------------------------------------
    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"temperature must be finite and > 0, got {value}")
        self._temperature = float(value)
        for layer in self.group_layers:
            layer.tau = self._temperature

    @property
    def inference(self) -> str:
        return self._inference

    @inference.setter
    def inference(self, mode: str) -> None:
        if mode not in INFERENCE_MODES:
            raise ValueError(f"unknown inference {mode!r}; valid choices: {list(INFERENCE_MODES)}")
        self._inference = mode
        for layer in self.group_layers:
            layer.inference = mode

    def temperature_at(self, step: int) -> float:
        """``τ(step) = max(τ_min, τ_0 e^{-r·step})`` (constant ``τ_0`` when ``r = 0``)."""
        if self.anneal_rate == 0:
            return self.temperature0
        return max(self.min_temperature, self.temperature0 * math.exp(-self.anneal_rate * step))

    def on_train_step(self, step: int) -> None:
        """``fit``'s hook: the temperature of global step ``step`` (a function of the step only)."""
        self.temperature = self.temperature_at(step)

    # --- objective ------------------------------------------------------------------------------------
    @property
    def last_groups(self) -> list[torch.Tensor]:
        """Per layer, the group index of every kernel in the last forward pass (the last sampled pass)."""
        return [m.groups_used.argmax(dim=1) for m in self._routed if m.groups_used is not None]

    def _all_log_probs(self) -> torch.Tensor | None:
        """``log p`` of every kernel of every learned layer, stacked ``(Σ_l C_l, T+1)``: one computation for
        the whole network instead of one per layer (fewer small operations per step)."""
        if self.group_logits is None:
            return None
        return log_probs(self.group_logits, self.parameterization)

    def entropy(self) -> torch.Tensor:
        """``Σ_{l,k} H(p^(l),k)`` over the learned groupings."""
        log_p = self._all_log_probs()
        if log_p is None:
            return self.group_layers[0].weight.new_zeros(())
        return group_entropy(log_p).sum()

    def regularization(self) -> torch.Tensor:
        """``fit``'s hook: ``-entropy_weight · Σ H(p)``, added to the loss (minimising it maximises the
        entropy)."""
        return -self.entropy_weight * self.entropy()

    def group_parameters(self) -> list[nn.Parameter]:
        """The grouping logits of every learned layer (one bank, rows in layer order)."""
        return [] if self.group_logits is None else [self.group_logits]

    def param_groups(self, lr: float) -> list[dict]:
        """``fit``'s hook: the weights at ``lr``; the grouping logits at ``lr · group_lr`` without weight decay."""
        grouping = {id(p) for p in self.group_parameters()}
        weights = [p for p in self.parameters() if p.requires_grad and id(p) not in grouping]
        groups = [{"params": weights}]
        if grouping:
            groups.append({"params": self.group_parameters(), "lr": lr * self.group_lr, "weight_decay": 0.0})
        return groups

    # --- what the network learned ---------------------------------------------------------------------
    @torch.no_grad()
    def group_fractions(self, kind: str = "argmax") -> np.ndarray:
        """Per layer, the fraction of kernels in each group, ``(layers, T+1)`` (tasks, then shared):
        ``"argmax"`` counts kernels by their most probable group, ``"expected"`` averages ``p``."""
        rows = []
        for layer in self.group_layers:
            p = layer.probs().float()
            if kind == "argmax":
                rows.append(F.one_hot(p.argmax(dim=1), p.shape[1]).float().mean(dim=0))
            elif kind == "expected":
                rows.append(p.mean(dim=0))
            else:
                raise ValueError(f"unknown kind {kind!r}; use 'argmax' or 'expected'")
        return torch.stack(rows).cpu().numpy()

    def group_names(self) -> list[str]:
        """Names of the ``T+1`` groups: the task names, then ``"shared"``."""
        return list(self.tasks) + ["shared"]

    # --- forward --------------------------------------------------------------------------------------
    def _draw_groups(self) -> None:
        """Draw the groupings of all learned layers at once (one straight-through Gumbel-Softmax sample
        per kernel, the same for the whole batch), or leave them to the layers (argmax, fixed)."""
        learned = [m for m in self._routed if m.conv.learnable]
        for m in self._routed:
            m.groups_out = None
        if not learned or not (self.training or self.inference == "sample"):
            return
        z = gumbel_softmax(self._all_log_probs(), tau=self.temperature, hard=True, dim=1)
        for m, z_l in zip(learned, z.split([m.conv.out_channels for m in learned])):
            m.groups_out = z_l

    def _forward_once(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._route.groups = None
        try:
            self._draw_groups()
            features = self.trunk(x)
            z = self._route.groups
        finally:
            self._route.groups = None
            for m in self._routed:
                m.groups_out = None
        s = shared_index(self.num_tasks)
        keep = z[:, :s] + z[:, s:]                         # (C, T): head t reads [F_t | F_s]
        if features.dim() == 2:                            # flattened (C, grid) features of the VGG trunk
            keep = keep.repeat_interleave(features.shape[1] // keep.shape[0], dim=0)
        else:
            keep = keep[:, :, None, None]
        return {name: head(features * keep[:, t]) for t, (name, head) in enumerate(self.heads.items())}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(x)
        if self.training or self.inference == "argmax":
            return self._forward_once(x)
        return self._aggregate([self._forward_once(x) for _ in range(self.passes)])

    def _aggregate(self, runs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Mean for regression/depth (normalised for normals), mode for classes (log vote frequencies)."""
        out = {}
        for name, task in self.tasks.items():
            preds = torch.stack([run[name] for run in runs])
            if task.kind in ("class", "seg"):
                votes = F.one_hot(preds.argmax(dim=2), task.out_channels).to(preds.dtype).mean(dim=0)
                votes = votes.movedim(-1, 1)               # classes back to dim 1
                out[name] = votes.clamp_min(1e-6).log()
            elif task.kind == "normal":
                out[name] = F.normalize(preds.mean(dim=0), p=2, dim=1)
            else:
                out[name] = preds.mean(dim=0)
        return out
