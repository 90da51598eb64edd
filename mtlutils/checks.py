"""Coursework self-checks: each ``check_*`` function runs a student's implementation on fixed random
inputs, compares it with the package's reference, prints PASS or FAIL with the measured error and the
tolerance, and returns a :class:`CheckResult` (truthy when passed).

A stub that raises ``NotImplementedError`` fails with "not implemented yet"; any other exception fails
with its message, so a check never crashes a notebook.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn


@dataclass
class CheckResult:
    """Outcome of a check: ``passed``, the measured ``error`` and the ``tolerance`` it was held to."""

    name: str
    passed: bool
    message: str
    error: float | None = None
    tolerance: float | None = None

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        measured = ""
        if self.error is not None and self.tolerance is not None:
            measured = f" (max error {self.error:.3g}, tolerance {self.tolerance:.0e})"
        return f"{status} {self.name}: {self.message}{measured}"


def _report(result: CheckResult, verbose: bool) -> CheckResult:
    if verbose:
        print(result)
    return result


def _run(name: str, call: Callable[[], Any]) -> tuple[Any, CheckResult | None]:
    """Call the student's code; turn an exception into a failed result."""
    try:
        return call(), None
    except NotImplementedError:
        return None, CheckResult(name, False, "not implemented yet (the stub raises NotImplementedError)")
    except Exception as exc:  # the student's code may raise anything: report it, don't crash
        return None, CheckResult(name, False, f"raised {type(exc).__name__}: {exc}")


def max_error(got: Any, expected: Any) -> float:
    """Largest absolute difference between two tensors or two dicts of tensors (inf on shape mismatch)."""
    if isinstance(expected, Mapping):
        if not isinstance(got, Mapping) or set(got) != set(expected):
            return float("inf")
        return max((max_error(got[k], expected[k]) for k in expected), default=0.0)
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return float("inf")
    return float((got.double() - expected.double()).abs().max()) if expected.numel() else 0.0


def check_close(name: str, got: Any, expected: Any, tol: float, verbose: bool = True) -> CheckResult:
    """PASS when ``got`` equals ``expected`` within ``tol`` (max absolute error)."""
    err = max_error(got, expected)
    if err == float("inf"):
        shape = (lambda v: {k: tuple(t.shape) for k, t in v.items()} if isinstance(v, Mapping)
                 else tuple(getattr(v, "shape", ())) if isinstance(v, torch.Tensor) else type(v).__name__)
        return _report(CheckResult(name, False, f"wrong structure or shape: got {shape(got)}, "
                                                f"expected {shape(expected)}"), verbose)
    ok = err <= tol
    msg = "matches the reference" if ok else "differs from the reference"
    return _report(CheckResult(name, ok, msg, err, tol), verbose)


