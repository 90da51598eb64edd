"""Gradient-level weightings: MGDA-UB, PCGrad, CAGrad and GradNorm (chapter 7).

Each replaces only the update of the shared parameters θ_s (or, for MGDA-UB, derives loss weights from the
gradients of the shared representation); every task-specific parameter gets its own task's plain gradient.
The optimisation problems inside them live in :mod:`mtlutils.weighting.solvers`.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn

from . import solvers
from .base import GradientWeighting, _shared_parameters

MGDA_NORMALISATIONS = ("none", "l2", "loss", "loss+")


class MGDA(GradientWeighting):
    """MGDA-UB (Sener & Koltun, NeurIPS 2018): the loss weights α ∈ Δ of the min-norm point of the convex
    hull of the tasks' gradients, ``min_α ‖Σ_t α_t ∇_Z L_t‖²``, taken w.r.t. the shared representation Z
    (the upper bound, "UB": one backward through the heads per task), then ``Σ_t α_t L_t`` is
    back-propagated. ``normalization`` of each gradient before the min-norm step, as the paper's code:
    ``"l2"`` (by its norm), ``"loss"`` (by the loss), ``"loss+"`` (by loss × norm) or ``"none"``.
    Departure from the authors' code: here the loss weights are ``λ_t = α_t / n_t`` (``n_t`` the
    normaliser), so that ``Σ_t λ_t ∇L_t`` is exactly the min-norm point of the normalised gradients; the
    authors' training script back-propagates ``Σ_t α_t L_t`` (weights on the simplex), which points
    along that min-norm direction only when the normalisers are equal.
    ``on="parameters"`` uses ∇_{θ_s} instead of ∇_Z (the exact MGDA; T full backward passes)."""

    def __init__(self, task_names: Iterable[str], normalization: str = "loss+", on: str = "representation",
                 solver: str = "frank_wolfe") -> None:
        super().__init__(task_names)
        if normalization not in MGDA_NORMALISATIONS:
            raise ValueError(f"unknown MGDA normalization {normalization!r}; valid choices: "
                             f"{list(MGDA_NORMALISATIONS)}")
        if on not in ("representation", "parameters"):
            raise ValueError(f"MGDA on= must be 'representation' or 'parameters', got {on!r}")
        self.normalization, self.needs, self.solver = normalization, on, solver

    def _scales(self, grads: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        norms = grads.norm(dim=1).clamp_min(1e-12)
        losses = losses.to(grads.dtype).clamp_min(1e-12)
        return {"none": torch.ones_like(norms), "l2": norms, "loss": losses,
                "loss+": losses * norms}[self.normalization]

    def weights_from(self, grads: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        scales = self._scales(grads, losses)
        alpha = solvers.min_norm(grads / scales[:, None], method=self.solver)
        return alpha.to(grads.dtype) / scales

    def combine_gradients(self, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # on θ_s the losses are not at hand; "loss"/"loss+" fall back to the norms' part only
        scales = grads.norm(dim=1).clamp_min(1e-12) if self.normalization in ("l2", "loss+") \
            else torch.ones(grads.shape[0], dtype=grads.dtype)
        alpha = solvers.min_norm(grads / scales[:, None], method=self.solver).to(grads.dtype) / scales
        return alpha @ grads, alpha


class PCGrad(GradientWeighting):
    """PCGrad, "gradient surgery" (Yu et al., NeurIPS 2020): each task's gradient of θ_s loses its component
    along every other task's gradient it conflicts with (negative inner product), in a random order per
    step; the update is the sum. Non-conflicting gradients pass unchanged (then it is equal weighting).
    :meth:`weights` reports the mean fraction of each task's gradient norm that survived the projections."""

    def combine_gradients(self, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        projected = solvers.pcgrad(grads)
        kept = projected.norm(dim=1) / grads.norm(dim=1).clamp_min(1e-12)
        return projected.sum(0), kept


class CAGrad(GradientWeighting):
    """Conflict-averse gradient descent (Liu et al., NeurIPS 2021): the update d maximises the worst task's
    improvement ``min_t ⟨g_t, d⟩`` within a ball ``‖d − g₀‖ ≤ c‖g₀‖`` around the mean gradient g₀ (c = 0:
    the mean; the paper uses c = 0.4 on NYUv2). ``rescale`` as the authors' code (1: d / (1 + c²)).
    :meth:`weights` reports the dual weights w of the worst-case combination."""

    def __init__(self, task_names: Iterable[str], c: float = 0.4, rescale: int = 1) -> None:
        super().__init__(task_names)
        if not c >= 0:
            raise ValueError(f"CAGrad's c must be >= 0, got {c}")
        self.c, self.rescale = float(c), int(rescale)

    def combine_gradients(self, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d, w = solvers.cagrad(grads, self.c, self.rescale)
        return d, w


class GradNorm(GradientWeighting):
    """GradNorm (Chen et al., ICML 2018): learned task weights w_t (init 1) that balance the gradient norms
    ``G_t = ‖∇_W w_t L_t‖`` on the last shared layer's weights W towards ``Ḡ · r_t^α``, where
    ``r_t = L̃_t / mean_j L̃_j`` and ``L̃_t = L_t / L_t(first step)`` (the relative inverse training rate).

    Each step: ``L_grad = Σ_t |G_t − sg[Ḡ r_t^α]|`` gives w its gradient (the target is a constant: no
    gradient flows through it, the classic mistake); the network is trained on ``Σ_t w_t L_t`` with w held
    fixed; after the optimiser step (at the start of the next), w is renormalised to ``Σ_t w_t = T``.
    ``lr`` is w's own learning rate (:meth:`param_groups`), ``alpha`` the asymmetry (1.5 on NYUv2 in the
    paper). W is the model's ``last_shared_layer()`` weight if it has one, else the last shared parameter
    with two or more dimensions."""

    needs = "parameters"

    def __init__(self, task_names: Iterable[str], alpha: float = 1.5, lr: float = 0.025) -> None:
        super().__init__(task_names)
        if not alpha >= 0 or not lr > 0:
            raise ValueError(f"GradNorm needs alpha >= 0 and lr > 0, got {alpha}, {lr}")
        self.alpha, self.lr = float(alpha), float(lr)
        self.w = nn.Parameter(torch.ones(len(self.task_names)))
        self.register_buffer("initial_losses", torch.zeros(len(self.task_names)))

    def param_groups(self, lr: float) -> list[dict]:
        """w trains at its own learning rate (``lr`` of the constructor), not the network's."""
        return [{"params": [self.w], "lr": self.lr}]

    @torch.no_grad()
    def _renormalise(self) -> None:
        self.w.clamp_(min=1e-6)
        self.w.mul_(len(self.task_names) / self.w.sum())

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self._check(losses)
        return (self.w.detach() * torch.stack([losses[n] for n in self.task_names])).sum()

    def weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self.w.detach().tolist()))

    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        self._sum.zero_()
        self._steps = 0

    def gradnorm_loss(self, grad_norms: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """``L_grad`` from the unweighted gradient norms ``‖∇_W L_t‖`` and the current losses (Eq. 2 of the
        paper): ``G_t = w_t ‖∇_W L_t‖``, target ``Ḡ · r_t^α`` detached."""
        g = self.w * grad_norms
        ratio = losses / self.initial_losses
        r = ratio / ratio.mean()
        target = (g.mean() * r ** self.alpha).detach()
        return (g - target).abs().sum()

    def backward(self, losses: Mapping[str, torch.Tensor], model: nn.Module,
                 extra: torch.Tensor | None = None) -> None:
        self._check(losses)
        self._renormalise()
        stacked = torch.stack([losses[n] for n in self.task_names])
        if not bool((self.initial_losses > 0).all()):
            self.initial_losses.copy_(stacked.detach().clamp_min(1e-12))
        layer = _last_shared_weight(model)
        norms = torch.stack([torch.autograd.grad(loss, layer, retain_graph=True)[0].norm() for loss in stacked])
        self.w.grad = torch.autograd.grad(self.gradnorm_loss(norms.detach(), stacked.detach()), self.w)[0]
        self._record(self.w.detach(), None)
        total = (self.w.detach() * stacked).sum()
        (total + extra if extra is not None else total).backward()


def _last_shared_weight(model: nn.Module) -> nn.Parameter:
    from .. import distributed

    inner = distributed.unwrap(model)
    get = getattr(inner, "last_shared_layer", None)
    if callable(get):
        return get().weight
    candidates = [p for p in _shared_parameters(model) if p.dim() >= 2]
    if not candidates:
        raise ValueError(f"{type(inner).__name__} has no shared weight matrix for GradNorm")
    return candidates[-1]
