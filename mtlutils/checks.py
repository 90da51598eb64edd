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
        """``PASS|FAIL name: message (max error ..., tolerance ...)``, wrapped at 88 columns (indented
        continuation lines), so that it fits a notebook output and the book's page."""
        import textwrap

        status = "PASS" if self.passed else "FAIL"
        measured = ""
        if self.error is not None and self.tolerance is not None:
            measured = f" (max error {self.error:.3g}, tolerance {self.tolerance:.0e})"
        return textwrap.fill(f"{status} {self.name}: {self.message}{measured}", width=88,
                             subsequent_indent="    ", break_on_hyphens=False)


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


def _as_number(name: str, got: Any, what: str) -> tuple[float | None, CheckResult | None]:
    """The student's return value as one float, or a failed result that says what came back instead."""
    wrong = CheckResult(name, False, f"must return a number, got {_describe(got)}; expected one number, {what}")
    if isinstance(got, (str, bytes, bool)) or (isinstance(got, torch.Tensor) and got.numel() != 1):
        return None, wrong
    try:
        return float(got), None
    except (TypeError, ValueError):
        return None, wrong


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
    sharing). Compared in float64 with :class:`mtlutils.models.multitask.HardSharedNetwork`; calling that
    network's own ``forward`` is a FAIL.
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
    watch = _Watch({"HardSharedNetwork.forward": type(reference).forward})
    try:
        with torch.no_grad():
            got, failure = _watched_run(name, watch, lambda: shared_forward(reference.trunk, reference.heads, x))
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


# hand-computed cases of Δ_MTL: (model, baseline, Δ in %)
_DELTA_MTL_CASES = [
    ({"left/accuracy": 90.0, "right/accuracy": 80.0}, {"left/accuracy": 80.0, "right/accuracy": 80.0}, 6.25),
    ({"sum/mae": 1.0, "left/accuracy": 50.0}, {"sum/mae": 2.0, "left/accuracy": 50.0}, 25.0),       # lower is better
    ({"sum/mae": 3.0, "left/accuracy": 60.0}, {"sum/mae": 2.0, "left/accuracy": 50.0}, -15.0),      # (-50 + 20) / 2
    ({"depth/abs_err": 0.5}, {"depth/abs_err": 0.5}, 0.0),
]


def _reference_delta_mtl(model: Mapping[str, float], baseline: Mapping[str, float]) -> float:
    """Δ_MTL in %, written independently of :func:`mtlutils.metrics.delta_mtl`."""
    from .metrics import HIGHER_IS_BETTER

    terms = [(1.0 if HIGHER_IS_BETTER[k.split("/")[-1]] else -1.0) * (model[k] - baseline[k]) / baseline[k]
             for k in model]
    return 100.0 * sum(terms) / len(terms)


@_never_crash("a number: Δ_MTL in %")
def check_delta_mtl(delta_mtl: Callable[[Mapping[str, float], Mapping[str, float]], float], verbose: bool = True,
                    seed: int = 0) -> CheckResult:
    """Chapter 1 exercise: ``delta_mtl(model, baseline) -> Δ_MTL in %``.

    ``Δ = 100/n Σ_j (−1)^{l_j} (M_m,j − M_b,j) / M_b,j`` over the n metrics (the keys, ``"task/metric"``),
    ``l_j = 1`` when lower is better (``mtlutils.metrics.HIGHER_IS_BETTER`` of the part after the last
    ``/``). Hand-computed cases (a gain, a loss, lower-is-better metrics, no change) and 30 random ones with
    2 to 9 metrics; calling the package's :func:`mtlutils.metrics.delta_mtl` is a FAIL.
    """
    from . import tables
    from .metrics import delta_mtl as package_delta_mtl

    name = "check_delta_mtl"
    watch = _Watch({"mtlutils.metrics.delta_mtl": package_delta_mtl, "mtlutils.tables._delta": tables._delta})
    gen = torch.Generator().manual_seed(seed)
    names = ["seg/miou", "seg/pixacc", "depth/abs_err", "depth/rel_err", "normal/mean", "normal/median",
             "normal/within_11.25", "left/accuracy", "sum/mae"]
    cases = [(m, b, d, "hand-computed") for m, b, d in _DELTA_MTL_CASES]
    for i in range(30):
        keys = names[:2 + i % 8]
        base = {k: 0.1 + 50 * float(torch.rand(1, generator=gen)) for k in keys}
        model = {k: v * (0.5 + float(torch.rand(1, generator=gen))) for k, v in base.items()}
        cases.append((model, base, _reference_delta_mtl(model, base), "random"))
    worst = 0.0
    for model, base, expected, kind in cases:
        got, failure = _watched_number(name, watch, lambda: delta_mtl(dict(model), dict(base)), "Δ_MTL in %")
        if failure is not None:
            return _report(failure, verbose)
        if not math.isfinite(got):
            return _report(_not_finite_result(name, "Δ_MTL", "a finite number"), verbose)
        err = abs(got - expected)
        if err > 1e-9:
            where = f"model {model}, baseline {base}" if kind == "hand-computed" else f"{len(model)} random metrics"
            undirected = 100.0 * sum((model[k] - base[k]) / base[k] for k in model) / len(model)
            hint = ""
            if abs(got - expected / 100) < 1e-9:
                hint = " (a fraction: Δ_MTL is in %)"
            elif any(not _higher(k) for k in model) and abs(got - undirected) < 1e-9:
                hint = " (lower is better for errors: flip their sign)"
            elif abs(got + expected) < 1e-9:
                hint = " (the sign: positive means better)"
            return _report(CheckResult(name, False, f"for {where} ({kind} case): expected {expected:.6g}, got "
                                                    f"{got:.6g}{hint}", err, 1e-9), verbose)
        worst = max(worst, err)
    return _report(CheckResult(name, True, f"{len(cases)} cases, errors and scores", worst, 1e-9), verbose)


