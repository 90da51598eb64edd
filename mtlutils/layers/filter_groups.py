"""Stochastic filter groups (Bragman et al., ICCV 2019), generalised to T tasks.

Every output kernel ``k`` of a convolution belongs to one of ``T + 1`` groups: a specialist group per task
(indices ``0 .. T-1``) or the shared group (index ``T``, :func:`shared_index`). Routing (the paper's
equations for two tasks, generalised): a kernel of task ``t``'s group reads the input channels of groups
``t`` and shared, ``F_t^(l+1) = h([F_t^(l) | F_s^(l)] * G_t^(l+1))``; a shared kernel reads only shared
channels, ``F_s^(l+1) = h(F_s^(l) * G_s^(l+1))``. The assignment ``z^k`` is one-hot, sampled from
``Cat(p^k)`` with the straight-through Gumbel-Softmax, so ``W_i^k = z_i^k M^k`` is differentiable in ``p``.

Two implementations of the same function ``y_k = Σ_i z_i^k · ((x ⊙ m_i) * M_k) + b_k``, where
``m_i[c] = Σ_j R[i, j] z_in[c, j]`` is the input mask of group ``i`` and ``R`` the routing matrix
(:func:`routing_matrix`):

* :func:`filter_group_conv_masked` reads like the equations: one convolution per group on the masked
  input, each output scaled by its kernels' ``z_i`` and summed: ``T + 1`` convolutions.
* :func:`filter_group_conv` is the same function computed with one convolution: by linearity the input
  masks move onto the weights, ``W_eff[k, c] = M[k, c] · A[k, c]`` with ``A = Z_out R Z_in^T``. It gathers,
  for every kernel, exactly the input channels its group may read (zeroing the others) and convolves once;
  the outputs land in place, so no scatter is needed. Same values and the same gradients for ``x``, ``M``,
  ``z_out`` and ``z_in`` (tested, also with gradcheck), at the FLOPs of one ordinary convolution.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .gumbel import gumbel_softmax

__all__ = ["FilterGroupConv", "filter_group_conv", "filter_group_conv_masked", "routing_matrix",
           "kernel_input_mask", "routed_weight", "shared_index", "fixed_assignment", "group_entropy", "log_probs", "PARAMETERIZATIONS",
           "IMPLEMENTATIONS"]

PARAMETERIZATIONS = ("softmax", "softplus")
IMPLEMENTATIONS = ("fast", "masked")


def shared_index(num_tasks: int) -> int:
    """Index of the shared group among the ``T + 1`` groups (the last one)."""
    return num_tasks


def routing_matrix(num_tasks: int, dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """``R[i, j] = 1`` when a kernel of group ``i`` reads input channels of group ``j``: its own group and
    the shared one for a task group, only the shared one for the shared group. Shape ``(T+1, T+1)``.
    The result is cached: do not modify it in place."""
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
    return _routing_matrix(num_tasks, dtype, torch.device(device) if device is not None else torch.device("cpu"))


@lru_cache(maxsize=64)
def _routing_matrix(num_tasks: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    r = torch.eye(num_tasks + 1, dtype=dtype, device=device)
    r[:, shared_index(num_tasks)] = 1.0
    return r


def _check_groups(name: str, z: torch.Tensor, channels: int, groups: int) -> None:
    if z.dim() != 2 or z.shape != (channels, groups):
        raise ValueError(f"{name} must have shape (channels, T+1) = ({channels}, {groups}), got {tuple(z.shape)}")


def kernel_input_mask(z_out: torch.Tensor, z_in: torch.Tensor) -> torch.Tensor:
    """``A = Z_out R Z_in^T``, shape ``(C_out, C_in)``: ``A[k, c] = 1`` when kernel ``k`` reads channel ``c``
    (for one-hot ``z``; for relaxed ``z`` the same bilinear form)."""
    r = routing_matrix(z_out.shape[1] - 1, z_out.dtype, z_out.device)
    return z_out @ r @ z_in.t()


def _shared_input(channels: int, groups: int, like: torch.Tensor) -> torch.Tensor:
    """Groups of an input whose channels are all shared (the image); cached, never modify it."""
    return _all_shared(channels, groups, like.dtype, like.device)


@lru_cache(maxsize=64)
def _all_shared(channels: int, groups: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    z = torch.zeros(channels, groups, dtype=dtype, device=device)
    z[:, -1] = 1.0
    return z


def routed_weight(weight: torch.Tensor, z_out: torch.Tensor, z_in: torch.Tensor) -> torch.Tensor:
    """The kernels with every (kernel, input channel) pair that the routing forbids set to zero:
    ``M ⊙ A[:, :, None, None]``, ``A = Z_out R Z_in^T`` (:func:`kernel_input_mask`). Autograd differentiates
    it; a hand-written backward as one autograd node was measured slower on a CPU (a Python backward costs
    more than the few small built-in nodes it replaces)."""
    return weight * kernel_input_mask(z_out, z_in)[:, :, None, None]


def filter_group_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, z_out: torch.Tensor,
                      z_in: torch.Tensor | None = None, stride: int = 1, padding: int = 1,
                      dilation: int = 1) -> torch.Tensor:
    """Filter-group convolution, one convolution with routed weights (the efficient form).

    Args:
        x: input ``(N, C_in, H, W)``.
        weight, bias: the kernels ``M`` ``(C_out, C_in, kh, kw)`` and their biases ``(C_out,)`` or None.
        z_out: group of every output kernel ``(C_out, T+1)``, one-hot (or relaxed).
        z_in: group of every input channel ``(C_in, T+1)``; None: all input channels shared (the image).
    """
    groups = z_out.shape[1]
    _check_groups("z_out", z_out, weight.shape[0], groups)
    z_in = _shared_input(weight.shape[1], groups, z_out) if z_in is None else z_in
    _check_groups("z_in", z_in, weight.shape[1], groups)
    return F.conv2d(x, routed_weight(weight, z_out, z_in), bias, stride, padding, dilation)


def filter_group_conv_masked(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                             z_out: torch.Tensor, z_in: torch.Tensor | None = None, stride: int = 1,
                             padding: int = 1, dilation: int = 1) -> torch.Tensor:
    """Filter-group convolution as the equations read: per group ``i``, convolve the input channels the
    group may read (``x ⊙ m_i``) with every kernel, keep the kernels of the group (``z_i``), sum over groups.
    ``T + 1`` convolutions; the reference for :func:`filter_group_conv` (same arguments)."""
    groups = z_out.shape[1]
    _check_groups("z_out", z_out, weight.shape[0], groups)
    z_in = _shared_input(weight.shape[1], groups, z_out) if z_in is None else z_in
    _check_groups("z_in", z_in, weight.shape[1], groups)
    r = routing_matrix(groups - 1, z_out.dtype, z_out.device)
    out = 0
    for i in range(groups):
        m_i = z_in @ r[i]                                   # (C_in,): channels group i reads
        f_i = F.conv2d(x * m_i[None, :, None, None], weight, None, stride, padding, dilation)
        out = out + z_out[:, i][None, :, None, None] * f_i  # W_i^k = z_i^k M^k
    if bias is not None:
        out = out + bias[None, :, None, None]
    return out


def log_probs(logits: torch.Tensor, parameterization: str = "softmax") -> torch.Tensor:
    """``log p`` of grouping logits ``v`` ``(K, T+1)``: ``log_softmax(v)``, or for the authors' softplus form
    ``log(softplus(v) / Σ softplus(v))``."""
    if parameterization == "softmax":
        return F.log_softmax(logits, dim=-1)
    if parameterization == "softplus":
        sp = F.softplus(logits).clamp_min(1e-30)
        return sp.log() - sp.sum(dim=-1, keepdim=True).log()
    raise ValueError(f"unknown parameterization {parameterization!r}; valid choices: {list(PARAMETERIZATIONS)}")


def group_entropy(log_p: torch.Tensor) -> torch.Tensor:
    """Entropy ``H(p) = -Σ_i p_i log p_i`` of every row of ``log_p`` (log-probabilities ``(K, T+1)``)."""
    return -(log_p.exp() * log_p).sum(dim=-1)


def fixed_assignment(channels: int, proportions: Sequence[float]) -> torch.Tensor:
    """Group index of each of ``channels`` kernels for fixed proportions (one per group, task groups
    first, shared last), in contiguous blocks; counts by largest remainder, so they sum to ``channels``."""
    props = torch.as_tensor(list(proportions), dtype=torch.float64)
    if props.dim() != 1 or len(props) < 2 or bool((props < 0).any()) or float(props.sum()) <= 0:
        raise ValueError(f"proportions must be T+1 >= 2 non-negative numbers with a positive sum, got "
                         f"{list(proportions)}")
    exact = props / props.sum() * channels
    counts = exact.floor().long()
    order = torch.argsort(exact - counts, descending=True, stable=True)
    counts[order[: channels - int(counts.sum())]] += 1
    return torch.repeat_interleave(torch.arange(len(props)), counts)


class FilterGroupConv(nn.Module):
    """A convolution whose kernels are stochastically grouped into ``T`` task groups and a shared group.

    ``forward(x, groups_in=None) -> (y, groups_out)``: ``groups_in`` is the one-hot group of every input
    channel (the previous layer's ``groups_out``; None for an all-shared input such as the image) and
    ``groups_out`` the group of every kernel used in this call. In training every call draws one grouping
    for the whole batch (straight-through Gumbel-Softmax at temperature :attr:`tau`); in evaluation the
    grouping is ``argmax p`` (``inference="argmax"``, deterministic) or a fresh sample
    (``inference="sample"``, the authors' stochastic evaluation).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, bias: as ``nn.Conv2d``.
        num_tasks: ``T``; the groups are ``0 .. T-1`` (tasks) and ``T`` (shared).
        parameterization: ``"softmax"`` (``p = softmax(v)``) or ``"softplus"`` (the authors' code,
            ``p = softplus(v) / Σ softplus(v)``).
        init: initial ``p`` of every kernel: ``"uniform"``, ``"dirichlet"`` (one draw of ``Dir(1)`` per
            kernel) or ``T+1`` probabilities (a biased start).
        fixed: a fixed, non-learnable grouping instead of a learned one: a group index per kernel
            (``(C_out,)`` integers) or ``T+1`` proportions (see :func:`fixed_assignment`).
        impl: ``"fast"`` (:func:`filter_group_conv`) or ``"masked"`` (:func:`filter_group_conv_masked`).
    """

    def __init__(self, in_channels: int, out_channels: int, num_tasks: int, kernel_size: int = 3,
                 stride: int = 1, padding: int = 1, dilation: int = 1, bias: bool = True,
                 parameterization: str = "softmax", init: "str | Sequence[float]" = "uniform",
                 fixed: "torch.Tensor | Sequence[float] | None" = None, impl: str = "fast") -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; valid choices: {list(PARAMETERIZATIONS)}")
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"unknown impl {impl!r}; valid choices: {list(IMPLEMENTATIONS)}")
        self.in_channels, self.out_channels, self.num_tasks = in_channels, out_channels, num_tasks
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.parameterization, self.impl = parameterization, impl
        self.tau = 1.0
        self.inference = "argmax"
        reference = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=bias)
        self.weight = reference.weight
        self.bias = reference.bias
        groups = num_tasks + 1
        self._shared_logits = None  # (bank, first row) when the logits live in a network's bank
        if fixed is not None:
            assignment = self._fixed(fixed, out_channels, groups)
            self.register_buffer("fixed_groups", F.one_hot(assignment, groups).float())
            self.group_logits = None
        else:
            self.register_buffer("fixed_groups", None)
            self.group_logits = nn.Parameter(torch.zeros(out_channels, groups))
            self.reset_groups(init)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, num_tasks: int, **kwargs) -> "FilterGroupConv":
        """A filter-group version of ``conv`` that uses ``conv``'s own weight and bias (so a network keeps
        its initialisation) and draws no random numbers except for a Dirichlet ``init``."""
        if conv.groups != 1 or conv.padding_mode != "zeros":
            raise ValueError("only ordinary convolutions (groups=1, zero padding) can be filter-grouped")
        init = kwargs.pop("init", "uniform")
        with torch.random.fork_rng(devices=[]):
            layer = cls(conv.in_channels, conv.out_channels, num_tasks, conv.kernel_size, conv.stride,
                        conv.padding, conv.dilation, bias=conv.bias is not None, **kwargs)
        layer.weight = conv.weight
        layer.bias = conv.bias
        if layer.learnable:
            layer.reset_groups(init)
        return layer

    @staticmethod
    def _fixed(fixed, channels: int, groups: int) -> torch.Tensor:
        fixed_t = torch.as_tensor(fixed)
        if not fixed_t.is_floating_point() and fixed_t.dim() == 1 and len(fixed_t) == channels:
            if bool((fixed_t < 0).any()) or bool((fixed_t >= groups).any()):
                raise ValueError(f"fixed group indices must lie in 0..{groups - 1} (T tasks, then shared), "
                                 f"got {fixed_t.tolist()}")
            return fixed_t.long()
        if fixed_t.dim() == 1 and len(fixed_t) == groups:
            return fixed_assignment(channels, fixed_t.tolist())
        raise ValueError(f"fixed must be {channels} integer group indices or {groups} proportions "
                         f"(T tasks, then shared), got {tuple(fixed_t.shape)} {fixed_t.dtype}")

    @property
    def learnable(self) -> bool:
        return self.group_logits is not None or self._shared_logits is not None

    @property
    def logits(self) -> torch.Tensor:
        """The grouping logits ``v`` ``(C_out, T+1)`` (this layer's rows of a shared bank, see
        :meth:`share_logits`)."""
        if self._shared_logits is not None:
            bank, start = self._shared_logits
            return bank.narrow(0, start, self.out_channels)
        if self.group_logits is None:
            raise RuntimeError("this layer has a fixed grouping; it has no logits")
        return self.group_logits

    def share_logits(self, bank: nn.Parameter, start: int, copy: bool = True) -> None:
        """Keep this layer's logits as rows ``start : start + C_out`` of ``bank``, a parameter owned by the
        network, instead of a parameter of its own: one tensor for all layers means one optimiser update
        and one sampling call per step instead of one per layer. Values are copied into the bank, unless
        ``copy`` is false (a layer tied to rows that another layer already owns)."""
        if not self.learnable:
            raise RuntimeError("this layer has a fixed grouping; there are no logits to share")
        if copy:
            with torch.no_grad():
                bank.narrow(0, start, self.out_channels).copy_(self.logits)
        del self.group_logits
        self.group_logits = None
        self._shared_logits = (bank, start)

    @torch.no_grad()
    def reset_groups(self, init: "str | Sequence[float]" = "uniform") -> None:
        """Set the initial grouping probabilities ``p`` (see the class arguments)."""
        if not self.learnable:
            raise RuntimeError("this layer has a fixed grouping; there is no p to initialise")
        groups = self.num_tasks + 1
        if isinstance(init, str):
            if init == "uniform":
                p = torch.full((self.out_channels, groups), 1.0 / groups)
            elif init == "dirichlet":
                p = torch.distributions.Dirichlet(torch.ones(groups)).sample((self.out_channels,))
            else:
                raise ValueError(f"unknown init {init!r}; use 'uniform', 'dirichlet' or {groups} probabilities")
        else:
            p = torch.as_tensor(list(init), dtype=torch.float32)
            if p.shape != (groups,) or bool((p <= 0).any()):
                raise ValueError(f"init probabilities must be {groups} positive numbers (T tasks, then shared), "
                                 f"got {list(init)}")
            p = (p / p.sum()).expand(self.out_channels, groups)
        p = p.clamp_min(1e-6)
        p = p / p.sum(dim=1, keepdim=True)
        if self.parameterization == "softmax":
            v = p.log()
        else:  # softplus(v) = p, the inverse of the softplus
            v = torch.log(torch.expm1(p))
        self.logits.copy_(v.to(self.logits))

    def log_probs(self) -> torch.Tensor:
        """``log p`` ``(C_out, T+1)`` of the learned grouping (one-hot's log for a fixed one)."""
        if not self.learnable:
            return self.fixed_groups.clamp_min(1e-30).log()
        return log_probs(self.logits, self.parameterization)

    def probs(self) -> torch.Tensor:
        """The grouping distribution ``p`` ``(C_out, T+1)``; rows sum to 1."""
        return self.fixed_groups if not self.learnable else self.log_probs().exp()

    def entropy(self) -> torch.Tensor:
        """``Σ_k H(p^k)`` over this layer's kernels (0 for a fixed grouping)."""
        if not self.learnable:
            return self.weight.new_zeros(())
        return group_entropy(self.log_probs()).sum()

    def sample_groups(self) -> torch.Tensor:
        """One grouping ``(C_out, T+1)``, one-hot: a straight-through sample in training or with
        ``inference="sample"``, else ``argmax p``; the fixed grouping if there is one."""
        if not self.learnable:
            return self.fixed_groups
        if self.training or self.inference == "sample":
            return gumbel_softmax(self.log_probs(), tau=self.tau, hard=True, dim=1)
        if self.inference != "argmax":
            raise ValueError(f"unknown inference {self.inference!r}; use 'argmax' or 'sample'")
        p = self.log_probs()
        return F.one_hot(p.argmax(dim=1), p.shape[1]).to(p.dtype)

    def forward(self, x: torch.Tensor, groups_in: torch.Tensor | None = None,
                groups_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y, groups_out)``; ``groups_out`` may be given (e.g. in tests) instead of drawn."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"FilterGroupConv expects input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        z_out = self.sample_groups() if groups_out is None else groups_out
        z_out = z_out.to(x.dtype)
        z_in = None if groups_in is None else groups_in.to(x.dtype)
        conv = filter_group_conv if self.impl == "fast" else filter_group_conv_masked
        return conv(x, self.weight, self.bias, z_out, z_in, self.stride, self.padding, self.dilation), z_out

    def extra_repr(self) -> str:
        kind = "fixed" if not self.learnable else f"learned ({self.parameterization})"
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"num_tasks={self.num_tasks}, grouping={kind}, impl={self.impl}")
