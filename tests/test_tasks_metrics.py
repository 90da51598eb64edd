import math

import pytest
import torch

from mtlutils.metrics import ClassMetrics, RegressMetrics, delta_mtl
from mtlutils.tasks import TASKS, Task, as_task_dict


def test_task_validation():
    with pytest.raises(ValueError, match="unknown task kind 'segmentation'.*class"):
        Task("x", "segmentation", 3)
    with pytest.raises(ValueError, match="out_channels must be >= 1"):
        Task("x", "regress", 0)
    with pytest.raises(ValueError, match=">= 2 classes"):
        Task("x", "class", 1)
    with pytest.raises(ValueError, match="two tasks are named"):
        as_task_dict([TASKS["left"], TASKS["left"]])
    with pytest.raises(TypeError):
        as_task_dict(["left"])


def test_class_loss_is_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([0, 0])
    # -log softmax: sample 1: log(1 + e^-2); sample 2: log(1 + e^1)
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1))) / 2
    assert Task("t", "class", 2).loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_regress_loss_is_mean_absolute_error():
    pred = torch.tensor([[1.0], [3.0], [0.5]])
    target = torch.tensor([2.0, 3.0, -0.5])
    assert Task("age", "regress", 1).loss(pred, target).item() == pytest.approx((1 + 0 + 1) / 3)


def test_class_metrics_hand_case_and_batch_independence():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2, 2, 1])
    whole = ClassMetrics()
    whole.update(logits, labels)
    assert whole.compute() == {"accuracy": 50.0}
    split = ClassMetrics()
    for i in (slice(0, 1), slice(1, 4)):
        split.update(logits[i], labels[i])
    assert split.compute() == whole.compute()
    with pytest.raises(ValueError, match="logits"):
        ClassMetrics().update(logits, labels[:2])
    with pytest.raises(RuntimeError):
        ClassMetrics().compute()


def test_regress_metrics_brute_force():
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(101, generator=gen), torch.randn(101, generator=gen)
    m = RegressMetrics()
    for start in range(0, 101, 17):  # uneven batches must not change the result
        m.update(pred[start:start + 17], target[start:start + 17])
    out = m.compute()
    assert out["mae"] == pytest.approx(float((pred - target).abs().mean()), rel=1e-6)
    assert out["rmse"] == pytest.approx(float(((pred - target) ** 2).mean().sqrt()), rel=1e-6)


def test_delta_mtl_hand_case():
    base = {"left/accuracy": 80.0, "age/mae": 10.0}
    model = {"left/accuracy": 88.0, "age/mae": 9.0}
    # (+10% for accuracy, +10% for a 10% lower error) / 2
    assert delta_mtl(model, base) == pytest.approx(10.0)
    assert delta_mtl(base, base) == 0.0
    worse = {"left/accuracy": 72.0, "age/mae": 11.0}
    assert delta_mtl(worse, base) == pytest.approx(-10.0)
    with pytest.raises(ValueError, match="same metrics"):
        delta_mtl({"left/accuracy": 1.0}, base)
    with pytest.raises(KeyError, match="unknown direction"):
        delta_mtl({"x/foo": 1.0}, {"x/foo": 2.0})
    assert delta_mtl({"x/foo": 1.0}, {"x/foo": 2.0}, higher_is_better={"foo": False}) == pytest.approx(50.0)