def _higher(key: str) -> bool:
    from .metrics import HIGHER_IS_BETTER

    return HIGHER_IS_BETTER[key.split("/")[-1]]


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
    several sizes, one with an absent class and one with a class never predicted. Calling
    :class:`mtlutils.metrics.SegMetrics` (``compute``, ``iou_per_class``) is a FAIL.
    """
    from .metrics import SegMetrics

    name = "check_miou"
    watch = _Watch({"SegMetrics.compute": SegMetrics.compute, "SegMetrics.iou_per_class": SegMetrics.iou_per_class,
                    "SegMetrics._scores": SegMetrics._scores})
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
        got, failure = _watched_number(name, watch, lambda: miou_from_confusion(conf.clone()), "the mean IoU in %")
        if failure is not None:
            return _report(failure, verbose)
        if not math.isfinite(got):
            return _report(CheckResult(name, False, f"returned {got} (non-finite) for a {conf.shape[0]}-class "
                                                    f"matrix; expected a finite mean IoU in % (a class with an "
                                                    f"empty union has IoU 0/0: leave it out of the mean)"), verbose)
        worst = max(worst, abs(got - _reference_miou(conf)))
    ok = worst <= 1e-9
    msg = "5 confusion matrices, as defined" if ok else \
        "differs from the definition (rows = true class, columns = prediction, % scale, absent classes left out?)"
    return _report(CheckResult(name, ok, msg, worst, 1e-9), verbose)


def _reference_confusion(pred: torch.Tensor, truth: torch.Tensor, classes: int) -> torch.Tensor:
    """``conf[a, b]`` = valid pixels (truth >= 0) of true class a predicted as b, by explicit loops."""
    conf = torch.zeros(classes, classes, dtype=torch.int64)
    for a, b in zip(truth.reshape(-1).tolist(), pred.reshape(-1).tolist()):
        if a >= 0:
            conf[a, b] += 1
    return conf


@_never_crash("a (classes, classes) tensor of pixel counts")
def check_confusion_matrix(confusion_matrix: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
                           verbose: bool = True, seed: int = 0) -> CheckResult:
    """Chapter 2 exercise: ``confusion_matrix(pred, target, classes)``, the confusion matrix of one batch.

    ``pred`` and ``target`` are integer labels ``(N, H, W)``; ``target`` is ``-1`` on void pixels, which do
    not count. ``conf[a, b]`` = number of valid pixels of true class ``a`` predicted as ``b``. Compared with
    explicit loops on random batches (2 to 19 classes, with void pixels, a class never predicted, one batch
    without a valid pixel); calling :class:`mtlutils.metrics.SegMetrics` is a FAIL.
    """
    from .metrics import SegMetrics

    name = "check_confusion_matrix"
    watch = _Watch({"SegMetrics.update": SegMetrics.update, "SegMetrics.compute": SegMetrics.compute})
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for classes, shape in ((2, (1, 3, 4)), (7, (2, 8, 8)), (19, (3, 5, 6)), (4, (2, 4, 4))):
        truth = torch.randint(-1, classes, shape, generator=gen)
        pred = torch.randint(0, classes, shape, generator=gen)
        if classes == 4:
            pred[pred == 2] = 0            # class 2 never predicted: its column stays 0
        cases.append((pred, truth, classes))
    cases.append((torch.zeros(1, 2, 2, dtype=torch.int64), torch.full((1, 2, 2), -1), 3))   # all void
    for pred, truth, classes in cases:
        expected = _reference_confusion(pred, truth, classes)
        got, failure = _watched_run(name, watch, lambda: confusion_matrix(pred.clone(), truth.clone(), classes))
        if failure is not None:
            return _report(failure, verbose)
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != (classes, classes):
            shown = _describe(got) if not isinstance(got, torch.Tensor) else f"shape {tuple(got.shape)}"
            return _report(CheckResult(name, False, f"must return the counts of {classes} classes, got {shown}; "
                                                    f"expected a tensor of shape ({classes}, {classes})"), verbose)
        if _non_finite(got) is not None:
            return _report(_not_finite_result(name, "the confusion matrix", "pixel counts"), verbose)
        err = float((got.detach().double() - expected.double()).abs().max())
        if err > 0:
            hint = ""
            if torch.equal(got.detach().double().T, expected.double()):
                hint = " (transposed: rows are the true class, columns the prediction)"
            elif int(got.detach().double().sum()) == truth.numel():
                hint = " (void pixels, label -1, must not count)"
            return _report(CheckResult(name, False, f"differs from the counts for a batch of shape "
                                                    f"{tuple(truth.shape)}, {classes} classes{hint}", err, 0.0),
                           verbose)
    return _report(CheckResult(name, True, f"{len(cases)} batches, void left out", 0.0, 0.0), verbose)


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
    inputs of three shapes, and the student's backward must pass ``torch.autograd.gradcheck``. Calling
    the package's cross-stitch code (``CrossStitchFunction``, ``CrossStitch``, ``cross_stitch``) is a FAIL.
    """
    from torch.autograd import gradcheck

    from .layers.cross_stitch import CrossStitchFunction, mix

    name = "check_cross_stitch_backward"
    watch = _cross_stitch_watch()
    gen = torch.Generator().manual_seed(seed)
    worst, swapped, tol = 0.0, True, 1e-10
    for shape in ((2, 3, 4, 5), (3, 1, 2, 2), (1, 4, 3, 1)):
        alpha = torch.rand(2, 2, generator=gen, dtype=torch.float64).requires_grad_()
        xs = [torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2)]
        grads = [torch.randn(*shape, generator=gen, dtype=torch.float64) for _ in range(2)]
        torch.autograd.backward(CrossStitchFunction.apply(alpha, *xs), grads)
        expected = (xs[0].grad, xs[1].grad, alpha.grad)
        inputs = [t.detach().clone() for t in (alpha, *xs, *grads)]
        got, failure = _watched_run(name, watch, lambda: stitch_backward(*inputs))
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


def _unwrapped(function: Callable[..., Any]) -> Callable[..., Any]:
    """The function under decorators such as ``once_differentiable`` (whose wrapper code is shared)."""
    return inspect.unwrap(function)


def _cross_stitch_watch() -> "_Watch":
    """Watches the package's cross-stitch implementations (forward, hand-written backward, layer)."""
    from .layers import cross_stitch as cs

    return _Watch({"CrossStitchFunction.forward": cs.CrossStitchFunction.forward,
                   "CrossStitchFunction.backward": _unwrapped(cs.CrossStitchFunction.backward),
                   "cross_stitch": cs.cross_stitch, "layers.cross_stitch.mix": cs.mix,
                   "CrossStitch.forward": cs.CrossStitch.forward})


def _is_function_class(unit: Any) -> bool:
    return isinstance(unit, type) and issubclass(unit, torch.autograd.Function)


def _unit_outputs(name: str, got: Any, count: int, shape: tuple[int, ...], what: str) -> CheckResult | None:
    """None when ``got`` is ``count`` finite tensors of ``shape`` (a tuple/list, or one stacked tensor when
    ``count`` is 0); else the FAIL that says what was expected."""
    if count == 0:
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != shape:
            return CheckResult(name, False, f"{what}: got {_describe(got)}; expected one tensor of shape {shape}")
        items = [got]
    else:
        if not isinstance(got, (tuple, list)) or len(got) != count:
            return CheckResult(name, False, f"{what}: got {_describe(got)}; expected a tuple of {count} tensors "
                                            f"of shape {shape}")
        items = list(got)
        for i, item in enumerate(items):
            if not isinstance(item, torch.Tensor) or tuple(item.shape) != shape:
                return CheckResult(name, False, f"{what}[{i}]: got {_describe(item)}; expected a tensor of "
                                                f"shape {shape}")
    where = _non_finite(items if count else got, what)
    if where is not None:
        return _not_finite_result(name, where)
    return None


def _function_run(name: str, watch: "_Watch", call: Callable[[], Any], expects: str
                  ) -> tuple[Any, CheckResult | None]:
    """:func:`_watched_run`, and an exception other than the stub's also says what was expected."""
    got, failure = _watched_run(name, watch, call)
    if failure is not None and failure.message.startswith("raised"):
        failure.message += f"; expected {expects}"
    return got, failure


