"""MTAN, the Multi-Task Attention Network (Liu, Johns, Davison, CVPR 2019), and STAN.

One shared network (the global feature pool: any trunk with stages,
:class:`~mtlutils.models.contract.StagedTrunk`, i.e. SegNet or the small VGG trunk) and, per task, a chain
of soft attention modules (:class:`~mtlutils.layers.AttentionModule`) that select features from every
block of it (Liu et al. 2019, §3; chapter 4, eq-mtan-attend and eq-mtan-mask; wired as in the authors'
SegNet code, book appendix "Reading the authors' code"):

* **encoder block j**: the mask of task i reads ``[u^(j); f^(j)(â_i^(j-1))]`` (only ``u^(1)`` at the
  first block), ``u`` being the block's first conv output; it multiplies the block's last conv output
  ``p^(j)``; the shared 3x3 unit ``f`` (conv–BN–ReLU, to the next block's width) and a 2x2 max pool
  carry the attended feature to the next block;
* **decoder block k** (trunks with a decoder, SegNet): bilinear x2 up-sampling, then ``f``, then the mask from
  ``[unpooled shared block input; f output]`` multiplies the shared block's output;
* **heads** read the last attended feature, passed through the layers that follow the trunk's last
  stage (``trunk.finish``: VGG's pooling; nothing for SegNet).

The shared network runs its own forward once per batch (``trunk.run_stages``: SegNet's pooling with
indices and unpooling included) and hands over the taps ``u``, ``p`` of every stage; new modules are
initialised as the trunk's own (``trunk.initialise``: Xavier-normal for SegNet, PyTorch's default for VGG).

The ``f`` units are shared by the tasks but run on each task's path. The reference code runs every
task's path separately (:func:`reference_features`, kept for tests and teaching); :class:`MTAN` runs
all tasks of a block at once (``fast=True``, the default: the per-task 1x1 convs as one batched matrix
product, tasks folded into the batch for ``f``), which computes the same function (values, gradients and
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
from .blocks import conv_unit, stage_channels
from .contract import HeadFactory, StagedTrunk, TrunkFactory, require
from .multitask import MultiTaskModel

Features = dict[str, torch.Tensor]


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class MTAN(MultiTaskModel):
    """Shared network + one attention network per task (Liu et al. 2019, §3; chapter 4).

    Attributes: ``shared`` (the trunk), ``encoder_attention[j][task]`` / ``decoder_attention[k][task]``
    (:class:`AttentionModule`), ``encoder_f[j]`` / ``decoder_f[k]`` (the shared 3x3 units), ``heads``.
    ``fast`` selects the batched path (default) or the reference per-task loop; both compute the same
    (with synchronised batch norms, in multi-process training, the loop runs).
    """

    def __init__(self, tasks: Mapping[str, Task], make_trunk: TrunkFactory, make_head: HeadFactory) -> None:
        trunk = make_trunk()
        require(trunk, StagedTrunk, "mtan", "stages to attend to", "backbone='segnet' or 'vgg'")
        super().__init__(tasks, trunk)
        self.shared = trunk
        self.fast = True
        names = list(tasks)
        decoder = trunk.decoder_stages()
        self.has_decoder = bool(decoder)
        width = [stage_channels(stage)[1] for stage in trunk.encoder_stages()]

        def modules(c_in: int, c_out: int) -> nn.ModuleDict:
            return nn.ModuleDict({name: AttentionModule(c_in, c_out) for name in names})

        self.encoder_attention = nn.ModuleList(
            [modules(width[0], width[0])] + [modules(2 * c, c) for c in width[1:]])
        f_out = width[1:] + ([width[-1]] if self.has_decoder else [])
        self.encoder_f = nn.ModuleList([conv_unit(c_in, c_out) for c_in, c_out in zip(width, f_out)])
        self.decoder_attention, self.decoder_f = nn.ModuleList(), nn.ModuleList()
        for stage in decoder:  # deepest first
            c_in, c_out = stage_channels(stage)
            self.decoder_f.append(conv_unit(c_in, c_out))
            self.decoder_attention.append(modules(c_in + c_out, c_out))
        for part in (self.encoder_attention, self.encoder_f, self.decoder_attention, self.decoder_f):
            trunk.initialise(part)
        self.heads = self.task_heads(make_head, trunk.out_features)

    def shared_modules(self) -> list[nn.Module]:
        """The shared trunk and the shared 3x3 units of the attention path (the attention
        modules and heads are task-specific)."""
        return [self.shared, self.encoder_f, self.decoder_f]

    # -- the attention networks, all tasks at once ---------------------------------------------------
    def _fast_features(self, x: torch.Tensor, masks: dict[str, list[torch.Tensor]] | None) -> Features:
        names = list(self.tasks)
        trace = self.shared.run_stages(x)
        encoder, decoder = trace.encoder, trace.decoder
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
        return {name: self.shared.finish(a) for name, a in zip(names, per_task)}

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
    trace = model.shared.run_stages(x)
    encoder, decoder = trace.encoder, trace.decoder
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
        out[name] = model.shared.finish(attended)
    return out


class STAN(MultiTaskModel):
    """One single-task MTAN per task (the STAN rows of the MTAN tables): nothing shared between tasks."""

    def __init__(self, tasks: Mapping[str, Task], make_trunk: TrunkFactory, make_head: HeadFactory) -> None:
        nets = {name: MTAN({name: task}, make_trunk, make_head) for name, task in tasks.items()}
        super().__init__(tasks, next(iter(nets.values())))
        self.nets = nn.ModuleDict(nets)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(x)
        out: dict[str, torch.Tensor] = {}
        for net in self.nets.values():
            out.update(net(x))
        return out