# ---------------------------------------------------------------------------------------------------
# chapter 1
def check_shared_forward(shared_forward: Callable[[nn.Module, nn.ModuleDict, torch.Tensor], Mapping[str, torch.Tensor]],
                         verbose: bool = True, seed: int = 0) -> CheckResult:
    """Chapter 1 exercise: the forward pass of a hard-shared network.

    ``shared_forward(trunk, heads, x)`` must return ``{task: heads[task](trunk(x))}`` and run the
    shared trunk exactly once per batch (computing the shared features once is the point of hard
    sharing). Compared in float64 with :class:`mtlutils.models.multitask.HardSharedNetwork`.
    """
    from .models import create
    from .tasks import Task

    name = "check_shared_forward"
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    tasks = [Task("left", "class", 10), Task("right", "class", 10), Task("size", "regress", 1)]
    reference = create("split", tasks, width=0.5).double().eval()
    x = torch.rand(5, 1, 20, 28, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        expected = reference(x)
    calls = []
    hook = reference.trunk.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            got, failure = _run(name, lambda: shared_forward(reference.trunk, reference.heads, x))
    finally:
        hook.remove()
    if failure is not None:
        return _report(failure, verbose)
    if not isinstance(got, Mapping):
        return _report(CheckResult(name, False, f"must return a dict {{task: prediction}}, got "
                                                f"{type(got).__name__}"), verbose)
    result = check_close(name, dict(got), expected, tol=1e-10, verbose=False)
    if result.passed and len(calls) != 1:
        result = CheckResult(name, False, f"the shared trunk ran {len(calls)} times for one batch; hard sharing "
                                          f"computes the shared features once", result.error, result.tolerance)
    return _report(result, verbose)


# ---------------------------------------------------------------------------------------------------
# chapter 2
def _reference_miou(conf: torch.Tensor) -> float:
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    return float(100.0 * (tp[present] / union[present]).mean())


def check_miou(miou_from_confusion: Callable[[torch.Tensor], float], verbose: bool = True,
               seed: int = 0) -> CheckResult:
    """Chapter 2 exercise: mean IoU (in %) from a confusion matrix ``conf[true, predicted]``.

    ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``, averaged over the classes whose union is not empty (a
    class absent from both the labels and the predictions is left out). Tried on random matrices of
    several sizes, one with an absent class and one with a class never predicted.
    """
    name = "check_miou"
    gen = torch.Generator().manual_seed(seed)
    cases = [torch.randint(0, 50, (c, c), generator=gen) for c in (2, 5, 13)]
    absent = torch.randint(0, 50, (4, 4), generator=gen)
    absent[2, :] = 0
    absent[:, 2] = 0  # class 2: no label, no prediction -> excluded
    never_predicted = torch.randint(1, 50, (3, 3), generator=gen)
    never_predicted[:, 1] = 0  # class 1 has labels but is never predicted: IoU 0, included
    cases += [absent, never_predicted]
    worst = 0.0
    for conf in cases:
        got, failure = _run(name, lambda: miou_from_confusion(conf.clone()))
        if failure is not None:
            return _report(failure, verbose)
        try:
            got = float(got)
        except (TypeError, ValueError):
            return _report(CheckResult(name, False, f"must return a number, got {type(got).__name__}"), verbose)
        err = abs(got - _reference_miou(conf))
        if not err == err:  # NaN
            err = float("inf")
        worst = max(worst, err)
    ok = worst <= 1e-9
    msg = "matches the definition on 5 confusion matrices" if ok else \
        "differs from the definition (rows = true class, columns = prediction, % scale, absent classes left out?)"
    return _report(CheckResult(name, ok, msg, worst, 1e-9), verbose)


# ---------------------------------------------------------------------------------------------------
# chapter 3
def check_cross_stitch_backward(stitch_backward: Callable[..., Any], verbose: bool = True,
                                seed: int = 0) -> CheckResult:
    """Chapter 3 exercise: the backward pass of a two-task cross-stitch unit with one α per layer.

    ``stitch_backward(alpha, x_a, x_b, grad_a, grad_b)`` gets ``alpha = [[α_AA, α_AB], [α_BA, α_BB]]``
    (shape ``(2, 2)``), the unit's inputs ``x_a, x_b`` (N, C, H, W) and ``grad_a = ∂L/∂x̃_A``,
    ``grad_b = ∂L/∂x̃_B``, and returns ``(∂L/∂x_A, ∂L/∂x_B, ∂L/∂α)`` (Eq. 2 and the corrected Eq. 3).
    The result is compared in float64 with :class:`mtlutils.layers.CrossStitchFunction` on random
    inputs of three shapes, and the student's backward must pass ``torch.autograd.gradcheck``.
    """
    from torch.autograd import gradcheck

    from .layers.cross_stitch import CrossStitchFunction, mix

    name = "check_cross_stitch_backward"
    gen = torch.Generator().manual_seed(seed)
    worst, swapped, tol = 0.0, True, 1e-10
    for shape in ((2, 3, 4, 5), (3, 1, 2, 2), (1, 4, 3, 1)):
        alpha = torch.rand(2, 2, generator=gen, dtype=torch.float64).requires_grad_()
        xs = [torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2)]
        grads = [torch.randn(*shape, generator=gen, dtype=torch.float64) for _ in range(2)]
        torch.autograd.backward(CrossStitchFunction.apply(alpha, *xs), grads)
        expected = (xs[0].grad, xs[1].grad, alpha.grad)
        inputs = [t.detach().clone() for t in (alpha, *xs, *grads)]
        got, failure = _run(name, lambda: stitch_backward(*inputs))
        if failure is not None:
            return _report(failure, verbose)
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            return _report(CheckResult(name, False, "must return a tuple (grad_x_a, grad_x_b, grad_alpha)"), verbose)
        got = tuple(got)
        if isinstance(got[2], torch.Tensor) and got[2].shape != (2, 2):
            hint = " (one α per layer: sum over the channels too)" if got[2].dim() == 3 else ""
            return _report(CheckResult(name, False, f"grad_alpha must have alpha's shape (2, 2), got "
                                                    f"{tuple(got[2].shape)}{hint}"), verbose)
        keys = ("grad_x_a", "grad_x_b", "grad_alpha")
        worst = max(worst, max_error(dict(zip(keys, got)), dict(zip(keys, expected))))
        swapped = swapped and max_error(got[2], expected[2].T) <= tol < max_error(got[2], expected[2])
    if worst > tol:
        message = "differs from the reference"
        if swapped:
            message = ("grad_alpha has α_AB and α_BA swapped: that is Eq. 3 as printed in the paper; α_AB "
                       "multiplies x_B in x̃_A, so ∂L/∂α_AB = Σ ∂L/∂x̃_A · x_B")
        return _report(CheckResult(name, False, message, worst, tol), verbose)

    class StudentUnit(torch.autograd.Function):
        @staticmethod
        def forward(ctx, alpha, x_a, x_b):
            ctx.save_for_backward(alpha, x_a, x_b)
            return tuple(mix(alpha, [x_a, x_b]))

        @staticmethod
        def backward(ctx, grad_a, grad_b):
            grad_x_a, grad_x_b, grad_alpha = stitch_backward(*ctx.saved_tensors, grad_a, grad_b)
            return grad_alpha, grad_x_a, grad_x_b

    alpha = torch.rand(2, 2, generator=gen, dtype=torch.float64).requires_grad_()
    xs = [torch.randn(2, 3, 2, 2, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2)]
    passed, failure = _run(name, lambda: gradcheck(StudentUnit.apply, (alpha, *xs), raise_exception=False))
    if failure is not None or not passed:
        return _report(failure or CheckResult(name, False, "fails torch.autograd.gradcheck", worst, tol), verbose)
    return _report(CheckResult(name, True, "matches the reference and passes gradcheck (float64)", worst, tol),
                   verbose)