def _check_stitch_function(name: str, unit: Any, cases: list[tuple[int, tuple[int, ...], bool]],
                           stacked: bool, verbose: bool, seed: int) -> CheckResult:
    """Shared body of :func:`check_cross_stitch_unit` (two tasks, ``apply(alpha, x_a, x_b)``) and
    :func:`check_cross_stitch_tasks` (T tasks stacked, ``apply(alpha, x)``)."""
    from torch.autograd import gradcheck

    from .layers.cross_stitch import CrossStitchFunction, mix

    call = "apply(alpha, x)" if stacked else "apply(alpha, x_a, x_b)"
    expects = (f"a torch.autograd.Function subclass (the class itself) whose {call} mixes the task activations "
               f"(Eq. 1) and whose backward returns the gradients of Eq. 2 and the corrected Eq. 3")
    if not _is_function_class(unit):
        return _report(CheckResult(name, False, f"got {_describe(unit)}; expected {expects}"), verbose)
    watch = _cross_stitch_watch()
    gen = torch.Generator().manual_seed(seed)
    worst, swapped, tol = 0.0, True, 1e-10
    for tasks, shape, per_channel in cases:
        channels = shape[1]
        a_shape = (tasks, tasks, channels) if per_channel else (tasks, tasks)
        alpha = torch.rand(*a_shape, generator=gen, dtype=torch.float64).requires_grad_()
        xs = [torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(tasks)]
        weights = [torch.randn(*shape, generator=gen, dtype=torch.float64) for _ in range(tasks)]
        outputs = CrossStitchFunction.apply(alpha, *xs)
        expected_values = list(mix(alpha.detach(), [x.detach() for x in xs]))
        expected_grads = torch.autograd.grad(outputs, [alpha, *xs], weights)
        s_alpha = alpha.detach().clone().requires_grad_()
        s_xs = [x.detach().clone().requires_grad_() for x in xs]
        if stacked:
            s_x = torch.stack(s_xs).detach().requires_grad_()
            got, failure = _function_run(name, watch, lambda: unit.apply(s_alpha, s_x), expects)
            what, want_shape, count = "the forward's output", (tasks, *shape), 0
        else:
            got, failure = _function_run(name, watch, lambda: unit.apply(s_alpha, *s_xs), expects)
            what, want_shape, count = "the forward's outputs", shape, 2
        if failure is not None:
            return _report(failure, verbose)
        problem = _unit_outputs(name, got, count, want_shape, what)
        if problem is not None:
            return _report(problem, verbose)
        values = list(got) if count else list(got.unbind(0))
        worst = max(worst, max(max_error(v, e) for v, e in zip(values, expected_values)))
        if worst > tol:
            return _report(CheckResult(name, False, f"forward differs from Eq. 1 (x~_i = sum_j alpha_ij x_j, "
                                                    f"alpha {a_shape})", worst, tol), verbose)
        inputs = [s_alpha, s_x] if stacked else [s_alpha, *s_xs]
        grad_out = [torch.stack(weights)] if stacked else weights
        grads, failure = _function_run(
            name, watch, lambda: torch.autograd.grad(got if count else [got], inputs, grad_out, allow_unused=True),
            "the backward to return one gradient per input of forward, shaped like it")
        if failure is not None:
            if "invalid gradient at index 0" in failure.message:
                failure.message += (f" (the gradient of alpha must have alpha's shape {a_shape}"
                                    + ("" if per_channel else ": one alpha per layer sums over the channels too")
                                    + ")")
            return _report(failure, verbose)
        if stacked:
            grads = (grads[0], None if grads[1] is None else grads[1].unbind(0))
            grad_xs = grads[1]
        else:
            grad_xs = grads[1:]
        grad_alpha = grads[0]
        if grad_alpha is None or grad_xs is None or any(g is None for g in grad_xs):
            return _report(CheckResult(name, False, "the backward returned None for alpha or an input; expected a "
                                                    "gradient for every input of forward"), verbose)
        where = _non_finite([grad_alpha, *grad_xs])
        if where is not None:
            return _report(_not_finite_result(name, f"the gradients {where}"), verbose)
        err_x = max(max_error(g, e) for g, e in zip(grad_xs, expected_grads[1:]))
        err_alpha = max_error(grad_alpha, expected_grads[0])
        worst = max(worst, err_x, err_alpha)
        swapped = swapped and max_error(grad_alpha, expected_grads[0].transpose(0, 1)) <= tol < err_alpha
        if worst > tol:
            if err_x > tol:
                message = "the gradient to the inputs differs from Eq. 2 (back through the transposed alpha)"
            elif swapped:
                message = ("the gradient of alpha has alpha_ij and alpha_ji swapped: that is Eq. 3 as printed in "
                           "the paper; alpha_AB multiplies x_B in x~_A, so dL/dalpha_AB = sum dL/dx~_A * x_B")
            elif grad_alpha.shape != expected_grads[0].shape:
                message = f"the gradient of alpha must have alpha's shape {a_shape}, got {tuple(grad_alpha.shape)}"
            else:
                message = ("the gradient of alpha differs from the corrected Eq. 3 (summed over the batch and the "
                           "locations" + ("" if per_channel else ", and over the channels for one alpha per layer")
                           + ")")
            return _report(CheckResult(name, False, message, worst, tol), verbose)
    # the student's backward against finite differences of the student's forward, on one more input
    tasks, shape, per_channel = cases[0]
    a_shape = (tasks, tasks, shape[1]) if per_channel else (tasks, tasks)
    alpha = torch.rand(*a_shape, generator=gen, dtype=torch.float64).requires_grad_()
    xs = [torch.randn(2, shape[1], 2, 2, generator=gen, dtype=torch.float64) for _ in range(tasks)]
    args = (alpha, torch.stack(xs).requires_grad_()) if stacked else (alpha, *(x.requires_grad_() for x in xs))
    passed, failure = _function_run(name, watch, lambda: gradcheck(unit.apply, args, raise_exception=False),
                                    "a backward that passes torch.autograd.gradcheck")
    if failure is not None or not passed:
        return _report(failure or CheckResult(name, False, "matches the reference on the test inputs but fails "
                                                           "torch.autograd.gradcheck on another one"), verbose)
    sizes = sorted({c[0] for c in cases})
    return _report(CheckResult(name, True, f"matches the package for T = {', '.join(map(str, sizes))}; "
                                           f"gradcheck passes", worst, tol), verbose)


@_never_crash("a torch.autograd.Function subclass: apply(alpha, x_a, x_b) -> (x~_A, x~_B)")
def check_cross_stitch_unit(unit: Any, verbose: bool = True, seed: int = 0) -> CheckResult:
    """Chapter 3: the two-task cross-stitch unit with one α matrix per channel, written as a
    ``torch.autograd.Function`` (the class itself is passed).

    ``unit.apply(alpha, x_a, x_b)`` with ``alpha`` of shape ``(2, 2, C)`` and activations ``(N, C, H, W)``
    must return ``(x̃_A, x̃_B)`` (Eq. 1); its backward must return ``(∂L/∂α, ∂L/∂x_A, ∂L/∂x_B)`` (Eq. 2 and
    the corrected Eq. 3). Values and gradients are compared in float64 with
    :class:`mtlutils.layers.CrossStitchFunction` on three shapes, and the unit must pass
    ``torch.autograd.gradcheck``. Calling the package's cross-stitch code is a FAIL.
    """
    cases = [(2, (2, 3, 4, 5), True), (2, (3, 1, 2, 2), True), (2, (1, 4, 3, 1), True)]
    return _check_stitch_function("check_cross_stitch_unit", unit, cases, False, verbose, seed)


@_never_crash("a torch.autograd.Function subclass: apply(alpha, x) -> x~, x stacked (T, N, C, ...)")
def check_cross_stitch_tasks(unit: Any, verbose: bool = True, seed: int = 0) -> CheckResult:
    """Chapter 3: the cross-stitch unit for ``T`` tasks and both granularities, written as a
    ``torch.autograd.Function`` on stacked activations (the class itself is passed).

    ``unit.apply(alpha, x)`` with ``x`` of shape ``(T, N, C, H, W)`` and ``alpha`` of shape ``(T, T, C)``
    (per channel) or ``(T, T)`` (per layer) must return ``X̃ = αX`` stacked the same way, and its backward
    ``(∂L/∂α, ∂L/∂X)`` with ``∂L/∂X = αᵀ ∂L/∂X̃`` and ``∂L/∂α = Σ ∂L/∂X̃ Xᵀ`` (summed over the channels too
    per layer). Compared in float64 with :class:`mtlutils.layers.CrossStitchFunction` for T = 2, 3, 4 and
    both granularities, plus ``gradcheck``. Calling the package's cross-stitch code is a FAIL.
    """
    cases = [(3, (2, 4, 3, 3), True), (3, (2, 4, 3, 3), False), (2, (3, 2, 2, 5), False),
             (4, (1, 3, 2, 2), True)]
    return _check_stitch_function("check_cross_stitch_tasks", unit, cases, True, verbose, seed)


