"""Streaming evaluation metrics: ``update`` per batch, ``compute`` once at the end.

Every metric is accumulated over the whole evaluation set (sums and counts), never averaged per batch,
so the result does not depend on the batch size. ``HIGHER_IS_BETTER`` tells :func:`delta_mtl` the
direction of each metric name.

The dense-prediction metrics (:class:`SegMetrics`, :class:`DepthMetrics`, :class:`NormalMetrics`,
papers.md §4) follow the same rule by default; their ``per_batch=True`` option deliberately reproduces
the MTAN reference code's per-batch averaging (papers.md §2.1) so that the difference can be shown.
Device handling: ``update`` accepts tensors on any device; it detaches them, reduces on the input device
only where that shrinks the data (the arg-max over segmentation logits), and moves the rest to the CPU.
All accumulated state lives on the CPU (confusion matrix int64, sums float64, normal angles float32).
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

# direction of every metric name produced in this module (used by delta_mtl)
HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True, "mae": False, "rmse": False,
    # dense prediction (papers.md §4): segmentation, depth, surface normals
    "miou": True, "pixacc": True,
    "abs_err": False, "rel_err": False,
    "mean": False, "median": False, "within_11.25": True, "within_22.5": True, "within_30": True,
}


class Metric:
    """Base class: accumulate with :meth:`update`, read with :meth:`compute`, clear with :meth:`reset`."""

    names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:  # pragma: no cover
        raise NotImplementedError

    def compute(self) -> dict[str, float]:  # pragma: no cover
        raise NotImplementedError

    def merge(self, other: "Metric") -> None:
        """Add the state of ``other`` (same class and settings, e.g. another process's shard of the
        evaluation set) to this one, as if every ``update`` of ``other`` had been made here."""
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        for name in self._summed:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in self._listed:
            getattr(self, name).extend(getattr(other, name))

    # names of the state attributes that add up, and of the lists that concatenate, under merge
    _summed: tuple[str, ...] = ()
    _listed: tuple[str, ...] = ()


class ClassMetrics(Metric):
    """Classification accuracy (in %) of logits ``(N, C)`` against integer labels ``(N,)``."""

    names = ("accuracy",)
    _summed = ("correct", "count")

    def reset(self) -> None:
        self.correct = 0
        self.count = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.dim() != 2 or target.shape != pred.shape[:1]:
            raise ValueError(f"ClassMetrics expects logits (N, C) and labels (N,), got "
                             f"{tuple(pred.shape)} and {tuple(target.shape)}")
        self.correct += int((pred.argmax(dim=1) == target).sum())
        self.count += int(target.numel())

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            raise RuntimeError("ClassMetrics.compute() before any update()")
        return {"accuracy": 100.0 * self.correct / self.count}


class RegressMetrics(Metric):
    """Mean absolute error and root mean squared error of predictions ``(N,)`` or ``(N, 1)``."""

    names = ("mae", "rmse")
    _summed = ("abs_sum", "sq_sum", "count")

    def reset(self) -> None:
        self.abs_sum = 0.0
        self.sq_sum = 0.0
        self.count = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred = pred.reshape(-1).double()
        target = target.reshape(-1).double()
        if pred.shape != target.shape:
            raise ValueError(f"RegressMetrics: {pred.numel()} predictions for {target.numel()} targets")
        diff = pred - target
        self.abs_sum += float(diff.abs().sum())
        self.sq_sum += float((diff * diff).sum())
        self.count += int(diff.numel())

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            raise RuntimeError("RegressMetrics.compute() before any update()")
        return {"mae": self.abs_sum / self.count, "rmse": (self.sq_sum / self.count) ** 0.5}


# ----------------------------------------------------------------------------------------------------
# Dense prediction (papers.md §4; the reference code's versions and their problems: §2.1)
# ----------------------------------------------------------------------------------------------------

def _as_labels(x: torch.Tensor, what: str) -> torch.Tensor:
    """Detached int64 copy of a label tensor; float tensors are accepted only if every value is whole."""
    x = x.detach()
    if x.dtype == torch.bool:
        raise ValueError(f"{what} must be integer class labels, got a bool tensor")
    if x.is_floating_point() or x.is_complex():
        if not bool((x == x.round()).all()):
            raise ValueError(f"{what} must be integer class labels, got non-integer values ({x.dtype})")
    return x.long()


def _median(values: torch.Tensor) -> float:
    """Median as numpy defines it (mean of the two middle values when the count is even)."""
    n = values.numel()
    lo = float(torch.kthvalue(values, (n + 1) // 2).values)
    hi = lo if n % 2 else float(torch.kthvalue(values, n // 2 + 1).values)
    return (lo + hi) / 2


class SegMetrics(Metric):
    """Semantic segmentation: mean IoU and pixel accuracy, both in %.

    ``update(pred, target)``: ``pred`` is logits or log-probabilities ``(N, C, H, W)`` (arg-max over C)
    or integer labels ``(N, H, W)``; ``target`` is ``(N, H, W)`` integer labels, ``-1`` = void (ignored).

    Default (dataset-wide): one C×C confusion matrix ``confusion[true, pred]`` (int64) is accumulated over
    the whole set, then ``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` and ``miou = mean_c IoU_c`` over the
    classes with a non-empty union (TP + FP + FN > 0). A class absent from both the ground truth and the
    predictions has no defined IoU and is left out of the mean (the MTAN reference code's plain mean would
    turn it into NaN); a class in the ground truth that is never predicted, or predicted but never in the
    ground truth, counts with IoU 0. ``pixacc = Σ_c TP_c / #valid pixels``.

    ``per_batch=True`` reproduces the MTAN reference code: each ``update`` call is one batch; mIoU (over
    the classes with a non-empty union *in that batch*) and pixel accuracy are computed from that batch's
    own confusion matrix, and ``compute`` returns the unweighted mean of the batch values (every batch
    counts equally, whatever its size or number of valid pixels; batches without a valid pixel are
    skipped). It equals the paper-era per-image mIoU only at batch size 1; with larger batches it is a
    per-batch mIoU, a different number that changes with the batch size and with how the evaluation set
    is cut into batches. :meth:`iou_per_class` is always dataset-wide.

    Non-finite logits (a diverged model): a valid pixel whose C logits are not all finite has no
    prediction and counts as wrong: a false negative of its true class (in :attr:`unpredicted`, per true
    class), a false positive of no class, and a miss in the pixel accuracy. (The arg-max of NaN logits
    would otherwise be class 0, and a ground truth of class 0 would score 100.)
    """

    names = ("miou", "pixacc")
    _summed = ("confusion", "unpredicted")
    _listed = ("batch_values",)

    def __init__(self, num_classes: int, per_batch: bool = False) -> None:
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"SegMetrics: num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.per_batch = bool(per_batch)
        super().__init__()

    def reset(self) -> None:
        c = self.num_classes
        self.confusion = torch.zeros(c, c, dtype=torch.int64)
        self.unpredicted = torch.zeros(c, dtype=torch.int64)  # valid pixels with non-finite logits, per true class
        self.batch_values: list[tuple[float, float]] = []  # (miou, pixacc) per batch, per_batch mode

    @staticmethod
    def _scores(confusion: torch.Tensor, unpredicted: torch.Tensor) -> tuple[torch.Tensor, float] | None:
        """(IoU per class in %, NaN for an empty union; pixel accuracy in %), None without valid pixels.
        ``unpredicted[c]``: pixels of true class c without a prediction (false negatives only)."""
        conf = confusion.double()
        missed = unpredicted.double()
        total = float(conf.sum() + missed.sum())
        if total == 0:
            return None
        tp = conf.diag()
        union = conf.sum(0) + conf.sum(1) - tp + missed  # TP + FP + FN
        iou = torch.where(union > 0, 100.0 * tp / union.clamp(min=1), torch.full_like(tp, math.nan))
        return iou, 100.0 * float(tp.sum()) / total

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        c = self.num_classes
        if target.dim() != 3:
            raise ValueError(f"SegMetrics: target must be labels (N, H, W), got shape {tuple(target.shape)}")
        if pred.dim() == 4:
            if pred.shape[1] != c:
                raise ValueError(f"SegMetrics: logits have {pred.shape[1]} channels for {c} classes "
                                 f"(pred shape {tuple(pred.shape)})")
            if pred.shape[:1] + pred.shape[2:] != target.shape:
                raise ValueError(f"SegMetrics: logits (N, C, H, W) {tuple(pred.shape)} do not match "
                                 f"target (N, H, W) {tuple(target.shape)}")
            logits = pred.detach()
            labels = logits.argmax(dim=1)  # on the input device: C times less to move
            finite = torch.isfinite(logits).all(dim=1) if logits.is_floating_point() else None
            if finite is not None and bool(finite.all()):
                finite = None  # the usual case: no mask to move
        elif pred.dim() == 3:
            if pred.shape != target.shape:
                raise ValueError(f"SegMetrics: predicted labels {tuple(pred.shape)} do not match "
                                 f"target {tuple(target.shape)}")
            labels = _as_labels(pred, "SegMetrics: predicted labels (N, H, W)")
            finite = None
        else:
            raise ValueError(f"SegMetrics: pred must be logits (N, C, H, W) or labels (N, H, W), got shape "
                             f"{tuple(pred.shape)}")
        labels = labels.long().cpu().reshape(-1)
        truth = _as_labels(target, "SegMetrics: target").cpu().reshape(-1)
        if truth.numel() and (int(truth.min()) < -1 or int(truth.max()) >= c):
            raise ValueError(f"SegMetrics: target labels must be in [0, {c - 1}] or -1 (void), found values "
                             f"in [{int(truth.min())}, {int(truth.max())}]")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= c):
            raise ValueError(f"SegMetrics: predicted labels must be in [0, {c - 1}], found values in "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        valid = truth >= 0
        unpredicted = torch.zeros(c, dtype=torch.int64)
        if finite is not None:
            finite = finite.cpu().reshape(-1)
            unpredicted = torch.bincount(truth[valid & ~finite], minlength=c)
            valid &= finite
        batch = torch.bincount(truth[valid] * c + labels[valid], minlength=c * c).reshape(c, c)
        self.confusion += batch
        self.unpredicted += unpredicted
        if self.per_batch:
            scores = self._scores(batch, unpredicted)
            if scores is not None:
                iou, pixacc = scores
                self.batch_values.append((float(iou.nanmean()), pixacc))

    def iou_per_class(self) -> torch.Tensor:
        """Dataset-wide IoU of every class in % (float64, length C); NaN where TP + FP + FN = 0."""
        scores = self._scores(self.confusion, self.unpredicted)
        if scores is None:
            raise RuntimeError("SegMetrics.iou_per_class() without any valid (non-void) pixel")
        return scores[0]

    def compute(self) -> dict[str, float]:
        if self.per_batch:
            if not self.batch_values:
                raise RuntimeError("SegMetrics.compute() without any valid (non-void) pixel")
            n = len(self.batch_values)
            return {"miou": sum(v[0] for v in self.batch_values) / n,
                    "pixacc": sum(v[1] for v in self.batch_values) / n}
        scores = self._scores(self.confusion, self.unpredicted)
        if scores is None:
            raise RuntimeError("SegMetrics.compute() without any valid (non-void) pixel")
        iou, pixacc = scores
        return {"miou": float(iou.nanmean()), "pixacc": pixacc}


def _dense_pair(pred: torch.Tensor, target: torch.Tensor, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth maps ``(N, 1, H, W)`` or ``(N, H, W)`` -> detached float64 CPU tensors ``(N, H, W)``."""
    out = []
    for name, x in (("pred", pred), ("target", target)):
        if x.dim() == 4 and x.shape[1] == 1:
            x = x[:, 0]
        if x.dim() != 3:
            raise ValueError(f"{who}: {name} must be (N, 1, H, W) or (N, H, W), got shape {tuple(x.shape)}")
        out.append(x.detach().cpu().double())
    if out[0].shape != out[1].shape:
        raise ValueError(f"{who}: pred {tuple(pred.shape)} and target {tuple(target.shape)} do not match")
    return out[0], out[1]


class DepthMetrics(Metric):
    """Depth: absolute and relative error over valid pixels (target ≠ 0), papers.md §4.

    ``abs_err = mean |ŷ − y|`` and ``rel_err = mean |ŷ − y| / y``, both over every valid pixel of the
    whole set (pixel-weighted; sums in float64). ``pred`` and ``target`` are ``(N, 1, H, W)`` or
    ``(N, H, W)``. ``per_batch=True`` reproduces the MTAN reference code: the means over the valid pixels
    of each ``update`` call, then the unweighted mean over those calls (batches without a valid pixel are
    skipped), so a batch with few valid pixels weighs as much as a full one.
    """

    names = ("abs_err", "rel_err")
    _summed = ("abs_sum", "rel_sum", "count")
    _listed = ("batch_values",)

    def __init__(self, per_batch: bool = False) -> None:
        self.per_batch = bool(per_batch)
        super().__init__()

    def reset(self) -> None:
        self.abs_sum = 0.0
        self.rel_sum = 0.0
        self.count = 0
        self.batch_values: list[tuple[float, float]] = []  # (abs_err, rel_err) per batch

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        p, y = _dense_pair(pred, target, "DepthMetrics")
        valid = y != 0
        err = (p[valid] - y[valid]).abs()
        abs_sum, rel_sum, n = float(err.sum()), float((err / y[valid]).sum()), int(err.numel())
        self.abs_sum += abs_sum
        self.rel_sum += rel_sum
        self.count += n
        if self.per_batch and n:
            self.batch_values.append((abs_sum / n, rel_sum / n))

    def compute(self) -> dict[str, float]:
        if self.per_batch:
            if not self.batch_values:
                raise RuntimeError("DepthMetrics.compute() without any valid (target != 0) pixel")
            k = len(self.batch_values)
            return {"abs_err": sum(v[0] for v in self.batch_values) / k,
                    "rel_err": sum(v[1] for v in self.batch_values) / k}
        if self.count == 0:
            raise RuntimeError("DepthMetrics.compute() without any valid (target != 0) pixel")
        return {"abs_err": self.abs_sum / self.count, "rel_err": self.rel_sum / self.count}


class NormalMetrics(Metric):
    """Surface normals: angular error in degrees over valid pixels (target not all-zero), papers.md §4.

    ``pred`` and ``target`` are ``(N, 3, H, W)``. Predictions are normalised to unit length before use
    (a zero prediction stays zero and scores 90°); targets are used as given (unit normals). Per pixel,
    ``angle = degrees(acos(clamp(⟨ŷ, y⟩, −1, 1)))``. Results over all valid pixels of the whole set:
    ``mean``, ``median`` (the true median: every angle is kept as float32 on the CPU and the median taken
    at :meth:`compute`; the mean of the two middle values for an even count), and ``within_11.25``,
    ``within_22.5``, ``within_30``: % of angles strictly below the threshold (as the reference code).
    ``per_batch=True`` reproduces the MTAN reference code: every value is computed per ``update`` call and
    averaged over calls with equal weight, so its "median" is the mean of per-batch medians.
    """

    THRESHOLDS: tuple[float, ...] = (11.25, 22.5, 30.0)
    names = ("mean", "median", "within_11.25", "within_22.5", "within_30")
    _summed = ("angle_sum", "count")
    _listed = ("angles", "batch_values")

    def __init__(self, per_batch: bool = False) -> None:
        self.per_batch = bool(per_batch)
        super().__init__()

    def reset(self) -> None:
        self.angles: list[torch.Tensor] = []  # float32 CPU, one tensor per batch
        self.angle_sum = 0.0
        self.within = [0] * len(self.THRESHOLDS)
        self.count = 0
        self.batch_values: list[dict[str, float]] = []

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.dim() != 4 or pred.shape[1] != 3 or pred.shape != target.shape:
            raise ValueError(f"NormalMetrics expects pred and target (N, 3, H, W) of the same shape, got "
                             f"{tuple(pred.shape)} and {tuple(target.shape)}")
        p = torch.nn.functional.normalize(pred.detach().cpu().double(), dim=1)
        y = target.detach().cpu().double()
        valid = (y != 0).any(dim=1)  # (N, H, W)
        cos = (p * y).sum(dim=1)[valid].clamp(-1.0, 1.0)
        angles = torch.rad2deg(torch.acos(cos))
        within = [int((angles < t).sum()) for t in self.THRESHOLDS]
        n = int(angles.numel())
        stored = angles.float()
        self.angles.append(stored)
        self.angle_sum += float(angles.sum())
        self.within = [a + b for a, b in zip(self.within, within)]
        self.count += n
        if self.per_batch and n:
            self.batch_values.append(self._summary(float(angles.sum()) / n, _median(stored), within, n))

    def merge(self, other: Metric) -> None:
        super().merge(other)
        self.within = [a + b for a, b in zip(self.within, other.within)]  # type: ignore[attr-defined]

    def _summary(self, mean: float, median: float, within: list[int], n: int) -> dict[str, float]:
        out = {"mean": mean, "median": median}
        out.update({name: 100.0 * w / n for name, w in zip(self.names[2:], within)})
        return out

    def compute(self) -> dict[str, float]:
        if self.per_batch:
            if not self.batch_values:
                raise RuntimeError("NormalMetrics.compute() without any valid (non-zero target) pixel")
            k = len(self.batch_values)
            return {name: sum(v[name] for v in self.batch_values) / k for name in self.names}
        if self.count == 0:
            raise RuntimeError("NormalMetrics.compute() without any valid (non-zero target) pixel")
        median = _median(torch.cat(self.angles))
        return self._summary(self.angle_sum / self.count, median, self.within, self.count)


def delta_mtl(model: Mapping[str, float], baseline: Mapping[str, float],
              higher_is_better: Mapping[str, bool] | None = None) -> float:
    """Δ_MTL of Maninis et al. (2019), in %: the mean relative change over all metrics.

    ``Δ = (1/n) Σ_j (−1)^{l_j} (M_m,j − M_b,j) / M_b,j × 100``, with ``l_j = 1`` when lower is better.
    Keys are metric names such as ``"left/accuracy"``; the direction is looked up by the last part of
    the name in ``higher_is_better`` (default: :data:`HIGHER_IS_BETTER`). Positive means better.
    """
    directions = dict(HIGHER_IS_BETTER, **(higher_is_better or {}))
    if set(model) != set(baseline):
        raise ValueError(f"model and baseline must report the same metrics: "
                         f"{sorted(model)} vs {sorted(baseline)}")
    if not model:
        raise ValueError("delta_mtl needs at least one metric")
    total = 0.0
    for key, value in model.items():
        name = key.split("/")[-1]
        if name not in directions:
            raise KeyError(f"unknown direction for metric {key!r}; pass higher_is_better={{{name!r}: ...}}")
        base = baseline[key]
        if base == 0:
            raise ZeroDivisionError(f"baseline value of {key!r} is 0: relative change undefined")
        sign = 1.0 if directions[name] else -1.0
        total += sign * (value - base) / base
    return 100.0 * total / len(model)
