"""Several processes, one training run: PyTorch's own launcher (``torchrun``) and DistributedDataParallel.

``torchrun --nproc_per_node=N -m mtlutils.experiments run CONFIG`` starts N processes; each calls
:func:`setup`, which joins the process group (NCCL on GPUs, one GPU per process; Gloo on CPUs). Then:

* :class:`ShardedBatchSampler` draws the same shuffled order in every process (one seeded generator,
  reseeded by :func:`~mtlutils.train.fit` every epoch) and gives process ``r`` the ``r``-th slice of every
  *global* batch, so N processes see exactly the batches of one process with the same global batch size;
* :func:`prepare_model` converts batch norm to its synchronised form (PyTorch's ``SyncBatchNorm`` on
  CUDA; :class:`DistributedBatchNorm2d` on CPUs, where ``SyncBatchNorm`` is not implemented) and wraps
  the model in ``DistributedDataParallel``, which averages the gradients over the processes;
* :func:`~mtlutils.train.fit` and :func:`~mtlutils.train.evaluate` reduce the per-epoch loss sums and
  merge the metric states of all processes (:func:`all_reduce_sums`, :func:`merge_metrics`), so every
  process records the same History, and only the main process (rank 0) writes checkpoints and shows
  progress.

With one process none of this is active and everything runs as before.
"""
from __future__ import annotations

import os
from typing import Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from .metrics import Metric


def world() -> tuple[int, int]:
    """``(rank, world size)`` of this process; ``(0, 1)`` without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True in the process that writes files and prints (rank 0, or the only process)."""
    return world()[0] == 0


def active() -> bool:
    """True when several processes train together."""
    return world()[1] > 1


def setup(backend: str | None = None) -> torch.device:
    """Join the process group described by torchrun's environment variables and return this process's
    device (``cuda:LOCAL_RANK`` with CUDA, else the CPU). Without ``WORLD_SIZE > 1`` it does nothing and
    returns :func:`~mtlutils.config.get_device`."""
    from .config import get_device

    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return get_device()
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and os.environ.get("MTL_DEVICE", "cuda").startswith("cuda")
        dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"))
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def cleanup() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ShardedBatchSampler(Sampler[list[int]]):
    """Batches of indices: the global batches of one shuffled order, each split between the processes.

    Every process draws the same permutation from ``generator`` (fit reseeds it from the seed and the
    epoch), cuts it into global batches of ``batch_size`` and keeps its own contiguous slice of each.
    With one process this is ordinary shuffled batching, so a run on N processes sees the same global
    batches as a run on one. ``batch_size`` must be divisible by the number of processes.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, shuffle: bool = True,
                 rank: int | None = None, world_size: int | None = None) -> None:
        r, w = world()
        self.rank = r if rank is None else rank
        self.world_size = w if world_size is None else world_size
        if batch_size < 1 or batch_size % self.world_size:
            raise ValueError(f"the global batch size {batch_size} must be a positive multiple of the number "
                             f"of processes ({self.world_size})")
        if n < 1:
            raise ValueError("ShardedBatchSampler needs a non-empty data set")
        self.n, self.batch_size, self.generator, self.shuffle = n, batch_size, generator, shuffle

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        for start in range(0, self.n, self.batch_size):
            batch = order[start:start + self.batch_size]
            share = torch.tensor_split(batch, self.world_size)[self.rank]
            yield share.tolist()


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose backward also sums over processes (the gradient of a sum of copies)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = grad.clone()
        dist.all_reduce(out)
        return out


class DistributedBatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose batch statistics are taken over the batches of all processes (CPU and GPU).

    PyTorch's ``SyncBatchNorm`` runs only on CUDA; this one sums, over the processes, the per-channel
    count, sum and sum of squares of the input (in float64) with a differentiable all-reduce, so the
    normalisation and its gradient equal those of one process seeing the whole global batch. In eval mode
    or without a process group it is an ordinary ``BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        if x.dim() != 4:
            raise ValueError(f"DistributedBatchNorm2d expects (N, C, H, W), got {tuple(x.shape)}")
        xd = x.double()
        local = torch.cat([xd.sum((0, 2, 3)), (xd * xd).sum((0, 2, 3)),
                           xd.new_tensor([x.shape[0] * x.shape[2] * x.shape[3]])])
        total = _AllReduceSum.apply(local)
        c = x.shape[1]
        count = total[-1]
        mean = total[:c] / count
        var = total[c:2 * c] / count - mean * mean
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                momentum = 0.1 if self.momentum is None else self.momentum
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.to(self.running_var.dtype))
                self.num_batches_tracked.add_(1)
        scale = torch.rsqrt(var + self.eps).to(x.dtype)
        y = (x - mean.to(x.dtype)[None, :, None, None]) * scale[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every ``BatchNorm2d`` by its synchronised form (``SyncBatchNorm`` on CUDA, else
    :class:`DistributedBatchNorm2d`), keeping weights, running statistics and modes."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if type(module) is nn.BatchNorm2d:
        new = DistributedBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                     module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_batchnorm(child, device))
    return module


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move ``model`` to ``device``; with several processes, synchronise its batch norms and wrap it in
    ``DistributedDataParallel`` (whose constructor copies rank 0's weights to every process)."""
    model.to(device)
    if not active():
        return model
    model = convert_batchnorm(model, device).to(device)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_sums(values: Sequence[float]) -> list[float]:
    """Element-wise sums over the processes (float64); the values themselves with one process."""
    if not active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def all_agree_finite(values: torch.Tensor) -> torch.Tensor:
    """A 0-d bool tensor on ``values``' device: every element finite *in every process* (one all-reduce
    of one number when several processes train; no host synchronisation by itself). Every process then
    stops on the same step when one of them diverges, instead of one raising and the others waiting."""
    ok = torch.isfinite(values).all()
    if active():
        flag = ok.to(torch.float32).reshape(1)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        ok = flag[0] > 0
    return ok


def average_gradients(parameters: Sequence[nn.Parameter]) -> None:
    """Average the gradients of parameters that DistributedDataParallel does not manage (e.g. the learned
    log-variances of uncertainty weighting) over the processes."""
    if not active():
        return
    _, size = world()
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(size)


def merge_metrics(metrics: Mapping[str, Metric]) -> None:
    """Merge, in place, the metric states of all processes so that every process holds the metrics of
    the whole evaluation set (in rank order)."""
    if not active():
        return
    _, size = world()
    gathered: list[dict[str, Metric] | None] = [None] * size
    dist.all_gather_object(gathered, dict(metrics))
    for name, metric in metrics.items():
        metric.reset()
        for part in gathered:
            metric.merge(part[name])  # type: ignore[index]