# ---------------------------------------------------------------------------------------------------
# chapter 4 (MTAN and Dynamic Weight Average)
@_never_crash("a tensor of K weights, shape (K,)")
def check_dwa(dwa_weights: Callable[[torch.Tensor, float], torch.Tensor], verbose: bool = True,
              seed: int = 0) -> CheckResult:
    """Chapter 4 exercise: Dynamic Weight Average, ``dwa_weights(history, temperature) -> λ (K,)``.

    ``history`` is a float64 tensor ``(E, K)`` of epoch-mean unweighted losses (row e = epoch e + 1); the
    result holds the weights of epoch E + 1: ones while E < 2, else ``K softmax(w / T)`` with
    ``w = history[-1] / history[-2]``. Compared with :func:`mtlutils.weighting.dwa_weights` for 0 to 6
    epochs, 2 to 4 tasks and temperatures from 0.1 to 50. Calling the package's ``dwa_weights`` or its
    ``DWA`` weighting is a FAIL.
    """
    from .weighting import DWA, dwa_weights as reference

    name = "check_dwa"
    watch = _Watch({"weighting.dwa_weights": reference, "DWA.end_epoch": DWA.end_epoch,
                    "DWA._update": DWA._update, "DWA.weights": DWA.weights})
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for epochs in (0, 1, 2, 3, 6):
        for k in (2, 3, 4):
            history = torch.rand(epochs, k, generator=gen, dtype=torch.float64) * 2 + 0.05
            for temperature in (0.1, 2.0, 50.0):
                got, failure = _watched_run(name, watch, lambda: dwa_weights(history.clone(), temperature))
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


def _attention_watch() -> "_Watch":
    """Watches the package's attention module (building one, its mask, its forward, the batched path)."""
    from .layers import attention

    return _Watch({"AttentionModule.__init__": attention.AttentionModule.__init__,
                   "AttentionModule.mask": attention.AttentionModule.mask,
                   "AttentionModule.forward": attention.AttentionModule.forward,
                   "layers.attention.stacked_masks": attention.stacked_masks})


