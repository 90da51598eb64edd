"""Loss-level weightings: ``L = Σ_t λ_t L_t`` from the per-task losses alone (equal, uncertainty, DWA,
random loss weighting)."""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn

from ..tasks import KINDS, Task
from .base import Weighting


class EqualWeighting(Weighting):
    """λ_t = 1 for every task: ``L = Σ_t L_t`` (the "equal" rows of the MTAN tables)."""

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self._check(losses)
        return torch.stack([losses[name] for name in self.task_names]).sum()

    def weights(self) -> dict[str, float]:
        return {name: 1.0 for name in self.task_names}


# ---------------------------------------------------------------------------------------------------
# Uncertainty weighting (Kendall, Gal, Cipolla, CVPR 2018), in the MTAN reference code's form and per kind
# from the table of task kinds: labels -> the classification form, everything else the regression form
REGRESSION_KINDS = tuple(k for k, v in KINDS.items() if not v.labels)
CLASSIFICATION_KINDS = tuple(k for k, v in KINDS.items() if v.labels)


class UncertaintyWeighting(Weighting):
    """Homoscedastic uncertainty weighting with one learned log-variance ``s_t = log σ_t²`` per task.

    ``form="reference"`` (the MTAN authors' released code): every task as a regression,
    ``L = Σ_t L_t / (2 e^{s_t}) + s_t / 2``, ``s_t`` initialised to -0.5.

    ``form="kendall"`` (Kendall et al.'s per-kind form): a regression-like task (``regress``, ``depth``,
    ``normal``) is weighted ``1 / (2σ²)``, a classification-like one (``class``, ``seg``) ``1 / σ²``, each
    plus ``log σ = s / 2``; ``s_t`` initialised to 0 (σ = 1). Needs each task's kind: pass
    :class:`~mtlutils.tasks.Task` objects (or ``kinds={name: kind}``).

    With ``c_t`` the factor (1/2 or 1), minimising ``c_t e^{-s_t} L_t + s_t / 2`` over ``s_t`` alone gives
    ``e^{s_t} = 2 c_t L_t`` and, in both forms, the effective weight ``λ_t = c_t e^{-s_t} = 1 / (2 L_t)``: the forms differ in where ``s`` starts and how it moves, not in the
    fixed point. :meth:`weights` returns the effective ``λ_t`` (the factor in front of ``L_t``).
    """

    accepts_tasks = True
    FORMS = ("reference", "kendall")

    def __init__(self, tasks: "Iterable[Task] | Iterable[str]", form: str = "reference",
                 init: float | None = None, kinds: Mapping[str, str] | None = None) -> None:
        tasks = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
        super().__init__(t.name if isinstance(t, Task) else str(t) for t in tasks)
        if form not in self.FORMS:
            raise ValueError(f"unknown uncertainty form {form!r}; valid choices: {list(self.FORMS)}")
        self.form = form
        kinds = dict(kinds or {})
        kinds.update({t.name: t.kind for t in tasks if isinstance(t, Task)})
        if form == "kendall":
            missing = [n for n in self.task_names if n not in kinds]
            if missing:
                raise ValueError(f"the 'kendall' form weights tasks by kind and needs the kind of {missing}: "
                                 f"pass Task objects or kinds={{name: kind}}")
            unknown = {n: k for n, k in kinds.items() if k not in REGRESSION_KINDS + CLASSIFICATION_KINDS}
            if unknown:
                raise ValueError(f"unknown task kinds {unknown}; expected one of "
                                 f"{REGRESSION_KINDS + CLASSIFICATION_KINDS}")
            factors = [1.0 if kinds[n] in CLASSIFICATION_KINDS else 0.5 for n in self.task_names]
        else:
            factors = [0.5] * len(self.task_names)
        self.kinds = {n: kinds.get(n) for n in self.task_names}
        self.register_buffer("factor", torch.tensor(factors), persistent=False)
        start = (-0.5 if form == "reference" else 0.0) if init is None else float(init)
        self.log_var = nn.Parameter(torch.full((len(self.task_names),), start))

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self._check(losses)
        stacked = torch.stack([losses[name] for name in self.task_names])
        s = self.log_var.to(stacked.dtype)
        return (self.factor.to(stacked.dtype) * torch.exp(-s) * stacked + 0.5 * s).sum()

    def weights(self) -> dict[str, float]:
        lam = (self.factor * torch.exp(-self.log_var.detach())).tolist()
        return dict(zip(self.task_names, lam))

    def sigmas(self) -> dict[str, float]:
        """The learned σ_t = exp(s_t / 2)."""
        return dict(zip(self.task_names, torch.exp(0.5 * self.log_var.detach()).tolist()))


