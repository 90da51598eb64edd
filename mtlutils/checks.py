"""Coursework self-checks: each ``check_*`` function runs a student's implementation on fixed random
inputs, compares it with the package's reference, prints PASS or FAIL with the measured error and the
tolerance, and returns a :class:`CheckResult` (truthy when passed).

A stub that raises ``NotImplementedError`` fails with "not implemented yet"; any other exception fails
with its message. A result that holds NaN or inf fails and says so; a result of the wrong type or shape
(``None``, a list, a tensor of another shape) fails and names what was expected. A check never crashes
a notebook: whatever the student's function does, the check returns a :class:`CheckResult`.
"""
from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar

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


_Check = TypeVar("_Check", bound=Callable[..., CheckResult])


def _never_crash(expects: str) -> Callable[[_Check], _Check]:
    """Decorate a check so that an exception in handling the student's result is a FAIL, not a crash.

    The explicit checks inside each ``check_*`` give the precise messages; this is the net under them.
    ``expects`` says what the student's function should return.
    """
    def decorate(check: _Check) -> _Check:
        signature = inspect.signature(check)

        @functools.wraps(check)
        def safe(*args: Any, **kwargs: Any) -> CheckResult:
            try:
                return check(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - a check never crashes a notebook
                try:
                    verbose = bool(signature.bind(*args, **kwargs).arguments.get("verbose", True))
                except TypeError:
                    verbose = True
                return _report(CheckResult(check.__name__, False,
                                           f"could not check the result ({type(exc).__name__}: {exc}); "
                                           f"expected {expects}"), verbose)
        return safe  # type: ignore[return-value]
    return decorate


def _describe(value: Any) -> str:
    """Type and shape of ``value`` for a message: ``a tensor of shape (2, 3)``, ``None``, ``a list of 2``."""
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def _shape(value: Any) -> Any:
    """Shape of a tensor, ``{key: shape}`` of a dict, else the type's name (for structure messages)."""
    if isinstance(value, Mapping):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    return type(value).__name__


def _same_structure(got: Any, expected: Any) -> bool:
    """Whether ``got`` has the keys and tensor shapes of ``expected`` (a tensor or a dict of tensors)."""
    if isinstance(expected, Mapping):
        return (isinstance(got, Mapping) and set(got) == set(expected)
                and all(_same_structure(got[k], expected[k]) for k in expected))
    return isinstance(got, torch.Tensor) and got.shape == expected.shape


def _non_finite(value: Any, where: str = "the result") -> str | None:
    """Where ``value`` (a tensor, a number, or a dict/list/tuple of them) holds NaN or inf; None if nowhere."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            return None if bool(torch.isfinite(value.detach()).all()) else where
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else where
    if isinstance(value, Mapping):
        items = [(f"{where} {k!r}" if where != "the result" else repr(k), v) for k, v in value.items()]
    elif isinstance(value, (list, tuple)):
        items = [(f"{where}[{i}]", v) for i, v in enumerate(value)]
    else:
        return None
    for label, item in items:
        found = _non_finite(item, label)
        if found is not None:
            return found
    return None


def _not_finite_result(name: str, where: str, expected: str = "finite values") -> CheckResult:
    return CheckResult(name, False, f"returned non-finite values (NaN or inf) in {where}; expected {expected}")


def _run(name: str, call: Callable[[], Any]) -> tuple[Any, CheckResult | None]:
    """Call the student's code; turn an exception into a failed result."""
    try:
        return call(), None
    except NotImplementedError:
        return None, CheckResult(name, False, "not implemented yet (the stub raises NotImplementedError)")
    except Exception as exc:  # the student's code may raise anything: report it, don't crash
        return None, CheckResult(name, False, f"raised {type(exc).__name__}: {exc}")


def max_error(got: Any, expected: Any) -> float:
    """Largest absolute difference between two tensors or two dicts of tensors (inf on a structure or
    shape mismatch, and where the difference is NaN or inf)."""
    if isinstance(expected, Mapping):
        if not isinstance(got, Mapping) or set(got) != set(expected):
            return math.inf
        return max((max_error(got[k], expected[k]) for k in expected), default=0.0)
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return math.inf
    if not expected.numel():
        return 0.0
    err = float((got.detach().double() - expected.detach().double()).abs().max())
    return err if math.isfinite(err) else math.inf


def check_close(name: str, got: Any, expected: Any, tol: float, verbose: bool = True) -> CheckResult:
    """PASS when ``got`` equals ``expected`` (a tensor or a dict of tensors) within ``tol`` (max absolute
    error); FAIL naming the expected structure and shapes, or where ``got`` holds NaN or inf."""
    if not _same_structure(got, expected):
        return _report(CheckResult(name, False, f"wrong structure or shape: got {_shape(got)}, "
                                                f"expected {_shape(expected)}"), verbose)
    where = _non_finite(got)
    if where is not None:
        return _report(_not_finite_result(name, where, "finite values close to the reference"), verbose)
    err = max_error(got, expected)
    ok = err <= tol
    msg = "matches the reference" if ok else "differs from the reference"
    return _report(CheckResult(name, ok, msg, err, tol), verbose)


# ---------------------------------------------------------------------------------------------------
# chapter 1
@_never_crash("a dict {task: heads[task](trunk(x))} of tensors")
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
                                                f"{_describe(got)}; expected {{task: heads[task](trunk(x))}}"),
                       verbose)
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