@_never_crash("an nn.Module class: cls(in_channels, out_channels), forward(u, p, prev=None) -> (attended, mask)")
def check_attention_module(module_class: Any, verbose: bool = True, seed: int = 0) -> CheckResult:
    """Chapter 4: MTAN's attention module built from scratch (the class itself is passed).

    ``module_class(in_channels, out_channels)`` must hold ``g`` (1×1 conv, batch norm, ReLU) and ``h`` (1×1
    conv, batch norm, sigmoid) with the parameter names of :class:`mtlutils.layers.AttentionModule`
    (``g.0.weight`` ...), so that it loads the reference's weights; ``forward(u, p, prev=None)`` must
    return ``(attended, mask)`` with ``mask = h(g([u; prev]))`` (``g(u)`` at the first block) and
    ``attended = mask ⊙ p``. Compared in float64 with the reference in training and in evaluation mode,
    with and without ``prev``, with random batch-norm parameters and statistics. Building, subclassing or
    calling the package's ``AttentionModule`` is a FAIL.
    """
    from .layers import AttentionModule

    name = "check_attention_module"
    expects = ("an nn.Module class built as module_class(in_channels, out_channels) whose forward(u, p, prev) "
               "returns (attended, mask)")
    if not (isinstance(module_class, type) and issubclass(module_class, nn.Module)):
        return _report(CheckResult(name, False, f"got {_describe(module_class)}; expected {expects}"), verbose)
    if issubclass(module_class, AttentionModule):
        return _report(CheckResult(name, False, "subclasses the package's AttentionModule: build g and h "
                                                "yourself from nn.Conv2d, nn.BatchNorm2d and the activations"),
                       verbose)
    watch = _attention_watch()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    worst, tol = 0.0, 1e-10
    for c_u, c_prev, c in ((4, 0, 4), (6, 6, 6), (5, 3, 2)):
        reference = AttentionModule(c_u + c_prev, c).double()
        with torch.no_grad():   # batch-norm parameters and statistics away from their defaults
            for bn in (reference.g[1], reference.h[1]):
                bn.weight.uniform_(0.5, 1.5, generator=gen)
                bn.bias.uniform_(-0.5, 0.5, generator=gen)
                bn.running_mean.uniform_(-0.5, 0.5, generator=gen)
                bn.running_var.uniform_(0.5, 2.0, generator=gen)
        student, failure = _function_run(name, watch, lambda: module_class(c_u + c_prev, c), expects)
        if failure is not None:
            return _report(failure, verbose)
        if not isinstance(student, nn.Module):
            return _report(CheckResult(name, False, f"module_class(...) gave {_describe(student)}; expected "
                                                    f"{expects}"), verbose)
        student = student.double()
        want = reference.state_dict()
        have = student.state_dict()
        if set(have) != set(want) or any(have[k].shape != want[k].shape for k in want):
            missing = sorted(set(want) - set(have))[:3]
            return _report(CheckResult(name, False, f"its parameters and buffers do not match AttentionModule's "
                                                    f"(missing or misshapen: {missing or 'shapes differ'}); "
                                                    f"expected g = Sequential(Conv2d 1x1, BatchNorm2d, ReLU) "
                                                    f"and h = Sequential(Conv2d 1x1, BatchNorm2d, Sigmoid)"),
                           verbose)
        student.load_state_dict(want)
        u = torch.randn(3, c_u, 5, 4, generator=gen, dtype=torch.float64)
        p = torch.randn(3, c, 5, 4, generator=gen, dtype=torch.float64)
        prev = torch.randn(3, c_prev, 5, 4, generator=gen, dtype=torch.float64) if c_prev else None
        for mode in ("train", "eval"):
            reference.train(mode == "train")
            student.train(mode == "train")
            with torch.no_grad():
                mask = reference.mask(u, prev)
                expected = {"attended": mask * p, "mask": mask}
                got, failure = _function_run(name, watch, lambda: student(u, p, prev), expects)
            if failure is not None:
                return _report(failure, verbose)
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                return _report(CheckResult(name, False, f"forward must return (attended, mask), got "
                                                        f"{_describe(got)}; expected two tensors shaped like p "
                                                        f"{tuple(p.shape)}"), verbose)
            result = check_close(name, {"attended": got[0], "mask": got[1]}, expected, tol=tol, verbose=False)
            if not result.passed and result.error is None:
                return _report(result, verbose)
            worst = max(worst, result.error)
            if result.error > tol:
                hint = (" (returned (mask, attended)? the order is (attended, mask))"
                        if max_error(got[1], expected["attended"]) <= tol else
                        " (order of [u; prev]? sigmoid mask times p?)")
                return _report(CheckResult(name, False, f"differs from AttentionModule in {mode} mode{hint}",
                                           result.error, tol), verbose)
    return _report(CheckResult(name, True, "matches AttentionModule (train and eval)", worst, tol), verbose)


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
    ``tau <= 0`` raises ``ValueError``; extreme logits give finite samples. Calling a ready-made sampler
    (``mtlutils.layers.gumbel_softmax``, its ``sample_gumbel``, or ``torch.nn.functional.gumbel_softmax``)
    is a FAIL.
    """
    from .layers.gumbel import gumbel_softmax, sample_gumbel

    name = "check_gumbel_softmax"
    watch = _Watch({"mtlutils.layers.gumbel_softmax": gumbel_softmax, "mtlutils.layers.gumbel.sample_gumbel":
                    sample_gumbel, "torch.nn.functional.gumbel_softmax": torch.nn.functional.gumbel_softmax})
    torch.manual_seed(seed)
    p = torch.tensor([0.55, 0.25, 0.15, 0.05], dtype=torch.float64)
    n = 40_000
    logits = (p.log() + 1.3).expand(n, 4).clone()  # logits need not be normalised
    soft, failure = _watched_run(name, watch, lambda: sampler(logits.clone(), 1.0, False))
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
    hard, failure = _watched_run(name, watch, lambda: sampler(leaf, 0.5, True))
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
        sample, failure = _watched_run(name, watch, lambda: sampler(logits[:2000].clone(), tau, False))
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
    extreme, failure = _watched_run(name, watch, lambda: sampler(torch.tensor([[80.0, -80.0, 0.0]],
                                                                              dtype=torch.float64), 0.05, True))
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
    return _report(CheckResult(name, True, "sampler right",
                               mean_error, 0.01), verbose)


@_never_crash("a tensor (N, C_out, H, W) that carries gradients")
def check_filter_group_routing(route: Callable[..., torch.Tensor], verbose: bool = True,
                               seed: int = 0) -> CheckResult:
    """Chapter 5 exercise: ``route(x, weight, z_out, z_in)``, the filter-group convolution of one layer
    (3x3 kernels, padding 1, no bias): a kernel of task group ``t`` reads the input channels of groups ``t``
    and shared, a shared kernel only shared channels; ``z_out`` ``(C_out, T+1)`` and ``z_in`` ``(C_in, T+1)``
    give the groups (tasks first, shared last). Compared in float64 with
    :func:`mtlutils.layers.filter_groups.filter_group_conv_masked`, values and gradients, for one-hot and
    relaxed groupings and T = 2, 3. Calling the package's routing (``filter_group_conv_masked``,
    ``filter_group_conv``, ``routed_weight``, ``kernel_input_mask``, ``FilterGroupConv``) is a FAIL;
    ``routing_matrix`` (the constant R) may be used.
    """
    from .layers import filter_groups as fg

    filter_group_conv_masked = fg.filter_group_conv_masked
    name = "check_filter_group_routing"
    watch = _Watch({f"mtlutils.layers.filter_groups.{f.__name__}": f
                    for f in (fg.filter_group_conv_masked, fg.filter_group_conv, fg.kernel_input_mask,
                              fg.routed_weight)}
                   | {"FilterGroupConv.forward": fg.FilterGroupConv.forward})
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
            got, failure = _watched_run(name, watch, lambda: route(*mine))
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
    return _report(CheckResult(name, True, "matches (T = 2, 3)", worst, 1e-8), verbose)


@_never_crash("a tensor of one frequency per group, shape (len(p),)")
def check_authors_frequencies(frequencies: Callable[[torch.Tensor, int], torch.Tensor], verbose: bool = True,
                              seed: int = 0) -> CheckResult:
    """Chapter 5 exercise: ``frequencies(p, n)`` draws ``n`` groupings the way the authors' code does
    (Gumbel noise added to ``p`` itself, then the arg-max) and returns how often each group came out.

    Such samples follow ``Cat(softmax(p))``, not ``Cat(p)``: checked within 5 standard errors for several
    ``p``, among them ``p = (1, 0, 0)`` (group 1 only about 57.6% of the time). The frequencies must come
    from draws: each a multiple of ``1/n`` (a count divided by ``n``), not ``softmax(p)`` itself, and two
    calls under different random seeds (``torch.manual_seed``) must give different draws. Calling a
    ready-made sampler (``mtlutils.layers.gumbel_softmax``, its ``sample_gumbel``, or
    ``torch.nn.functional.gumbel_softmax``) is a FAIL.
    """
    from .layers.gumbel import gumbel_softmax, sample_gumbel

    name = "check_authors_frequencies"
    watch = _Watch({"mtlutils.layers.gumbel_softmax": gumbel_softmax, "mtlutils.layers.gumbel.sample_gumbel":
                    sample_gumbel, "torch.nn.functional.gumbel_softmax": torch.nn.functional.gumbel_softmax})
    n = 40_000
    worst = 0.0

    def draw(p: torch.Tensor, call_seed: int) -> tuple[torch.Tensor | None, CheckResult | None]:
        """One call under ``torch.manual_seed(call_seed)``: the frequencies, or the FAIL that says why not."""
        torch.manual_seed(call_seed)
        got, failure = _watched_run(name, watch, lambda: frequencies(p.clone(), n))
        if failure is not None:
            return None, failure
        if not isinstance(got, torch.Tensor) or got.numel() != len(p):
            return None, CheckResult(name, False, f"must return one frequency per group ({len(p)}), got "
                                                  f"{_describe(got)}; expected a tensor of shape ({len(p)},)")
        got = got.detach().double().flatten()
        if _non_finite(got) is not None:
            return None, _not_finite_result(name, f"the frequencies for p={p.tolist()}", "frequencies between 0 and 1")
        if float(got.min()) < 0 or abs(float(got.sum()) - 1) > 1e-6:
            return None, CheckResult(name, False, f"frequencies for p={p.tolist()} sum to {float(got.sum()):.4g} "
                                                  f"(smallest {float(got.min()):.4g}); expected fractions of the "
                                                  f"n draws: non-negative, summing to 1")
        if float((got - torch.softmax(p, 0)).abs().max()) < 1e-12:
            return None, CheckResult(name, False, f"returns softmax(p) itself for p={p.tolist()}, not the "
                                                  f"frequencies of n draws: draw the groupings and count them")
        counts = got * n
        if float((counts - counts.round()).abs().max()) > 1e-6:
            return None, CheckResult(name, False, f"frequencies for p={p.tolist()} are not multiples of 1/n "
                                                  f"(n={n}): expected the count of each group over the n draws, "
                                                  f"divided by n")
        return got, None

    for i, p in enumerate(([1.0, 0.0, 0.0], [0.2, 0.5, 0.3], [0.7, 0.2, 0.05, 0.05])):
        p = torch.tensor(p, dtype=torch.float64)
        runs = []
        for call_seed in (seed + 2 * i, seed + 2 * i + 1):     # two calls, two seeds
            got, failure = draw(p, call_seed)
            if failure is not None:
                return _report(failure, verbose)
            z = _z_scores(got, torch.softmax(p, 0), n)
            if z > 5:
                also = " (these are the frequencies of Cat(p): add the noise to p, not log p)" \
                    if _z_scores(got, p, n) < 5 else ""
                return _report(CheckResult(name, False, f"frequencies for p={p.tolist()} are {z:.1f} standard "
                                                        f"errors from softmax(p){also}"), verbose)
            worst = max(worst, z)
            runs.append(got)
        if torch.equal(runs[0], runs[1]):
            return _report(CheckResult(name, False, f"two calls under different random seeds gave the same "
                                                    f"frequencies for p={p.tolist()}: draw fresh noise from "
                                                    f"torch's random generator at every call"), verbose)
    return _report(CheckResult(name, True, f"follows Cat(softmax(p)) in fresh draws, {worst:.1f} std errors at "
                                           f"worst"), verbose)


# ---------------------------------------------------------------------------------------------------
# chapter 6
@_never_crash("a string: 'held', 'reversed' or 'within the spread'")
def check_verdict(verdict: Callable[..., str], verbose: bool = True) -> CheckResult:
    """Chapter 6 exercise: the claim rule ``verdict(a_mean, a_std, b_mean, b_std, higher_is_better=True)``.

    "A is better than B" is ``"held"`` when A's mean beats B's by more than ``a_std + b_std``,
    ``"reversed"`` when it is worse by more than that, ``"within the spread"`` otherwise (also at a gap
    equal to the spread). Tried for higher- and lower-is-better metrics and at the boundary; calling the
    package's rule (``mtlutils.tables.verdict``, also ``mtlutils.experiments.verdict``) is a FAIL.
    """
    from .tables import verdict as package_verdict

    name = "check_verdict"
    watch = _Watch({"mtlutils.tables.verdict": package_verdict})
    cases = [((2.0, 0.5, 1.0, 0.25), True, "held"), ((1.0, 0.5, 2.0, 0.25), True, "reversed"),
             ((1.25, 0.5, 1.0, 0.25), True, "within the spread"), ((1.5, 0.25, 1.0, 0.25), True, "within the spread"),
             ((1.0, 0.25, 1.5, 0.25), True, "within the spread"), ((3.0, 0.0, 1.0, 0.0), True, "held"),
             ((1.0, 0.125, 2.0, 0.125), False, "held"), ((2.0, 0.125, 1.0, 0.125), False, "reversed"),
             ((1.0, 1.0, 1.5, 1.0), False, "within the spread")]
    for (a_mean, a_std, b_mean, b_std), higher, expected in cases:
        got, failure = _watched_run(name, watch, lambda: verdict(a_mean, a_std, b_mean, b_std,
                                                                 higher_is_better=higher))
        if failure is not None:
            return _report(failure, verbose)
        if not isinstance(got, str) or got != expected:
            kind = "higher" if higher else "lower"
            shown = repr(got) if isinstance(got, str) else _describe(got)
            return _report(CheckResult(name, False, f"A = {a_mean} ± {a_std}, B = {b_mean} ± {b_std} ({kind} is "
                                                    f"better): expected {expected!r}, got {shown[:80]}"), verbose)
    return _report(CheckResult(name, True, f"all {len(cases)} cases, both directions and the boundary"), verbose)


# ---------------------------------------------------------------------------------------------------
# chapter 7: balancing the tasks
class _Watch:
    """Records calls of the package's own implementations while the student's code runs.

    A profile hook sees every Python call; a call whose code object is one of the watched functions' is
    recorded, whatever name or alias the student reached it by (``solvers.min_norm_two``, a
    ``from ... import`` made earlier, a method of a weighting). The previous hook is restored after."""

    def __init__(self, functions: Mapping[str, Callable[..., Any]]) -> None:
        self.codes = {getattr(f, "__code__", None): label for label, f in functions.items()}
        self.codes.pop(None, None)
        self.called: list[str] = []

    def __enter__(self) -> "_Watch":
        import sys

        self._previous = sys.getprofile()

        def hook(frame: Any, event: str, arg: Any) -> None:
            if event == "call" and frame.f_code in self.codes:
                self.called.append(self.codes[frame.f_code])

        sys.setprofile(hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        import sys

        sys.setprofile(self._previous)


def _watched_run(name: str, watch: _Watch, call: Callable[[], Any]) -> tuple[Any, CheckResult | None]:
    """:func:`_run` while ``watch`` records calls of the package's implementations; a call is a FAIL."""
    with watch:
        got, failure = _run(name, call)
    if watch.called:
        return None, CheckResult(name, False, f"calls the package's {watch.called[0]}: the exercise is to write "
                                              f"it yourself from the equation")
    return got, failure


