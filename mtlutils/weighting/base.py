"""The two kinds of weighting and how the training loop talks to them.

**Loss-level** (:class:`Weighting`): the per-task losses become one training loss, ``L = Σ_t λ_t L_t``
(:meth:`Weighting.combine`), and the loop back-propagates it. Equal, uncertainty, DWA and random loss
weighting are of this kind; they see only the losses, so any architecture works with any of them.

**Gradient-level** (:class:`GradientWeighting`): the weighting writes the gradients itself
(:meth:`GradientWeighting.backward`). It declares what it needs (:attr:`GradientWeighting.needs`):

* ``"parameters"``: the per-task gradients ``g_t = ∇_{θ_s} L_t`` of the *shared parameters* θ_s, which the
  model names with ``shared_parameters()``. Every task-specific parameter gets the plain sum of its tasks'
  gradients; the shared ones get :meth:`GradientWeighting.combine_gradients` of the stacked ``g_t``
  (PCGrad, CAGrad, MGDA on θ_s). Costs T backward passes.
* ``"representation"``: the per-task gradients ``∇_Z L_t`` of the *shared representation* Z (the tensor
  all heads read, ``model.shared_representation()``), from which :meth:`GradientWeighting.weights_from`
  makes loss weights; then ``Σ_t λ_t L_t`` is back-propagated once (MGDA-UB). Costs T backward passes
  through the heads only, plus one.

Both kinds are ``nn.Module``: learnable weights (uncertainty's log-variances, GradNorm's w) are trained by
the loop's optimiser, and their state is saved in checkpoints, so resuming works for every weighting.
Gradient-level weightings refuse multi-process training (DistributedDataParallel averages gradients
inside ``backward()``, which per-task gradients bypass) with a clear error.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch
from torch import nn


class Weighting(nn.Module):
    """Base class of loss weightings. Subclasses override :meth:`combine` and, if needed, the rest.

    The training loop calls :meth:`combine` every step (unweighted task losses -> total loss),
    :meth:`end_epoch` after every epoch (the epoch-mean unweighted losses, what DWA needs) and
    :meth:`weights` for the History.
    """

    needs: str | None = None   # loss-level

    def __init__(self, task_names: Iterable[str]) -> None:
        super().__init__()
        self.task_names: list[str] = list(task_names)
        if not self.task_names:
            raise ValueError("a weighting needs at least one task")

    def _check(self, losses: Mapping[str, torch.Tensor]) -> None:
        if set(losses) != set(self.task_names):
            raise KeyError(f"weighting expects losses for tasks {self.task_names}, got {sorted(losses)}")

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The total loss from the unweighted per-task losses."""
        raise NotImplementedError(f"{type(self).__name__} must implement combine()")

    def weights(self) -> dict[str, float]:
        """The current task weights λ_t (for the History and plots)."""
        raise NotImplementedError(f"{type(self).__name__} must implement weights()")

    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        """Called after each training epoch with the epoch-mean unweighted loss of every task."""