@_never_crash("a number: the mean IoU in %")
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
        if isinstance(got, (str, bytes, bool)) or (isinstance(got, torch.Tensor) and got.numel() != 1):
            return _report(CheckResult(name, False, f"must return a number, got {_describe(got)}; expected one "
                                                    f"number, the mean IoU in %"), verbose)
        try:
            got = float(got)
        except (TypeError, ValueError):
            return _report(CheckResult(name, False, f"must return a number, got {_describe(got)}; expected one "
                                                    f"number, the mean IoU in %"), verbose)
        if not math.isfinite(got):
            return _report(CheckResult(name, False, f"returned {got} (non-finite) for a {conf.shape[0]}-class "
                                                    f"matrix; expected a finite mean IoU in % (a class with an "
                                                    f"empty union has IoU 0/0: leave it out of the mean)"), verbose)
        worst = max(worst, abs(got - _reference_miou(conf)))
    ok = worst <= 1e-9
    msg = "matches the definition on 5 confusion matrices" if ok else \
        "differs from the definition (rows = true class, columns = prediction, % scale, absent classes left out?)"
    return _report(CheckResult(name, ok, msg, worst, 1e-9), verbose)


# ---------------------------------------------------------------------------------------------------
# chapter 3
@_never_crash("a tuple (grad_x_a, grad_x_b, grad_alpha) of tensors shaped like x_a, x_b and alpha (2, 2)")
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
            return _report(CheckResult(name, False, f"must return a tuple (grad_x_a, grad_x_b, grad_alpha), got "
                                                    f"{_describe(got)}; expected three tensors shaped like x_a, x_b "
                                                    f"and alpha"), verbose)
        got = tuple(got)
        if isinstance(got[2], torch.Tensor) and got[2].shape != (2, 2):
            hint = " (one α per layer: sum over the channels too)" if got[2].dim() == 3 else ""
            return _report(CheckResult(name, False, f"grad_alpha must have alpha's shape: expected (2, 2), got "
                                                    f"{tuple(got[2].shape)}{hint}"), verbose)
        keys = ("grad_x_a", "grad_x_b", "grad_alpha")
        for key, value, want in zip(keys, got, expected):
            if not isinstance(value, torch.Tensor) or value.shape != want.shape:
                return _report(CheckResult(name, False, f"{key}: expected a tensor of shape {tuple(want.shape)}, "
                                                        f"got {_describe(value)}"), verbose)
            if _non_finite(value) is not None:
                return _report(_not_finite_result(name, key), verbose)
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
        return _report(failure or CheckResult(name, False, "matches the reference on the three test shapes but "
                                                           "fails torch.autograd.gradcheck on another input"),
                       verbose)
    return _report(CheckResult(name, True, "matches the reference and passes gradcheck (float64)", worst, tol),
                   verbose)


