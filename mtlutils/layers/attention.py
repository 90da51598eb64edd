"""The soft attention module of MTAN (Liu, Johns, Davison, CVPR 2019, §3.2; chapter 4,
eq-mtan-attend and eq-mtan-mask).

Task ``i`` selects features from the shared network's block ``j`` with a mask of the same shape:

* first block: ``a_i^(1) = h(g(u^(1)))``;
* later blocks: ``a_i^(j) = h(g([u^(j); f^(j)(â_i^(j-1))]))``;
* attended feature: ``â_i^(j) = a_i^(j) ⊙ p^(j)``,

with ``u`` the shared feature at the block's first layer, ``p`` the one at its last layer, ``f`` a
shared 3x3 conv unit (applied by the network, outside this module), ``g`` a 1x1 conv–BN–ReLU and ``h`` a
1x1 conv–BN–sigmoid, so every mask entry lies in (0, 1).

:class:`AttentionModule` is one task's module at one block. The two functions below compute the same
thing for all ``T`` tasks of a block at once (MTAN's fast path): :func:`stacked_masks` runs the ``T``
modules as grouped 1x1 convolutions (:func:`pointwise_conv`, a batched matrix product), :func:`shared_unit_per_task` runs a shared conv unit on every task's
path in one call, keeping batch-norm statistics per task as ``T`` separate calls would. Task-stacked
tensors have shape ``(N, T, C, H, W)``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class AttentionModule(nn.Module):
    """One task's attention module: ``mask = h(g(x))`` with ``x = u`` or ``x = [u; prev]``.

    Args:
        in_channels: channels of ``x`` (``u``'s channels, plus ``prev``'s when the block has one).
        out_channels: channels of the mask (= those of the shared feature ``p`` it multiplies).
        mid_channels: output channels of ``g``; default ``out_channels`` (the reference code does not
            bottleneck).
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        super().__init__()
        mid = out_channels if mid_channels is None else mid_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.g = nn.Sequential(nn.Conv2d(in_channels, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.h = nn.Sequential(nn.Conv2d(mid, out_channels, 1), nn.BatchNorm2d(out_channels), nn.Sigmoid())

    def mask(self, u: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
        """The mask ``a = h(g([u; prev]))`` (``prev`` omitted at the first block), values in (0, 1)."""
        x = u if prev is None else torch.cat([u, prev], dim=1)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            got = tuple(u.shape) if prev is None else f"{tuple(u.shape)} + {tuple(prev.shape)}"
            raise ValueError(f"AttentionModule expects [u; prev] with {self.in_channels} channels "
                             f"(N, C, H, W), got {got}")
        return self.h(self.g(x))

    def forward(self, u: torch.Tensor, p: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
        """The attended feature ``â = mask(u, prev) ⊙ p``."""
        if p.shape[1] != self.out_channels:
            raise ValueError(f"AttentionModule: p must have {self.out_channels} channels, got {tuple(p.shape)}")
        return self.mask(u, prev) * p


# ---------------------------------------------------------------------------------------------------
# the fast path: all tasks of a block at once
def _check_bn(bn: nn.BatchNorm2d) -> None:
    if bn.momentum is None or not bn.track_running_stats or not bn.affine:
        raise ValueError("the batched attention path supports affine batch norm with running statistics "
                         "and a fixed momentum")


def _stacked_bn(bns: Sequence[nn.BatchNorm2d], x: torch.Tensor) -> torch.Tensor:
    """Batch norm of ``x (N, T·C, H, W)`` where channels ``[t·C, (t+1)·C)`` belong to ``bns[t]``:
    equal to applying ``bns[t]`` to each chunk (running statistics of each module updated once)."""
    for bn in bns:
        _check_bn(bn)
    first = bns[0]
    training = first.training
    mean = torch.cat([bn.running_mean for bn in bns])
    var = torch.cat([bn.running_var for bn in bns])
    out = F.batch_norm(x, mean, var, torch.cat([bn.weight for bn in bns]), torch.cat([bn.bias for bn in bns]),
                       training, first.momentum, first.eps)
    if training:
        with torch.no_grad():
            for bn, m, v in zip(bns, mean.chunk(len(bns)), var.chunk(len(bns))):
                bn.running_mean.copy_(m)
                bn.running_var.copy_(v)
                bn.num_batches_tracked.add_(1)
    return out


def _per_task_bn(bn: nn.BatchNorm2d, x: torch.Tensor, tasks: int) -> torch.Tensor:
    """One shared batch norm applied to each of ``tasks`` channel chunks of ``x (N, T·C, H, W)`` separately,
    as ``tasks`` consecutive calls would: statistics per task, the same affine parameters, and the running
    statistics updated ``tasks`` times in task order,
    ``r_T = (1-m)^T r_0 + Σ_t m (1-m)^(T-t) μ_t``."""
    _check_bn(bn)
    weight, bias = bn.weight.repeat(tasks), bn.bias.repeat(tasks)
    if not bn.training:
        return F.batch_norm(x, bn.running_mean.repeat(tasks), bn.running_var.repeat(tasks), weight, bias,
                            False, 0.0, bn.eps)
    m = bn.momentum
    mean, var = bn.running_mean.repeat(tasks), bn.running_var.repeat(tasks)  # each -> (1-m) r_0 + m μ_t
    out = F.batch_norm(x, mean, var, weight, bias, True, m, bn.eps)
    with torch.no_grad():
        for running, updated in ((bn.running_mean, mean), (bn.running_var, var)):
            steps = updated.view(tasks, -1) - (1 - m) * running  # m μ_t
            decay = (1 - m) ** torch.arange(tasks - 1, -1, -1, dtype=running.dtype, device=running.device)
            running.mul_((1 - m) ** tasks).add_((decay[:, None] * steps).sum(0))
        bn.num_batches_tracked.add_(tasks)
    return out


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   groups: int = 1) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, groups=groups)`` for a 1x1 ``weight (G·C_out, C_in, 1, 1)`` and
    ``x (N, G·C_in, H, W)``, computed as one batched matrix product ``W_g · x_g`` over the pixels.

    The same function; on CPU the matrix product is 1.3-3x faster than the convolution kernel at the
    channel counts of MTAN's attention modules (8-64 per task), whose blocked memory layout costs more
    than the product itself (``benchmarks/bench_mtan_paths.py``).
    """
    n, c_in, h, w = x.shape
    c_out = weight.shape[0] // groups
    if weight.shape[2:] != (1, 1) or weight.shape[1] * groups != c_in or c_out * groups != weight.shape[0]:
        raise ValueError(f"pointwise_conv: a 1x1 weight of {groups} group(s) for {c_in} input channels "
                         f"expected, got weight {tuple(weight.shape)} and x {tuple(x.shape)}")
    out = torch.matmul(weight.reshape(groups, c_out, -1), x.reshape(n, groups, c_in // groups, h * w))
    if bias is not None:
        out.add_(bias.view(groups, c_out, 1).to(out.dtype))  # autocast: stay in the product's type
    return out.view(n, groups * c_out, h, w)


def stacked_masks(modules: Sequence[AttentionModule], u: torch.Tensor,
                  prev: torch.Tensor | None = None) -> torch.Tensor:
    """The masks of ``T`` tasks' modules at one block, in one pass: ``(N, T, C, H, W)``.

    ``u (N, Cu, H, W)`` is shared; ``prev (N, T, Cp, H, W)`` holds each task's ``f(â^(j-1))``. Equal to
    ``torch.stack([m.mask(u, prev[:, t]) for t, m in enumerate(modules)], 1)``: the first 1x1 conv is
    split into its ``u`` part (one dense conv for all tasks, no copy of ``u`` per task) and its ``prev``
    part (a grouped conv, one group per task); the second 1x1 conv is grouped (every 1x1 conv computed by
    :func:`pointwise_conv`); the batch norms run on the stacked channels with each module's own statistics.
    """
    tasks = len(modules)
    n, cu = u.shape[:2]
    g_convs, h_convs = [m.g[0] for m in modules], [m.h[0] for m in modules]
    cp = 0 if prev is None else prev.shape[2]
    if cu + cp != modules[0].in_channels or (prev is not None and prev.shape[1] != tasks):
        raise ValueError(f"stacked_masks: {tasks} modules of {modules[0].in_channels} input channels, got u "
                         f"{tuple(u.shape)} and prev {None if prev is None else tuple(prev.shape)}")
    weight = torch.cat([c.weight for c in g_convs])  # (T·mid, Cu + Cp, 1, 1)
    z = pointwise_conv(u, weight[:, :cu], torch.cat([c.bias for c in g_convs]))
    if prev is not None:
        z = z + pointwise_conv(prev.flatten(1, 2), weight[:, cu:], groups=tasks)
    z = F.relu_(_stacked_bn([m.g[1] for m in modules], z))
    z = pointwise_conv(z, torch.cat([c.weight for c in h_convs]), torch.cat([c.bias for c in h_convs]),
                       groups=tasks)
    z = torch.sigmoid_(_stacked_bn([m.h[1] for m in modules], z))
    return z.unflatten(1, (tasks, -1))


def shared_unit_per_task(unit: nn.Sequential, x: torch.Tensor, pool: bool = False) -> torch.Tensor:
    """A shared conv–BN–ReLU unit applied to every task's path of ``x (N, T, C, H, W)`` in one call;
    with ``pool``, followed by 2x2 max pooling.

    The tasks are folded into the batch for the convolution (a free view of the task-stacked layout) and
    into the channels for batch norm, whose statistics stay per task (:func:`_per_task_bn`): equal, in
    values, gradients and running statistics, to calling ``unit`` once per task. The pooling runs before
    the ReLU, on the same values: ReLU is non-decreasing, so ``maxpool(relu(y)) = relu(maxpool(y))``, and
    the ReLU then touches a quarter of the pixels.
    """
    conv, bn, act = unit
    if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and isinstance(act, nn.ReLU)):
        raise TypeError(f"shared_unit_per_task expects a conv–BN–ReLU unit, got {unit}")
    n, tasks = x.shape[:2]
    y = conv(x.flatten(0, 1))  # (N·T, C', H', W'): batch index n·T + t
    y = _per_task_bn(bn, y.unflatten(0, (n, tasks)).flatten(1, 2), tasks)
    if pool:
        y = F.max_pool2d(y, 2, 2)
    return F.relu_(y).unflatten(1, (tasks, -1))