def _watched_number(name: str, watch: _Watch, call: Callable[[], Any],
                    what: str) -> tuple[float | None, CheckResult | None]:
    """:func:`_watched_run` of a call that must return one number (:func:`_as_number`)."""
    got, failure = _watched_run(name, watch, call)
    return (None, failure) if failure is not None else _as_number(name, got, what)


def _as_vector(name: str, got: Any, length: int, what: str) -> tuple[torch.Tensor | None, CheckResult | None]:
    """The student's result as a float64 vector of ``length`` entries, or the FAIL that says why not."""
    if not isinstance(got, torch.Tensor):
        return None, CheckResult(name, False, f"must return a tensor of {what}, got {_describe(got)}; expected "
                                              f"a tensor of shape ({length},)")
    if got.shape != (length,):
        return None, CheckResult(name, False, f"must return a tensor of {what}, got shape {tuple(got.shape)}; "
                                              f"expected shape ({length},)")
    if not (got.is_floating_point()):
        return None, CheckResult(name, False, f"must return floating-point {what}, got dtype {got.dtype}")
    if _non_finite(got) is not None:
        return None, _not_finite_result(name, what, f"{length} finite values")
    return got.detach().double(), None


def _reference_min_norm_two(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor | None:
    """α₁ of the point of the segment [g₁, g₂] nearest to 0; None when g₁ = g₂ (every α is)."""
    diff = g1 - g2
    denom = float(diff @ diff)
    if denom == 0.0:
        return None
    return torch.tensor(min(1.0, max(0.0, float((g2 - g1) @ g2) / denom)), dtype=torch.float64)


# hand-computed cases of the two-task min-norm problem: (g1, g2, α1), α1 from the closed form
# α1 = clip((g2 - g1)·g2 / |g1 - g2|², 0, 1); None: g1 = g2, any α on the simplex is the minimum
_MIN_NORM_TWO_CASES = [
    ((1.0, 0.0), (0.0, 1.0), 0.5),          # orthogonal, equal norms: the midpoint
    ((2.0, 0.0), (0.0, 1.0), 0.2),          # (1 - 0) / (4 + 1)
    ((1.0, -1.0), (-1.0, 0.5), 0.44),       # conflicting: (1.25 + 1.5) / 6.25
    ((1.0, 0.0), (3.0, 0.0), 1.0),          # (9 - 3) / 4 = 1.5, clipped to 1: g1 itself
    ((3.0, 1.0), (1.0, 0.0), 0.0),          # (1 - 3) / 5 = -0.4, clipped to 0: g2 itself
    ((0.0, 0.0), (1.0, 1.0), 1.0),          # a zero gradient is the min-norm point
    ((1.0, 2.0), (1.0, 2.0), None),         # identical gradients: 0 / 0 must not become NaN
]


@_never_crash("a tensor (α1, α2) of shape (2,) on the simplex")
def check_min_norm_two(min_norm_two: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], verbose: bool = True,
                       seed: int = 0) -> CheckResult:
    """Chapter 7 exercise: MGDA's two-task closed form, ``min_norm_two(g1, g2) -> (α₁, α₂)``.

    ``α₁ g₁ + α₂ g₂`` must be the point of the segment between the two gradients nearest to the origin:
    ``α₁ = clip((g₂ − g₁)·g₂ / ‖g₁ − g₂‖², 0, 1)``, ``α₂ = 1 − α₁`` (Sener & Koltun 2018, Algorithm 1).
    Checked on hand-computed cases (both clips, a zero gradient, identical gradients) and 40 random pairs
    of float64 vectors; calling the package's solver (``mtlutils.weighting.solvers``) is a FAIL.
    """
    from .weighting import MGDA, solvers

    name = "check_min_norm_two"
    watch = _Watch({"solvers.min_norm_two": solvers.min_norm_two, "solvers.min_norm": solvers.min_norm,
                    "solvers._two_point": solvers._two_point, "MGDA.weights_from": MGDA.weights_from,
                    "MGDA.combine_gradients": MGDA.combine_gradients})
    gen = torch.Generator().manual_seed(seed)
    cases = [(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
              None if alpha is None else torch.tensor(alpha, dtype=torch.float64), "hand-computed")
             for a, b, alpha in _MIN_NORM_TWO_CASES]
    for i in range(40):
        dim = (2, 7, 50)[i % 3]
        g1 = torch.randn(dim, generator=gen, dtype=torch.float64) * (0.1 + 3 * torch.rand(1, generator=gen).item())
        g2 = torch.randn(dim, generator=gen, dtype=torch.float64)
        if i % 4 == 0:                       # nearly aligned pairs reach the clips
            g2 = 0.3 * g1 + 0.05 * g2
        cases.append((g1, g2, _reference_min_norm_two(g1, g2), "random"))
    worst = 0.0
    for g1, g2, alpha1, kind in cases:
        got, failure = _watched_run(name, watch, lambda: min_norm_two(g1.clone(), g2.clone()))
        if failure is not None:
            return _report(failure, verbose)
        where = f"g1 = {g1.tolist()}, g2 = {g2.tolist()}" if g1.numel() <= 2 else f"a random pair of {g1.numel()}-vectors"
        got, failure = _as_vector(name, got, 2, "the two weights (α1, α2)")
        if failure is not None:
            failure.message += f" (for {where})"
            return _report(failure, verbose)
        if float(got.min()) < -1e-9 or abs(float(got.sum()) - 1) > 1e-9:
            return _report(CheckResult(name, False, f"for {where}: weights {got.tolist()} are not on the simplex "
                                                    f"(α ≥ 0, α1 + α2 = 1): clip α1 to [0, 1] and set α2 = 1 - α1"),
                           verbose)
        if alpha1 is None:                   # g1 = g2: any point of the simplex is the minimum
            continue
        expected = torch.stack([alpha1, 1 - alpha1])
        err = max_error(got, expected)
        if err > 1e-8:
            hint = " (α1 belongs to g1: did you swap them?)" if max_error(got.flip(0), expected) <= 1e-8 else ""
            return _report(CheckResult(name, False, f"for {where} ({kind} case): expected {expected.tolist()}, got "
                                                    f"{got.tolist()}{hint}", err, 1e-8), verbose)
        worst = max(worst, err)
    return _report(CheckResult(name, True, f"the min-norm weights of {len(cases)} pairs (7 hand-computed, both clips, "
                                           f"identical gradients)", worst, 1e-8), verbose)


