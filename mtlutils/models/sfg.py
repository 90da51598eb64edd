"""Stochastic Filter Groups network (Bragman et al., ICCV 2019), ``create("sfg", ...)``.

The backbone's trunk is built as usual (VGG-style or SegNet, with its pooling, unpooling and
initialisation) and every convolution is turned into a :class:`~mtlutils.layers.FilterGroupConv` that
keeps the convolution's weights. Batch norm, ReLU and max pooling act per channel, so a channel's group
passes through them unchanged: the trunk runs its own forward, and the group of every channel travels
from one filter-group convolution to the next through a small routing state. Task ``t``'s head reads the
last layer's channels of groups ``t`` and shared (``[F_t | F_s]``, the paper's routing; chapter 5,
eq-sfg-routing). The grouping logits of all layers live in one parameter, ``group_logits`` (one row per
kernel, layers in the trunk's order), so a step samples all groupings with one call and the optimiser
updates one tensor, however deep the network.

**Max unpooling ties layers (SegNet).** Unpooling puts decoder channel ``c`` at the positions where
encoder channel ``c`` had its maxima. The positions are information about the encoder channel: were the
two channels in groups drawn independently, a shared or depth-specialist decoder channel would be placed
by a segmentation specialist, a path that the routing forbids (indices carry no gradient, so only a
perturbation of the kernels shows it). The network therefore gives each encoder stage's last convolution
and the decoder convolution whose output it unpools *one* grouping (:attr:`SFGNetwork.ties`; tied layers
share their rows of ``group_logits`` and every sample): channel ``c`` is in the same group on both sides.
This keeps SegNet's unpooling, so fixed groupings still reproduce hard sharing and separate networks
exactly; the paper's networks have no unpooling, so it says nothing about this case.

Objective (the paper's variational objective, chapter 5's eq-sfg-objective; its λ1, λ2 are written β1,
β2): task losses (``fit``'s weighted sum of per-sample means, i.e. the paper's objective divided by N)
plus :meth:`SFGNetwork.regularization` ``= -entropy_weight · Σ_{l,k} H(p^(l),k)`` with
``entropy_weight = β2 / N`` (entropy *maximised*: the KL to a uniform prior over groups, up to a constant)
plus L2 on the weights through the optimiser's ``weight_decay`` (Adam's weight decay adds ``wd · M`` to the
gradient: the gradient of ``(wd/2)||M||²``, so ``wd = 2 β1 / N``). The grouping logits get their own
parameter group (learning rate × ``group_lr``, no weight decay). The temperature is constant or annealed,
``τ(step) = max(τ_min, τ_0 e^{-r·step})``, set by :meth:`SFGNetwork.on_train_step`. Chapter 5 lists where
this differs from the authors' code (entropy on each layer's mean, L2 as a mean over tensors, batch norm
per group after the ReLU, and more).

Inference and batch norm: ``inference="argmax"`` (default) evaluates the deterministic network of
``argmax p`` with running batch-norm statistics; training re-samples every grouping at every step, so the
running averages it accumulates belong to no single network, and :meth:`SFGNetwork.calibrate` (``fit``
calls it before every evaluation) re-estimates them for the argmax network
(:func:`recalibrate_batch_norm`). ``inference="sample"`` is the authors' stochastic evaluation:
``passes`` sampled networks, each normalised with the statistics of the evaluated batch
(:func:`batch_statistics`, as their code evaluates in training mode), the mean for regression and depth,
the mode (majority vote) for classification and segmentation, returned as the log of the vote
frequencies so that losses and metrics work unchanged.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..layers.filter_groups import FilterGroupConv, group_entropy, log_probs, shared_index
from ..layers.gumbel import gumbel_softmax
from ..tasks import Task
from .multitask import HeadFactory, MultiTaskModel, TrunkFactory

__all__ = ["SFGNetwork", "RoutedConv", "INFERENCE_MODES", "recalibrate_batch_norm", "batch_statistics"]

INFERENCE_MODES = ("argmax", "sample")


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, data: Iterable[Mapping[str, torch.Tensor]]) -> int:
    """Re-estimate the running mean and variance of every batch-norm layer of ``model`` for the network
    that ``model`` computes in evaluation mode (for SFG: the grouping used at test time), from one pass
    over ``data`` (batches ``{"image": ...}``, e.g. the training loader).

    During the pass every batch-norm layer normalises with batch statistics and everything else runs in
    evaluation mode; the running statistics become the mean over the batches of the batch means and
    (unbiased) variances (a cumulative average: momentum ``1/k`` at the ``k``-th batch, which works for
    every batch-norm class, the synchronised ones included). The model's train/eval mode and the layers'
    momenta are restored. Returns the number of batches.
    """
    norms = _batch_norms(model)
    was_training = model.training
    momenta = [bn.momentum for bn in norms]
    device = next(model.parameters()).device
    model.eval()
    batches = 0
    try:
        for bn in norms:
            bn.reset_running_stats()
            bn.train()
        for batch in data:
            batches += 1
            for bn in norms:
                bn.momentum = 1.0 / batches
            model(batch["image"].to(device))
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
        model.train(was_training)
    if batches == 0:
        raise ValueError("recalibrate_batch_norm() got no data")
    return batches


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Within the block, every batch-norm layer of ``model`` normalises with the statistics of the batch
    it is given, also in evaluation mode (the SFG authors' evaluation), and leaves its running statistics
    untouched. Predictions then depend on the other examples of the batch and on the batch size."""
    norms = [bn for bn in _batch_norms(model) if bn.running_mean is not None]
    saved = [(bn.running_mean, bn.running_var) for bn in norms]
    try:
        for bn in norms:   # no running statistics: PyTorch normalises with the batch's, also in eval mode
            bn.running_mean, bn.running_var = None, None
        yield
    finally:
        for bn, (mean, var) in zip(norms, saved):
            bn.running_mean, bn.running_var = mean, var


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

    Attributes: ``group_layers`` (the :class:`FilterGroupConv` of every trunk convolution, in order) and
    ``ties`` (``(i, j)`` pairs of those indices that share one grouping, see the module doc; empty for VGG).
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
        index = {id(conv): i for i, conv in enumerate(convs)}
        ties = trunk.unpooling_ties() if hasattr(trunk, "unpooling_ties") else []
        self.ties: list[tuple[int, int]] = [(index[id(a)], index[id(b)]) for a, b in ties]
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
        self._check_ties()
        # one bank of logits for all learned layers (rows in layer order): one parameter to update and one
        # tensor to sample per step, however deep the network; a tied layer reads its owner's rows
        tied = {b: a for a, b in self.ties}
        owners = [l for i, l in enumerate(self.group_layers) if l.learnable and i not in tied]
        self.group_logits = nn.Parameter(torch.zeros(sum(l.out_channels for l in owners), self.num_tasks + 1)) \
            if owners else None
        rows, start = {}, 0
        for i, layer in enumerate(self.group_layers):
            if layer.learnable and i not in tied:
                layer.share_logits(self.group_logits, start)
                rows[i], start = start, start + layer.out_channels
        for b, a in tied.items():
            if self.group_layers[b].learnable:
                self.group_layers[b].share_logits(self.group_logits, rows[a], copy=False)
                rows[b] = rows[a]
        self._rows = [(m, rows[i]) for i, m in enumerate(self._routed) if i in rows]
        self.temperature = temperature
        self.inference = inference

    def _check_ties(self) -> None:
        """Tied layers (see the module doc) must have one grouping: both learned, or the same fixed one."""
        for a, b in self.ties:
            la, lb = self.group_layers[a], self.group_layers[b]
            same = la.learnable == lb.learnable and (la.learnable or torch.equal(la.fixed_groups, lb.fixed_groups))
            if not same:
                raise ValueError(f"filter-group layers {a} and {b} must have the same grouping: max unpooling "
                                 f"places layer {b}'s channels with the pooling indices of layer {a}'s "
                                 f"(see SFGNetwork.ties)")

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

    @torch.no_grad()
    def calibrate(self, data: Iterable[Mapping[str, torch.Tensor]]) -> None:
        """``fit``'s hook, called with the training data before the model is evaluated: batch-norm running
        statistics for the network of ``argmax p`` (:func:`recalibrate_batch_norm`, one pass over
        ``data``). Training re-samples every grouping at every step, so the running averages it leaves
        mix the statistics of many networks, none of them the one evaluated. A fixed grouping trains the
        network it evaluates: nothing to do."""
        if self.group_logits is None:
            return
        mode = self.inference
        self.inference = "argmax"
        try:
            recalibrate_batch_norm(self, data)
        finally:
            self.inference = mode

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
        per kernel, the same for the whole batch; tied layers read the same rows), or leave them to the
        layers (argmax, fixed)."""
        for m in self._routed:
            m.groups_out = None
        if not self._rows or not (self.training or self.inference == "sample"):
            return
        z = gumbel_softmax(self._all_log_probs(), tau=self.temperature, hard=True, dim=1)
        for m, start in self._rows:
            m.groups_out = z.narrow(0, start, m.conv.out_channels)

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
        with batch_statistics(self):  # the authors' evaluation: every sampled network with batch statistics
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