# ---------------------------------------------------------------------------------------------------
# chapter 4 (MTAN and Dynamic Weight Average)
def check_dwa(dwa_weights: Callable[[torch.Tensor, float], torch.Tensor], verbose: bool = True,
              seed: int = 0) -> CheckResult:
    """Chapter 4 exercise: Dynamic Weight Average, ``dwa_weights(history, temperature) -> λ (K,)``.

    ``history`` is a float64 tensor ``(E, K)`` of epoch-mean unweighted losses (row e = epoch e + 1); the
    result holds the weights of epoch E + 1: ones while E < 2, else ``K softmax(w / T)`` with
    ``w = history[-1] / history[-2]``. Compared with :func:`mtlutils.weighting.dwa_weights` for 0 to 6
    epochs, 2 to 4 tasks and temperatures from 0.1 to 50.
    """
    from .weighting import dwa_weights as reference

    name = "check_dwa"
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for epochs in (0, 1, 2, 3, 6):
        for k in (2, 3, 4):
            history = torch.rand(epochs, k, generator=gen, dtype=torch.float64) * 2 + 0.05
            for temperature in (0.1, 2.0, 50.0):
                got, failure = _run(name, lambda: dwa_weights(history.clone(), temperature))
                if failure is not None:
                    return _report(failure, verbose)
                expected = reference(history, temperature)
                if not isinstance(got, torch.Tensor):
                    try:
                        got = torch.as_tensor(got, dtype=torch.float64)
                    except (TypeError, ValueError):
                        return _report(CheckResult(name, False, f"must return a tensor of {k} weights, got "
                                                                f"{type(got).__name__}"), verbose)
                err = max_error(got.reshape(-1) if got.numel() == k else got, expected)
                if err == float("inf"):
                    return _report(CheckResult(name, False, f"with {epochs} epochs and {k} tasks: expected {k} "
                                                            f"weights, got shape {tuple(got.shape)}"), verbose)
                worst = max(worst, err if err == err else float("inf"))
    ok = worst <= 1e-9
    msg = ("matches DWA on 45 loss histories" if ok else
           "differs from DWA (λ = 1 for the first two epochs? ratio of the last two epochs? K · softmax(w / T)?)")
    return _report(CheckResult(name, ok, msg, worst, 1e-9), verbose)