# ---------------------------------------------------------------------------------------------------
# chapter 4 (MTAN and Dynamic Weight Average)
@_never_crash("a tensor of K weights, shape (K,)")
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
                    return _report(CheckResult(name, False, f"must return a tensor of {k} weights, got "
                                                            f"{_describe(got)}; expected a tensor of shape ({k},)"),
                                   verbose)
                if got.numel() != k:
                    return _report(CheckResult(name, False, f"with {epochs} epochs and {k} tasks: expected {k} "
                                                            f"weights, got shape {tuple(got.shape)}"), verbose)
                if _non_finite(got) is not None:
                    return _report(_not_finite_result(name, f"the weights for {epochs} epochs, {k} tasks, "
                                                            f"T = {temperature}", f"{k} finite weights"), verbose)
                worst = max(worst, max_error(got.reshape(-1), expected))
    ok = worst <= 1e-9
    msg = ("matches DWA on 45 loss histories" if ok else
           "differs from DWA (λ = 1 for the first two epochs? ratio of the last two epochs? K · softmax(w / T)?)")
    return _report(CheckResult(name, ok, msg, worst, 1e-9), verbose)


@_never_crash("a tuple (mask, attended) of tensors shaped like p")
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
            return _report(CheckResult(name, False, f"must return (mask, attended), got {_describe(got)}; "
                                                    f"expected two tensors shaped like p {tuple(p.shape)}"),
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


# ---------------------------------------------------------------------------------------------------
# chapter 5: stochastic filter groups
def _z_scores(freq: torch.Tensor, p: torch.Tensor, n: int) -> float:
    """Largest |frequency - p| in standard errors of a proportion estimated from n draws."""
    sigma = (p * (1 - p) / n).clamp_min(1e-12).sqrt()
    return float(((freq - p).abs() / sigma).max())


def _sample_problem(name: str, got: Any, shape: tuple[int, ...], what: str) -> CheckResult | None:
    """FAIL unless ``got`` is a finite tensor of ``shape`` (``what`` names the call in the message)."""
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(shape):
        return CheckResult(name, False, f"{what}: expected a tensor shaped like the logits {tuple(shape)}, "
                                        f"got {_describe(got)}")
    if _non_finite(got) is not None:
        return _not_finite_result(name, what, "finite samples on the simplex")
    return None


@_never_crash("a tensor shaped like the logits, on the simplex along the last dimension")
def check_gumbel_softmax(sampler: Callable[[torch.Tensor, float, bool], torch.Tensor], verbose: bool = True,
                         seed: int = 0) -> CheckResult:
    """Chapter 5 exercise: ``sampler(logits, tau, hard)``, a Gumbel-Softmax sample along the last dim.

    Checked: samples lie on the simplex; hard samples are one-hot and carry a non-zero (straight-through)
    gradient; the frequencies of hard samples match ``softmax(logits)`` within 5 standard errors (40,000
    draws); soft samples approach one-hot as ``tau -> 0`` and have the reference's mean at ``tau = 1``;
    ``tau <= 0`` raises ``ValueError``; extreme logits give finite samples.
    """
    from .layers.gumbel import gumbel_softmax

    name = "check_gumbel_softmax"
    torch.manual_seed(seed)
    p = torch.tensor([0.55, 0.25, 0.15, 0.05], dtype=torch.float64)
    n = 40_000
    logits = (p.log() + 1.3).expand(n, 4).clone()  # logits need not be normalised
    soft, failure = _run(name, lambda: sampler(logits.clone(), 1.0, False))
    if failure is not None:
        return _report(failure, verbose)
    problem = _sample_problem(name, soft, tuple(logits.shape), "soft samples (tau=1)")
    if problem is not None:
        return _report(problem, verbose)
    if float((soft.sum(-1) - 1).abs().max()) > 1e-6 or float(soft.min()) < 0:
        return _report(CheckResult(name, False, "soft samples must be finite, non-negative and sum to 1"), verbose)
    reference = gumbel_softmax(logits, tau=1.0).mean(0)
    mean_error = float((soft.mean(0) - reference).abs().max())
    if mean_error > 0.01:
        return _report(CheckResult(name, False, "the mean of soft samples at tau=1 differs from the reference: is the "
                                                "noise -log(-log u) with u ~ U(0, 1), added to the logits?",
                                   mean_error, 0.01), verbose)
    leaf = logits.clone().requires_grad_()
    hard, failure = _run(name, lambda: sampler(leaf, 0.5, True))
    if failure is not None:
        return _report(failure, verbose)
    problem = _sample_problem(name, hard, tuple(logits.shape), "hard samples (tau=0.5)")
    if problem is not None:
        return _report(problem, verbose)
    one_hot = torch.nn.functional.one_hot(hard.detach().argmax(-1), 4).to(hard.dtype)
    if float((hard.detach() - one_hot).abs().max()) > 1e-6:
        return _report(CheckResult(name, False, "hard samples must be one-hot"), verbose)
    z = _z_scores(hard.detach().argmax(-1).bincount(minlength=4).double() / n, p, n)
    if z > 5:
        return _report(CheckResult(name, False, f"hard samples do not follow softmax(logits): the worst frequency is "
                                                f"{z:.1f} standard errors off (tolerance 5)"), verbose)
    weights = torch.randn(n, 4, dtype=torch.float64)
    if not hard.requires_grad:
        return _report(CheckResult(name, False, "hard samples carry no gradient: use the straight-through "
                                                "estimator y_hard - y.detach() + y"), verbose)
    (grad,) = torch.autograd.grad((hard * weights).sum(), leaf)
    if not bool(torch.isfinite(grad).all()) or float(grad.abs().sum()) == 0:
        return _report(CheckResult(name, False, "the straight-through gradient is zero or not finite"), verbose)
    for tau in (0.01, 100.0):
        sample, failure = _run(name, lambda: sampler(logits[:2000].clone(), tau, False))
        problem = failure or _sample_problem(name, sample, (2000, 4), f"soft samples (tau={tau})")
        if problem is not None:
            return _report(problem, verbose)
        if tau < 1:
            cold = sample
        else:
            warm = sample
    if float(cold.max(-1).values.mean()) < 0.98 or float(warm.max(-1).values.mean()) > 0.3:
        return _report(CheckResult(name, False, "soft samples must approach one-hot as tau -> 0 and uniform as "
                                                "tau grows: divide (logits + g) by tau"), verbose)
    extreme, failure = _run(name, lambda: sampler(torch.tensor([[80.0, -80.0, 0.0]], dtype=torch.float64), 0.05, True))
    problem = failure or _sample_problem(name, extreme, (1, 3), "the sample of extreme logits (80, -80, 0)")
    if problem is not None:
        return _report(problem, verbose)
    try:
        sampler(logits[:3].clone(), 0.0, False)
    except ValueError:
        pass
    except NotImplementedError:
        return _report(CheckResult(name, False, "not implemented yet (the stub raises NotImplementedError)"), verbose)
    except Exception as exc:  # noqa: BLE001 - report what the student's code raised
        return _report(CheckResult(name, False, f"tau=0 must raise ValueError, it raised {type(exc).__name__}"), verbose)
    else:
        return _report(CheckResult(name, False, "tau=0 must raise ValueError (a division by zero gives NaN)"), verbose)
    return _report(CheckResult(name, True, f"samples follow softmax(logits) ({z:.1f} standard errors at worst), "
                                           f"straight-through gradient, temperature and guards right",
                               mean_error, 0.01), verbose)


@_never_crash("a tensor (N, C_out, H, W) that carries gradients")
def check_filter_group_routing(route: Callable[..., torch.Tensor], verbose: bool = True,
                               seed: int = 0) -> CheckResult:
    """Chapter 5 exercise: ``route(x, weight, z_out, z_in)``, the filter-group convolution of one layer
    (3x3 kernels, padding 1, no bias): a kernel of task group ``t`` reads the input channels of groups ``t``
    and shared, a shared kernel only shared channels; ``z_out`` ``(C_out, T+1)`` and ``z_in`` ``(C_in, T+1)``
    give the groups (tasks first, shared last). Compared in float64 with
    :func:`mtlutils.layers.filter_groups.filter_group_conv_masked`, values and gradients, for one-hot and
    relaxed groupings and T = 2, 3.
    """
    from .layers.filter_groups import filter_group_conv_masked

    name = "check_filter_group_routing"
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for num_tasks in (2, 3):
        g = num_tasks + 1
        for relaxed in (False, True):
            x = torch.randn(2, 5, 6, 7, dtype=torch.float64, generator=gen)
            w = torch.randn(8, 5, 3, 3, dtype=torch.float64, generator=gen)
            if relaxed:
                z_out = torch.rand(8, g, dtype=torch.float64, generator=gen).softmax(1)
                z_in = torch.rand(5, g, dtype=torch.float64, generator=gen).softmax(1)
            else:
                z_out = torch.nn.functional.one_hot(torch.randint(0, g, (8,), generator=gen), g).double()
                z_in = torch.nn.functional.one_hot(torch.randint(0, g, (5,), generator=gen), g).double()
            inputs = [t.clone().requires_grad_() for t in (x, w, z_out, z_in)]
            expected = filter_group_conv_masked(inputs[0], inputs[1], None, inputs[2], inputs[3], padding=1)
            mine = [t.clone().requires_grad_() for t in (x, w, z_out, z_in)]
            got, failure = _run(name, lambda: route(*mine))
            if failure is not None:
                return _report(failure, verbose)
            result = check_close(name, got.detach() if isinstance(got, torch.Tensor) else got, expected.detach(),
                                 tol=1e-10, verbose=False)
            if not result.passed:
                kind = "relaxed" if relaxed else "one-hot"
                return _report(CheckResult(name, False, f"{result.message} (T={num_tasks}, {kind} groups)",
                                           result.error, 1e-10), verbose)
            up = torch.randn(expected.shape, dtype=torch.float64, generator=gen)
            want = torch.autograd.grad((expected * up).sum(), inputs)
            if not got.requires_grad:
                return _report(CheckResult(name, False, "the output carries no gradient"), verbose)
            have = torch.autograd.grad((got * up).sum(), mine, allow_unused=True)
            for label, a, b in zip(("x", "weight", "z_out", "z_in"), have, want):
                if a is not None and _non_finite(a) is not None:
                    return _report(CheckResult(name, False, f"the gradient of {label} holds non-finite values (NaN "
                                                            f"or inf) (T={num_tasks}); expected finite gradients"),
                                   verbose)
                err = float("inf") if a is None else float((a - b).abs().max())
                if not err <= 1e-8:
                    return _report(CheckResult(name, False, f"the gradient of {label} differs (T={num_tasks})",
                                               err, 1e-8), verbose)
                worst = max(worst, err)
            worst = max(worst, result.error)
    return _report(CheckResult(name, True, "values and gradients match the equations (T = 2, 3; one-hot and "
                                           "relaxed groups)", worst, 1e-8), verbose)


@_never_crash("a tensor of one frequency per group, shape (len(p),)")
def check_authors_frequencies(frequencies: Callable[[torch.Tensor, int], torch.Tensor], verbose: bool = True,
                              seed: int = 0) -> CheckResult:
    """Chapter 5 exercise: ``frequencies(p, n)`` draws ``n`` groupings the way the authors' code does
    (Gumbel noise added to ``p`` itself, then the arg-max) and returns how often each group came out.

    Such samples follow ``Cat(softmax(p))``, not ``Cat(p)``: checked within 5 standard errors for several
    ``p``, among them ``p = (1, 0, 0)`` (group 1 only about 57.6% of the time).
    """
    name = "check_authors_frequencies"
    torch.manual_seed(seed)
    n = 40_000
    worst = 0.0
    for p in ([1.0, 0.0, 0.0], [0.2, 0.5, 0.3], [0.7, 0.2, 0.05, 0.05]):
        p = torch.tensor(p, dtype=torch.float64)
        got, failure = _run(name, lambda: frequencies(p.clone(), n))
        if failure is not None:
            return _report(failure, verbose)
        if not isinstance(got, torch.Tensor):
            return _report(CheckResult(name, False, f"must return one frequency per group ({len(p)}), got "
                                                    f"{_describe(got)}; expected a tensor of shape ({len(p)},)"),
                           verbose)
        got = got.detach().double().flatten()
        if got.shape != p.shape:
            return _report(CheckResult(name, False, f"must return one frequency per group ({len(p)}), got "
                                                    f"{tuple(got.shape)}; expected a tensor of shape ({len(p)},)"),
                           verbose)
        if _non_finite(got) is not None:
            return _report(_not_finite_result(name, f"the frequencies for p={p.tolist()}",
                                              "frequencies between 0 and 1"), verbose)
        if float(got.min()) < 0 or abs(float(got.sum()) - 1) > 1e-6:
            return _report(CheckResult(name, False, f"frequencies for p={p.tolist()} sum to {float(got.sum()):.4g} "
                                                    f"(smallest {float(got.min()):.4g}); expected fractions of the "
                                                    f"n draws: non-negative, summing to 1"), verbose)
        z = _z_scores(got, torch.softmax(p, 0), n)
        if z > 5:
            also = " (these are the frequencies of Cat(p): add the noise to p, not log p)" \
                if _z_scores(got, p, n) < 5 else ""
            return _report(CheckResult(name, False, f"frequencies for p={p.tolist()} are {z:.1f} standard errors "
                                                    f"from softmax(p){also}"), verbose)
        worst = max(worst, z)
    return _report(CheckResult(name, True, f"the authors' sampler follows Cat(softmax(p)) ({worst:.1f} standard "
                                           f"errors at worst)"), verbose)


# ---------------------------------------------------------------------------------------------------
# chapter 6
@_never_crash("one of the strings 'held', 'reversed', 'within the spread'")
def check_verdict(verdict: Callable[..., str], verbose: bool = True) -> CheckResult:
    """Chapter 6 exercise: the claim rule ``verdict(a_mean, a_std, b_mean, b_std, higher_is_better=True)``.

    "A is better than B" is ``"held"`` when A's mean beats B's by more than ``a_std + b_std``,
    ``"reversed"`` when it is worse by more than that, ``"within the spread"`` otherwise (also at a gap
    equal to the spread). Tried for higher- and lower-is-better metrics and at the boundary.
    """
    name = "check_verdict"
    cases = [((2.0, 0.5, 1.0, 0.25), True, "held"), ((1.0, 0.5, 2.0, 0.25), True, "reversed"),
             ((1.25, 0.5, 1.0, 0.25), True, "within the spread"), ((1.5, 0.25, 1.0, 0.25), True, "within the spread"),
             ((1.0, 0.25, 1.5, 0.25), True, "within the spread"), ((3.0, 0.0, 1.0, 0.0), True, "held"),
             ((1.0, 0.125, 2.0, 0.125), False, "held"), ((2.0, 0.125, 1.0, 0.125), False, "reversed"),
             ((1.0, 1.0, 1.5, 1.0), False, "within the spread")]
    for (a_mean, a_std, b_mean, b_std), higher, expected in cases:
        got, failure = _run(name, lambda: verdict(a_mean, a_std, b_mean, b_std, higher_is_better=higher))
        if failure is not None:
            return _report(failure, verbose)
        if not isinstance(got, str) or got != expected:
            kind = "higher" if higher else "lower"
            shown = repr(got) if isinstance(got, str) else _describe(got)
            return _report(CheckResult(name, False, f"A = {a_mean} ± {a_std}, B = {b_mean} ± {b_std} ({kind} is "
                                                    f"better): expected {expected!r}, got {shown[:80]}"), verbose)
    return _report(CheckResult(name, True, f"all {len(cases)} cases, both directions and the boundary"), verbose)