def _reference_pcgrad(grads: torch.Tensor, order: list[list[int]]) -> torch.Tensor:
    """PCGrad's projected gradients, written independently of the package: every task against the
    *original* gradients of the others, in the given order, only on conflict."""
    out = []
    for i, others in enumerate(order):
        gi = grads[i].clone()
        for j in others:
            dot = float(gi @ grads[j])
            if dot < 0:
                gi = gi - dot / float(grads[j] @ grads[j]) * grads[j]
        out.append(gi)
    return torch.stack(out)


# hand-computed cases: (gradients, order, projected gradients)
_PCGRAD_CASES = [
    # conflict: g1·g2 = -1; g1' = g1 + ½ g2, g2' = g2 + g1
    (((1.0, 0.0), (-1.0, 1.0)), [[1], [0]], ((0.5, 0.5), (0.0, 1.0))),
    # no conflict (g1·g2 = 1 > 0): unchanged
    (((1.0, 0.0), (1.0, 1.0)), [[1], [0]], ((1.0, 0.0), (1.0, 1.0))),
    # three tasks, every pair in conflict; the order matters (task 1: against g2 then g3, or g3 then g2)
    (((2.0, 0.0), (-1.0, 1.0), (-1.0, -2.0)), [[1, 2], [0, 2], [0, 1]], ((0.4, -0.2), (-0.4, 0.2), (-1.0, -1.0))),
    (((2.0, 0.0), (-1.0, 1.0), (-1.0, -2.0)), [[2, 1], [2, 0], [1, 0]], ((0.4, 0.4), (0.0, 0.6), (0.0, -1.5))),
]


@_never_crash("a tensor of projected gradients shaped like grads (T, P)")
def check_pcgrad(pcgrad_project: Callable[[torch.Tensor, list[list[int]]], torch.Tensor], verbose: bool = True,
                 seed: int = 0) -> CheckResult:
    """Chapter 7 exercise: PCGrad's projection, ``pcgrad_project(grads, order) -> projected (T, P)``.

    For each task i, ``g_i' = g_i``; for every j in ``order[i]``: if ``g_i'·g_j < 0``, then
    ``g_i' ← g_i' − (g_i'·g_j / ‖g_j‖²) g_j``, with the *original* ``g_j`` (Yu et al. 2020, Algorithm 1).
    Checked on hand-computed cases (a conflict, no conflict, three tasks in two orders) and 30 random sets of
    2 to 4 gradients; calling the package's ``solvers.pcgrad`` or ``PCGrad`` is a FAIL.
    """
    from .weighting import PCGrad, solvers

    name = "check_pcgrad"
    watch = _Watch({"solvers.pcgrad": solvers.pcgrad, "PCGrad.combine_gradients": PCGrad.combine_gradients})
    gen = torch.Generator().manual_seed(seed)
    cases = [(torch.tensor(g, dtype=torch.float64), order, torch.tensor(p, dtype=torch.float64), "hand-computed")
             for g, order, p in _PCGRAD_CASES]
    for i in range(30):
        t, dim = 2 + i % 3, (3, 10, 40)[i % 3]
        grads = torch.randn(t, dim, generator=gen, dtype=torch.float64)
        grads[0] -= 1.5 * grads[1:].mean(0)          # make conflicts common
        order = [[j for j in torch.randperm(t, generator=gen).tolist() if j != k] for k in range(t)]
        cases.append((grads, order, _reference_pcgrad(grads, order), "random"))
    worst = 0.0
    for grads, order, expected, kind in cases:
        given = grads.clone()
        got, failure = _watched_run(name, watch, lambda: pcgrad_project(given, [list(o) for o in order]))
        if failure is not None:
            return _report(failure, verbose)
        t, dim = grads.shape
        where = f"grads = {grads.tolist()}, order = {order}" if dim <= 2 else f"{t} random gradients of {dim} entries"
        if not isinstance(got, torch.Tensor) or got.shape != grads.shape:
            shown = _describe(got) if not isinstance(got, torch.Tensor) else f"shape {tuple(got.shape)}"
            return _report(CheckResult(name, False, f"must return the projected gradients, one row per task, got "
                                                    f"{shown}; expected a tensor of shape {tuple(grads.shape)}"),
                           verbose)
        if _non_finite(got) is not None:
            return _report(_not_finite_result(name, f"the projected gradients for {where}"), verbose)
        if not torch.equal(given, grads):
            return _report(CheckResult(name, False, "changed its input grads in place: every projection uses the "
                                                    "original g_j, so keep grads unchanged (work on a copy)"),
                           verbose)
        err = max_error(got, expected)
        if err > 1e-9:
            conflict_free = t == 2 and float(grads[0] @ grads[1]) >= 0
            hint = (" (no conflict here: PCGrad leaves the gradients unchanged)" if conflict_free else
                    " (project only when g_i'·g_j < 0, onto the original g_j, in the given order)")
            return _report(CheckResult(name, False, f"for {where} ({kind} case): projected gradients differ{hint}",
                                       err, 1e-9), verbose)
        worst = max(worst, err)
    return _report(CheckResult(name, True, f"{len(cases)} sets of gradients (4 hand-computed: conflict, none, an "
                                           f"order that matters)", worst, 1e-9), verbose)