def check_attention(attend: Callable[..., Any], verbose: bool = True, seed: int = 0) -> CheckResult:
    """Chapter 4 exercise: the MTAN attention module's forward pass from its equations.

    ``attend(module, u, p, prev=None)`` must return ``(mask, attended)`` with ``mask = h(g([u; prev]))``
    (``g(u)`` without ``prev``) and ``attended = mask ⊙ p``, calling ``module.g`` and ``module.h`` (not
    the module's own ``mask``/``forward``). Compared in float64 with
    :class:`mtlutils.layers.AttentionModule` on random inputs, with and without ``prev``.
    """
    from .layers import AttentionModule

    name = "check_attention"
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    worst = 0.0
    for c_u, c_prev, c in ((4, 0, 4), (6, 6, 6), (5, 3, 2)):
        module = AttentionModule(c_u + c_prev, c).double().train()
        u = torch.randn(3, c_u, 5, 4, generator=gen, dtype=torch.float64)
        p = torch.randn(3, c, 5, 4, generator=gen, dtype=torch.float64)
        prev = torch.randn(3, c_prev, 5, 4, generator=gen, dtype=torch.float64) if c_prev else None
        with torch.no_grad():
            expected = module.mask(u, prev)
            expected = (expected, expected * p)
        calls = []
        own_mask = module.mask

        def spy(*args, **kwargs):  # the student's code must not use the module's own mask or forward
            calls.append("mask")
            return own_mask(*args, **kwargs)

        module.mask = spy
        hook = module.register_forward_pre_hook(lambda *_: calls.append("forward"))
        try:
            with torch.no_grad():
                got, failure = _run(name, lambda: attend(module, u, p, prev))
        finally:
            hook.remove()
            del module.mask
        if failure is not None:
            return _report(failure, verbose)
        if calls:
            return _report(CheckResult(name, False, f"called the module's own {calls[0]}(): build the mask from "
                                                    f"module.g and module.h"), verbose)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            return _report(CheckResult(name, False, f"must return (mask, attended), got {type(got).__name__}"),
                           verbose)
        result = check_close(name, {"mask": got[0], "attended": got[1]},
                             {"mask": expected[0], "attended": expected[1]}, tol=1e-10, verbose=False)
        if not result.passed and result.error is None:
            return _report(result, verbose)
        worst = max(worst, result.error)
    ok = worst <= 1e-10
    msg = ("matches AttentionModule with and without prev" if ok else
           "differs from AttentionModule (order of [u; prev]? sigmoid mask times p?)")
    return _report(CheckResult(name, ok, msg, worst, 1e-10), verbose)
