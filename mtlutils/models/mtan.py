"""MTAN, the Multi-Task Attention Network (Liu, Johns, Davison, CVPR 2019), and STAN.

One shared network (the global feature pool: a SegNet or the small VGG trunk) and, per task, a chain
of soft attention modules (:class:`~mtlutils.layers.AttentionModule`) that select features from every
block of it (papers.md §2, wired as the authors' SegNet code, §2.1):

* **encoder block j**: the mask of task i reads ``[u^(j); f^(j)(â_i^(j-1))]`` (only ``u^(1)`` at the
  first block), ``u`` being the block's first conv output; it multiplies the block's last conv output
  ``p^(j)``; the shared 3x3 unit ``f`` (conv–BN–ReLU, to the next block's width) and a 2x2 max pool
  carry the attended feature to the next block;
* **decoder block k** (SegNet only): bilinear x2 up-sampling, then ``f``, then the mask from
  ``[unpooled shared block input; f output]`` multiplies the shared block's output;
* **heads** read the last attended feature (VGG: after the trunk's own pooling).

The ``f`` units are shared by the tasks but run on each task's path. The reference code runs every
task's path separately (:func:`reference_features`, kept for tests and teaching); :class:`MTAN` runs
all tasks of a block at once (``fast=True``, the default: grouped convolutions for the per-task 1x1
convs, tasks folded into the batch for ``f``), which computes the same function (values, gradients and
batch-norm statistics) with fewer, larger kernel calls.

**STAN** is MTAN with one task; ``create("stan", tasks)`` builds one STAN per task, as "single" builds
one network per task (the #P column counts STAN that way: 3.04 for two tasks, 4.56 for three).
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.attention import AttentionModule, shared_unit_per_task, stacked_masks
from ..tasks import Task
from .multitask import HeadFactory, MultiTaskModel, TrunkFactory
from .segnet import SegNetTrunk, xavier_init
from .vgg import VGGTrunk, conv_unit

Features = dict[str, torch.Tensor]


def _encoder_stages(trunk: nn.Module) -> list[nn.Sequential]:
    if isinstance(trunk, SegNetTrunk):
        return list(trunk.encoder)
    if isinstance(trunk, VGGTrunk):
        return trunk.stages()
    raise ValueError(f"MTAN needs a SegNet or VGG trunk (backbone='segnet' or 'vgg'), got {type(trunk).__name__}")


def _run_stage(stage: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A block's first conv unit output ``u`` and last conv unit output ``p``."""
    u = stage[0](x)
    p = u
    for unit in list(stage)[1:]:
        p = unit(p)
    return u, p


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class MTAN(MultiTaskModel):
    """Shared network + one attention network per task (papers.md §2, §2.1).

    Attributes: ``shared`` (the trunk), ``encoder_attention[j][task]`` / ``decoder_attention[k][task]``
    (:class:`AttentionModule`), ``encoder_f[j]`` / ``decoder_f[k]`` (the shared 3x3 units), ``heads``.
    ``fast`` selects the batched path (default) or the reference per-task loop; both compute the same
    (with synchronised batch norms, in multi-process training, the loop runs).
    """

    def __init__(self, tasks: Mapping[str, Task], make_trunk: TrunkFactory, make_head: HeadFactory) -> None:
        trunk = make_trunk()
        super().__init__(tasks, trunk.in_channels, trunk.min_size)
        self.size_multiple = getattr(trunk, "size_multiple", 1)
        self.shared = trunk
        self.fast = True
        names = list(tasks)
        stages = _encoder_stages(trunk)
        self._stages = stages  # plain list: the modules are registered in the trunk
        self.has_decoder = isinstance(trunk, SegNetTrunk)
        width = [stage[-1][0].out_channels for stage in stages]

        def modules(c_in: int, c_out: int) -> nn.ModuleDict:
            return nn.ModuleDict({name: AttentionModule(c_in, c_out) for name in names})

        self.encoder_attention = nn.ModuleList(
            [modules(width[0], width[0])] + [modules(2 * c, c) for c in width[1:]])
        f_out = width[1:] + ([width[-1]] if self.has_decoder else [])
        self.encoder_f = nn.ModuleList([conv_unit(c_in, c_out) for c_in, c_out in zip(width, f_out)])
        self.decoder_attention, self.decoder_f = nn.ModuleList(), nn.ModuleList()
        if self.has_decoder:
            for stage in trunk.decoder:  # deepest first
                c_in, c_out = stage[0][0].in_channels, stage[-1][0].out_channels
                self.decoder_f.append(conv_unit(c_in, c_out))
                self.decoder_attention.append(modules(c_in + c_out, c_out))
            xavier_init(self.encoder_attention)
            xavier_init(self.encoder_f)
            xavier_init(self.decoder_attention)
            xavier_init(self.decoder_f)
        self.heads = nn.ModuleDict({name: make_head(trunk.out_features, task) for name, task in tasks.items()})

    def shared_modules(self) -> list[nn.Module]:
        """The shared SegNet/VGG trunk and the shared 3x3 units of the attention path (the attention
        modules and heads are task-specific)."""
        return [self.shared, self.encoder_f, self.decoder_f]

    # -- the shared network ------------------------------------------------------------------------
    def _shared_features(self, x: torch.Tensor) -> tuple[list[tuple[torch.Tensor, torch.Tensor]],
                                                          list[tuple[torch.Tensor, torch.Tensor]]]:
        """Per encoder block ``(u, p)``; per decoder block ``(unpooled input, output)``."""
        encoder, indices = [], []
        for stage in self._stages:
            u, p = _run_stage(stage, x)
            encoder.append((u, p))
            if self.has_decoder:
                x, idx = self.shared.pool(p)
                indices.append(idx)
            else:
                x = F.max_pool2d(p, 2, 2)
        decoder = []
        if self.has_decoder:
            for stage, idx in zip(self.shared.decoder, reversed(indices)):
                up = self.shared.unpool(x, idx)
                x = stage(up)
                decoder.append((up, x))
        return encoder, decoder

    def _vgg_output(self, attended: torch.Tensor) -> torch.Tensor:
        """The trunk's own ending (max pool, adaptive average pool, flatten) on an attended feature."""
        return self.shared.pool(F.max_pool2d(attended, 2, 2)).flatten(1)

    # -- the attention networks, all tasks at once ---------------------------------------------------
    def _fast_features(self, x: torch.Tensor, masks: dict[str, list[torch.Tensor]] | None) -> Features:
        names = list(self.tasks)
        encoder, decoder = self._shared_features(x)
        prev = None
        for j, (u, p) in enumerate(encoder):
            mask = stacked_masks(list(self.encoder_attention[j].values()), u, prev)
            attended = mask * p.unsqueeze(1)  # (N, T, C, H, W)
            if masks is not None:
                for t, name in enumerate(names):
                    masks[name].append(mask[:, t])
            if j < len(self.encoder_f):
                prev = shared_unit_per_task(self.encoder_f[j], attended, pool=True)
        for k, (up, out) in enumerate(decoder):  # prev: the encoder path's output, then each block's
            prev = _up2(prev.flatten(1, 2)).unflatten(1, (len(names), -1))
            prev = shared_unit_per_task(self.decoder_f[k], prev)
            mask = stacked_masks(list(self.decoder_attention[k].values()), up, prev)
            attended = prev = mask * out.unsqueeze(1)
            if masks is not None:
                for t, name in enumerate(names):
                    masks[name].append(mask[:, t])
        per_task = attended.unbind(1)  # its backward stacks the task gradients once
        if self.has_decoder:
            return dict(zip(names, per_task))
        return {name: self._vgg_output(a) for name, a in zip(names, per_task)}

    def features(self, x: torch.Tensor, masks: dict[str, list[torch.Tensor]] | None = None) -> Features:
        """Each task's last attended feature (the input of its head). With ``masks={}``, the masks of
        every block are stored there: ``masks[task]`` lists encoder blocks, then decoder blocks."""
        if masks is not None:
            masks.clear()
            masks.update({name: [] for name in self.tasks})
        if self.fast and self._plain_batch_norms():
            return self._fast_features(x, masks)
        return reference_features(self, x, masks)

    def _plain_batch_norms(self) -> bool:
        """The batched path calls batch norm functionally; a synchronised batch norm (several processes,
        :mod:`mtlutils.distributed`) must be called as a module, so MTAN then runs the per-task loop."""
        parts = (self.encoder_attention, self.encoder_f, self.decoder_attention, self.decoder_f)
        return all(type(m) is nn.BatchNorm2d for part in parts for m in part.modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(x)
        feats = self.features(x)
        return {name: self.heads[name](feats[name]) for name in self.tasks}

    @torch.no_grad()
    def attention_masks(self, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """``{task: [mask of every block]}`` (encoder blocks, then decoder blocks), without gradients."""
        self.check_input(x)
        masks: dict[str, list[torch.Tensor]] = {}
        self.features(x, masks)
        return masks


def reference_features(model: MTAN, x: torch.Tensor, masks: dict[str, list[torch.Tensor]] | None = None
                       ) -> Features:
    """MTAN's attention networks as the reference code runs them: one task after the other, every module
    and every shared ``f`` called separately for each task. The same function as ``MTAN(fast=True)``."""
    encoder, decoder = model._shared_features(x)
    out: Features = {}
    for name in model.tasks:
        prev = None
        for j, (u, p) in enumerate(encoder):
            module = model.encoder_attention[j][name]
            mask = module.mask(u, prev)
            attended = mask * p
            if masks is not None:
                masks[name].append(mask)
            if j < len(model.encoder_f):
                prev = F.max_pool2d(model.encoder_f[j](attended), 2, 2)
        for k, (up, shared_out) in enumerate(decoder):
            prev = model.decoder_f[k](_up2(prev))
            mask = model.decoder_attention[k][name].mask(up, prev)
            attended = prev = mask * shared_out
            if masks is not None:
                masks[name].append(mask)
        out[name] = attended if model.has_decoder else model._vgg_output(attended)
    return out


class STAN(MultiTaskModel):
    """One single-task MTAN per task (the STAN rows of the MTAN tables): nothing shared between tasks."""

    def __init__(self, tasks: Mapping[str, Task], make_trunk: TrunkFactory, make_head: HeadFactory) -> None:
        nets = {name: MTAN({name: task}, make_trunk, make_head) for name, task in tasks.items()}
        first = next(iter(nets.values()))
        super().__init__(tasks, first.in_channels, first.min_size)
        self.size_multiple = first.size_multiple
        self.nets = nn.ModuleDict(nets)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(x)
        out: dict[str, torch.Tensor] = {}
        for net in self.nets.values():
            out.update(net(x))
        return out