def _reference_gradnorm_loss(w: torch.Tensor, grad_norms: torch.Tensor, losses: torch.Tensor,
                             initial_losses: torch.Tensor, alpha: float) -> torch.Tensor:
    """GradNorm's L_grad, written independently of the package (the target is a constant)."""
    g = w * grad_norms
    ratio = losses / initial_losses
    target = (g.mean() * (ratio / ratio.mean()) ** alpha).detach()
    return (g - target).abs().sum()


# hand-computed cases: (w, ‖∇_W L_t‖, L_t, L_t(0), α, L_grad, ∂L_grad/∂w)
# case 1: G = (2, 1, 0.5), Ḡ = 7/6; L̃ = (1, 0.5, 1), r = (1.2, 0.6, 1.2); target = (1.4, 0.7, 1.4);
#         L_grad = 0.6 + 0.3 + 0.9 = 1.8; ∂/∂w_t = sign(G_t - target_t) ‖∇_W L_t‖ = (2, 1, -0.5)
#         (through the target as well, the bug, it would be (1.6, 0.8, -0.6))
# case 2: G = (1, 3), Ḡ = 2; L̃ = (1, 0.25), r = (1.6, 0.4); α = 0.5: target = 2 (√1.6, √0.4);
#         (w = (0.5, 1.5), norms (2, 2)) L_grad = |1 - 2√1.6| + |3 - 2√0.4|; G_1 below, G_2 above its target:
#         ∂/∂w = (-2, 2)
_GRADNORM_CASES = [
    ((1.0, 1.0, 1.0), (2.0, 1.0, 0.5), (1.0, 0.5, 0.5), (1.0, 1.0, 0.5), 1.0, 1.8, (2.0, 1.0, -0.5)),
    ((0.5, 1.5), (2.0, 2.0), (1.0, 0.25), (1.0, 1.0), 0.5,
     abs(1 - 2 * math.sqrt(1.6)) + abs(3 - 2 * math.sqrt(0.4)), (-2.0, 2.0)),
]


@_never_crash("a scalar tensor L_grad that carries a gradient to w")
def check_gradnorm_loss(gradnorm_loss: Callable[..., torch.Tensor], verbose: bool = True,
                        seed: int = 0) -> CheckResult:
    """Chapter 7 exercise: GradNorm's gradient loss,
    ``gradnorm_loss(w, grad_norms, losses, initial_losses, alpha) -> L_grad`` (a scalar tensor).

    ``G_t = w_t ‖∇_W L_t‖``, ``Ḡ = mean_t G_t``, ``L̃_t = L_t / L_t(0)``, ``r_t = L̃_t / mean_j L̃_j``;
    ``L_grad = Σ_t |G_t − sg[Ḡ r_t^α]|``, the target a constant (Chen et al. 2018, Eq. 2). Both the value and
    the gradient w.r.t. ``w`` are compared, so a target that lets gradient through (the classic mistake)
    fails. Hand-computed cases and 30 random ones; calling the package's ``GradNorm`` is a FAIL.
    """
    from .weighting import GradNorm

    name = "check_gradnorm_loss"
    watch = _Watch({"GradNorm.gradnorm_loss": GradNorm.gradnorm_loss, "GradNorm.backward": GradNorm.backward})
    gen = torch.Generator().manual_seed(seed)
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)   # noqa: E731
    cases = [(f64(w), f64(n), f64(l), f64(l0), a, f64(value), f64(grad), "hand-computed")
             for w, n, l, l0, a, value, grad in _GRADNORM_CASES]
    for i in range(30):
        t = 2 + i % 3
        w = 0.2 + 2 * torch.rand(t, generator=gen, dtype=torch.float64)
        norms = 0.1 + 3 * torch.rand(t, generator=gen, dtype=torch.float64)
        initial = 0.5 + 2 * torch.rand(t, generator=gen, dtype=torch.float64)
        losses = initial * (0.2 + 0.8 * torch.rand(t, generator=gen, dtype=torch.float64))
        alpha = (0.0, 0.5, 1.5, 3.0)[i % 4]
        leaf = w.clone().requires_grad_(True)
        value = _reference_gradnorm_loss(leaf, norms, losses, initial, alpha)
        cases.append((w, norms, losses, initial, alpha, value.detach(), torch.autograd.grad(value, leaf)[0], "random"))
    worst = 0.0
    for w, norms, losses, initial, alpha, value, grad, kind in cases:
        leaf = w.clone().requires_grad_(True)
        got, failure = _watched_run(name, watch, lambda: gradnorm_loss(leaf, norms.clone(), losses.clone(),
                                                                       initial.clone(), alpha))
        if failure is not None:
            return _report(failure, verbose)
        where = (f"w = {w.tolist()}, norms = {norms.tolist()}, losses = {losses.tolist()}, initial = "
                 f"{initial.tolist()}, α = {alpha}" if kind == "hand-computed" else f"{len(w)} random tasks, α = {alpha}")
        if not isinstance(got, torch.Tensor) or got.numel() != 1 or got.dim() > 1:
            shown = _describe(got) if not isinstance(got, torch.Tensor) else f"shape {tuple(got.shape)}"
            return _report(CheckResult(name, False, f"must return L_grad as a scalar tensor, got {shown}; expected "
                                                    f"a tensor of shape ()"), verbose)
        if _non_finite(got) is not None:
            return _report(_not_finite_result(name, f"L_grad for {where}", "a finite scalar"), verbose)
        err = abs(float(got.detach().double().reshape(())) - float(value))
        if err > 1e-9:
            return _report(CheckResult(name, False, f"for {where} ({kind} case): L_grad = {float(got.detach()):.6g}, expected "
                                                    f"{float(value):.6g} (G_t = w_t·norm_t, r_t = L̃_t / mean L̃, "
                                                    f"target Ḡ·r_t^α)", err, 1e-9), verbose)
        if not got.requires_grad:
            return _report(CheckResult(name, False, f"for {where}: the value is right but no gradient reaches w; "
                                                    f"only the target Ḡ·r^α is a constant, G_t = w_t·norm_t must "
                                                    f"stay differentiable"), verbose)
        (g_w,) = torch.autograd.grad(got.reshape(()), leaf, allow_unused=True)
        g_w = torch.zeros_like(leaf) if g_w is None else g_w
        grad_err = max_error(g_w.double(), grad)
        if grad_err > 1e-9:
            return _report(CheckResult(name, False, f"for {where} ({kind} case): the value is right but ∂L_grad/∂w "
                                                    f"is {g_w.tolist()}, expected {grad.tolist()}: the target "
                                                    f"Ḡ·r^α must get no gradient (detach it)", grad_err, 1e-9),
                           verbose)
        worst = max(worst, err, grad_err)
    return _report(CheckResult(name, True, f"value and gradient w.r.t. w on {len(cases)} cases (2 hand-computed)",
                               worst, 1e-9), verbose)