def _flat(grads: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate gradients into one vector (None, an unused parameter, as zeros)."""
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, like)])


class GradientWeighting(Weighting):
    """Base of the gradient-level weightings (see the module docstring).

    :meth:`combine` returns the plain sum of the losses (the loop uses it only for its finiteness check);
    :meth:`weights` returns the mean over the last epoch's steps of the weights the method gave the tasks
    (the coefficients of ``g_t`` in the shared update, or the loss weights of MGDA-UB), recorded at the end
    of each epoch. :attr:`last_cosine` holds the cosine similarity of the tasks' gradients at the last step
    (a T×T matrix) for plots.
    """

    needs = "parameters"

    def __init__(self, task_names: Iterable[str]) -> None:
        super().__init__(task_names)
        t = len(self.task_names)
        self._sum = torch.zeros(t, dtype=torch.float64)
        self._steps = 0
        self._epoch_weights = [1.0] * t
        self.last_cosine: torch.Tensor | None = None

    # -- what subclasses define -----------------------------------------------------------------------
    def combine_gradients(self, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``needs == "parameters"``: the shared update from the stacked task gradients ``(T, P)``; returns
        ``(update (P,), weights (T,))`` where ``weights`` are the coefficients of the ``g_t`` in it (for the
        History; methods without exact coefficients report their best description)."""
        raise NotImplementedError(f"{type(self).__name__} must implement combine_gradients()")

    def weights_from(self, grads: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """``needs == "representation"``: loss weights ``(T,)`` from the stacked gradients ``(T, D)`` of the
        shared representation and the task losses ``(T,)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement weights_from()")

    # -- the protocol ---------------------------------------------------------------------------------
    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self._check(losses)
        return torch.stack([losses[name] for name in self.task_names]).sum()

    def weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self._epoch_weights))

    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        if self._steps:
            self._epoch_weights = (self._sum / self._steps).tolist()
        self._sum.zero_()
        self._steps = 0

    def _record(self, weights: torch.Tensor, grads: torch.Tensor | None) -> None:
        self._sum += weights.detach().double().cpu()
        self._steps += 1
        if grads is not None:
            unit = grads / grads.norm(dim=1, keepdim=True).clamp_min(1e-12)
            self.last_cosine = (unit @ unit.T).detach()

    def backward(self, losses: Mapping[str, torch.Tensor], model: nn.Module,
                 extra: torch.Tensor | None = None) -> None:
        """Write the gradients of every trainable parameter of ``model`` (and of ``extra``, a loss term of
        the model's own such as a regulariser, added with weight 1)."""
        self._check(losses)
        stacked = [losses[name] for name in self.task_names]
        if self.needs == "representation":
            self._backward_representation(stacked, model, extra)
        else:
            self._backward_parameters(stacked, model, extra)

    def _backward_parameters(self, losses: list[torch.Tensor], model: nn.Module, extra: torch.Tensor | None
                             ) -> None:
        shared = list(_shared_parameters(model))
        shared_ids = {id(p) for p in shared}
        params = [p for p in model.parameters() if p.requires_grad]
        own = [p for p in params if id(p) not in shared_ids]
        last = len(losses) - 1
        per_task = [torch.autograd.grad(loss, params, retain_graph=t < last or extra is not None,
                                        allow_unused=True) for t, loss in enumerate(losses)]
        index = {id(p): i for i, p in enumerate(params)}
        grads = torch.stack([_flat([g[index[id(p)]] for p in shared], shared) for g in per_task])
        update, weights = self.combine_gradients(grads)
        self._record(weights, grads)
        offset = 0
        for p in shared:
            n = p.numel()
            p.grad = update[offset:offset + n].view_as(p).to(p.dtype).clone()
            offset += n
        for p in own:
            parts = [g[index[id(p)]] for g in per_task if g[index[id(p)]] is not None]
            p.grad = torch.stack(parts).sum(0) if parts else None
        if extra is not None:
            for p, g in zip(params, torch.autograd.grad(extra, params, allow_unused=True)):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g

    def _backward_representation(self, losses: list[torch.Tensor], model: nn.Module,
                                 extra: torch.Tensor | None) -> None:
        z = _shared_representation(model)
        shared_ids = {id(p) for p in _shared_parameters(model)}
        own = [p for p in model.parameters() if p.requires_grad and id(p) not in shared_ids]
        grads = torch.stack([torch.autograd.grad(loss, z, retain_graph=True)[0].reshape(-1) for loss in losses])
        weights = self.weights_from(grads, torch.stack([loss.detach() for loss in losses]))
        self._record(weights, grads)
        plain = sum(losses) + (extra if extra is not None else 0)
        own_grads = torch.autograd.grad(plain, own, retain_graph=True, allow_unused=True) if own else []
        total = sum(w * loss for w, loss in zip(weights.detach().to(losses[0].dtype), losses))
        (total + extra if extra is not None else total).backward()   # θ_s: Σ_t λ_t ∇L_t
        for p, g in zip(own, own_grads):                              # task-specific: their plain gradient
            p.grad = g


def _shared_parameters(model: nn.Module) -> list[nn.Parameter]:
    from .. import distributed

    if distributed.active():
        raise RuntimeError("gradient-level weightings (MGDA, PCGrad, CAGrad, GradNorm) work on one process: "
                           "DistributedDataParallel averages gradients inside backward(), which per-task "
                           "gradients bypass. Train them without torchrun.")
    inner = distributed.unwrap(model)
    get = getattr(inner, "shared_parameters", None)
    shared = [p for p in get() if p.requires_grad] if callable(get) else []
    if not shared:
        raise ValueError(f"{type(inner).__name__} names no shared parameters (shared_parameters()); a "
                         f"gradient-level weighting needs a network whose tasks share a part (e.g. 'split', "
                         f"'mtan', 'dense'), not separate task networks")
    return shared


def _shared_representation(model: nn.Module) -> torch.Tensor:
    from .. import distributed

    if distributed.active():
        _shared_parameters(model)   # raises the multi-process error
    inner = distributed.unwrap(model)
    get = getattr(inner, "shared_representation", None)
    z = get() if callable(get) else None
    if z is None or not z.requires_grad:
        raise ValueError(f"{type(inner).__name__} exposes no shared representation from its last forward "
                         f"(shared_representation()); MGDA-UB needs hard sharing ('split', 'split_wide', "
                         f"'split_deep'), where every head reads one tensor")
    return z