# ---------------------------------------------------------------------------------------------------
# Dynamic Weight Average (Liu, Johns, Davison, CVPR 2019, Eq. 7)
def dwa_weights(history: "torch.Tensor | list[list[float]]", temperature: float = 2.0) -> torch.Tensor:
    """The DWA weights of the next epoch from the epoch-mean unweighted losses so far.

    ``history`` is ``(E, K)``: row ``e`` holds the K tasks' mean training losses of epoch ``e + 1``. For
    the next epoch ``t = E + 1``: ``λ = 1`` while ``t <= 2`` (E < 2), else
    ``w_k = L_k(t-1) / L_k(t-2)`` and ``λ_k = K exp(w_k / T) / Σ_i exp(w_i / T)``, so ``Σ_k λ_k = K``.
    """
    history = torch.as_tensor(history, dtype=torch.float64)
    if history.dim() != 2 or history.shape[1] < 1:
        raise ValueError(f"history must be (epochs, tasks), got shape {tuple(history.shape)}")
    if not temperature > 0:
        raise ValueError(f"the DWA temperature must be positive, got {temperature}")
    k = history.shape[1]
    if history.shape[0] < 2:
        return torch.ones(k, dtype=torch.float64)
    if not bool((history[-2] > 0).all()):
        raise ValueError(f"DWA needs positive epoch losses, got {history[-2].tolist()}")
    ratios = history[-1] / history[-2]
    return k * torch.softmax(ratios / temperature, dim=0)


class DWA(Weighting):
    """Dynamic Weight Average: ``λ_k(t) = K softmax_k(w(t-1) / T)``, ``w_k(t-1) = L_k(t-1) / L_k(t-2)``.

    ``L_k(t)`` is task k's mean **unweighted** training loss over epoch t, received from the training loop
    through :meth:`end_epoch`; the weights stay fixed during an epoch, and are 1 for the first two epochs
    (:func:`dwa_weights`). A task whose loss falls more slowly than the others' gets more weight. The
    loss history is part of the module's state (``get_extra_state``), so it is saved in checkpoints and a
    resumed run continues with the same weights.
    """

    def __init__(self, task_names: Iterable[str], temperature: float = 2.0) -> None:
        super().__init__(task_names)
        if not temperature > 0:
            raise ValueError(f"the DWA temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.loss_history: list[list[float]] = []
        self._lambdas = [1.0] * len(self.task_names)

    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        self._check(mean_losses)
        self.loss_history.append([float(mean_losses[name]) for name in self.task_names])
        self._update()

    def _update(self) -> None:
        history = torch.tensor(self.loss_history, dtype=torch.float64).reshape(-1, len(self.task_names))
        self._lambdas = dwa_weights(history, self.temperature).tolist()

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self._check(losses)
        return sum(lam * losses[name] for lam, name in zip(self._lambdas, self.task_names))

    def weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self._lambdas))

    def get_extra_state(self) -> dict:
        return {"loss_history": [list(row) for row in self.loss_history], "temperature": self.temperature}

    def set_extra_state(self, state: dict) -> None:
        self.loss_history = [list(map(float, row)) for row in state["loss_history"]]
        if float(state["temperature"]) != self.temperature:
            raise ValueError(f"the checkpoint's DWA temperature is {state['temperature']}, this DWA has "
                             f"{self.temperature}")
        self._update()


# ---------------------------------------------------------------------------------------------------
# Random Loss Weighting (Lin et al., TMLR 2022)
class RandomLossWeighting(Weighting):
    """RLW: every step fresh weights ``λ = softmax(z)``, ``z ~ N(0, I_T)``, so ``λ`` lies on the simplex
    (Σ λ = 1); the loss is ``Σ_t λ_t L_t``. The draws come from PyTorch's generator, which ``fit`` seeds
    every epoch, so a resumed run draws the same weights. :meth:`weights` reports the mean of the last
    epoch's draws (about 1/T each)."""

    def __init__(self, task_names: Iterable[str]) -> None:
        super().__init__(task_names)
        self._last = torch.full((len(self.task_names),), 1.0 / len(self.task_names), dtype=torch.float64)
        self._sum = torch.zeros(len(self.task_names), dtype=torch.float64)
        self._steps = 0
        self._epoch_mean = self._last.clone()

    def draw(self) -> torch.Tensor:
        """One draw of the weights (on the CPU generator)."""
        return torch.softmax(torch.randn(len(self.task_names)), dim=0)

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self._check(losses)
        stacked = torch.stack([losses[name] for name in self.task_names])
        lam = self.draw().to(stacked.device, stacked.dtype) if self.training else \
            torch.full_like(stacked, 1.0 / len(self.task_names))
        if self.training:
            self._sum += lam.detach().double().cpu()
            self._steps += 1
        return (lam * stacked).sum()

    def weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self._epoch_mean.tolist()))

    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        if self._steps:
            self._epoch_mean = self._sum / self._steps
        self._sum.zero_()
        self._steps = 0

    def get_extra_state(self) -> dict:
        return {"epoch_mean": self._epoch_mean.tolist()}

    def set_extra_state(self, state: dict) -> None:
        self._epoch_mean = torch.tensor(state["epoch_mean"], dtype=torch.float64)
