"""Dense-prediction metrics (chapter 2, eq-miou): hand cases, brute force, batch independence, per-batch mode."""
import math

import numpy as np
import pytest
import torch

from mtlutils.metrics import (HIGHER_IS_BETTER, ClassMetrics, DepthMetrics, NormalMetrics, RegressMetrics, SegMetrics,
                              delta_mtl)


def one_hot_logits(labels: torch.Tensor, c: int) -> torch.Tensor:
    """Logits (N, C, H, W) whose arg-max is ``labels`` (N, H, W)."""
    return torch.nn.functional.one_hot(labels, c).permute(0, 3, 1, 2).float() * 5.0


# ---------------------------------------------------------------- segmentation

def test_seg_hand_case_with_void_and_absent_class():
    # 4 classes; class 3 appears neither in truth nor in prediction -> excluded from the mean.
    target = torch.tensor([[[0, 0, 1], [1, 2, -1]]])  # one void pixel
    pred = torch.tensor([[[0, 1, 1], [1, 2, 3]]])  # the 3 sits on the void pixel: ignored
    # valid pixels (true, pred): (0,0) (0,1) (1,1) (1,1) (2,2)
    # class 0: TP 1, FP 0, FN 1 -> 1/2;  class 1: TP 2, FP 1, FN 0 -> 2/3;  class 2: TP 1 -> 1
    # mIoU = (1/2 + 2/3 + 1) / 3 = 13/18;  pixacc = 4 correct / 5 valid
    for p in (pred, one_hot_logits(pred, 4)):
        m = SegMetrics(4)
        m.update(p, target)
        out = m.compute()
        assert out["miou"] == pytest.approx(100 * 13 / 18)
        assert out["pixacc"] == pytest.approx(80.0)
        iou = m.iou_per_class()
        assert iou[:3].tolist() == pytest.approx([50.0, 200 / 3, 100.0])
        assert math.isnan(iou[3])
    assert m.confusion.dtype == torch.int64 and int(m.confusion.sum()) == 5


def test_seg_class_only_predicted_or_only_true_counts_as_zero():
    target = torch.tensor([[[0, 0, 1, 1]]])
    pred = torch.tensor([[[0, 0, 2, 2]]])
    # class 0: 2/2 = 1; class 1 (never predicted): 0/2; class 2 (never true): 0/2 -> mIoU = 1/3
    m = SegMetrics(3)
    m.update(pred, target)
    assert m.compute() == pytest.approx({"miou": 100 / 3, "pixacc": 50.0})


def seg_brute_force(preds, targets, c):
    """Pixel loop: per-class TP/FP/FN counts over the whole set."""
    tp, fp, fn = [0] * c, [0] * c, [0] * c
    correct = valid = 0
    for p_b, t_b in zip(preds, targets):
        for p, t in zip(p_b.reshape(-1).tolist(), t_b.reshape(-1).tolist()):
            if t < 0:
                continue
            valid += 1
            if p == t:
                tp[t] += 1
                correct += 1
            else:
                fp[p] += 1
                fn[t] += 1
    ious = [tp[k] / (tp[k] + fp[k] + fn[k]) for k in range(c) if tp[k] + fp[k] + fn[k] > 0]
    return 100 * sum(ious) / len(ious), 100 * correct / valid


def test_seg_brute_force_and_batch_independence():
    gen = torch.Generator().manual_seed(0)
    c = 6
    logits = [torch.randn(n, c, 5, 7, generator=gen) for n in (2, 3, 1)]
    targets = [torch.randint(-1, c - 1, (n, 5, 7), generator=gen) for n in (2, 3, 1)]  # class 5 never true
    m = SegMetrics(c)
    for p, t in zip(logits, targets):
        m.update(p, t)
    miou, pixacc = seg_brute_force([p.argmax(1) for p in logits], targets, c)
    out = m.compute()
    assert out["miou"] == pytest.approx(miou, rel=1e-12)
    assert out["pixacc"] == pytest.approx(pixacc, rel=1e-12)
    # batch size and order do not matter
    all_p, all_t = torch.cat(logits), torch.cat(targets)
    for order in (torch.arange(6), torch.randperm(6, generator=gen)):
        m2 = SegMetrics(c)
        for i in order.split(4):
            m2.update(all_p[i], all_t[i])
        assert m2.compute() == pytest.approx(out, rel=1e-12)


def test_seg_per_batch_differs_and_equals_mean_of_batch_values():
    # batch 1: 1 pixel, correct -> mIoU 100, pixacc 100
    # batch 2: 4 pixels, truth 0 0 1 1, pred 0 1 1 0 -> IoU0 = 1/3, IoU1 = 1/3, pixacc 50
    b1 = (torch.tensor([[[0]]]), torch.tensor([[[0]]]))
    b2 = (torch.tensor([[[0, 1, 1, 0]]]), torch.tensor([[[0, 0, 1, 1]]]))
    whole, per = SegMetrics(2), SegMetrics(2, per_batch=True)
    for m in (whole, per):
        for p, t in (b1, b2):
            m.update(p, t)
    # dataset-wide: TP0 2, FP0 1, FN0 1 -> 1/2; TP1 1, FP1 1, FN1 1 -> 1/3; pixacc 3/5
    assert whole.compute() == pytest.approx({"miou": 100 * (1 / 2 + 1 / 3) / 2, "pixacc": 60.0})
    # per batch: batch 1 mIoU = 100 (class 1 absent from that batch), batch 2 = 100/3
    assert per.compute() == pytest.approx({"miou": (100 + 100 / 3) / 2, "pixacc": (100 + 50) / 2})
    assert per.compute()["miou"] != pytest.approx(whole.compute()["miou"])
    assert per.iou_per_class().tolist() == pytest.approx(whole.iou_per_class().tolist())  # dataset-wide


def test_seg_errors():
    m = SegMetrics(3)
    t = torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="do not match"):
        m.update(torch.zeros(2, 4, 5, dtype=torch.long), t)
    with pytest.raises(ValueError, match="channels for 3 classes"):
        m.update(torch.zeros(2, 4, 4, 4), t)
    with pytest.raises(ValueError, match="do not match"):
        m.update(torch.zeros(2, 3, 4, 5), t)
    with pytest.raises(ValueError, match="target must be labels"):
        m.update(torch.zeros(2, 3, 4, 4), t[:, None])
    with pytest.raises(ValueError, match=r"target labels must be in \[0, 2\] or -1"):
        m.update(torch.zeros(2, 4, 4, dtype=torch.long), torch.full((2, 4, 4), 3))
    with pytest.raises(ValueError, match=r"target labels must be in \[0, 2\] or -1"):
        m.update(torch.zeros(2, 4, 4, dtype=torch.long), torch.full((2, 4, 4), -2))
    with pytest.raises(ValueError, match=r"predicted labels must be in \[0, 2\]"):
        m.update(torch.full((2, 4, 4), 3), t)
    with pytest.raises(ValueError, match="non-integer"):
        m.update(torch.full((2, 4, 4), 0.5), t)
    assert int(m.confusion.sum()) == 0  # failed updates leave no trace
    with pytest.raises(RuntimeError):
        m.compute()
    m.update(torch.zeros(2, 4, 4, dtype=torch.long), torch.full((2, 4, 4), -1))  # all void
    with pytest.raises(RuntimeError, match="valid"):
        m.compute()


def test_seg_non_finite_logits_count_as_wrong_not_as_class_0():
    target = torch.zeros(1, 2, 2, dtype=torch.long)                 # every pixel is class 0
    nan = torch.full((1, 3, 2, 2), float("nan"))                    # arg-max of NaN logits is class 0
    for per_batch in (False, True):
        m = SegMetrics(3, per_batch=per_batch)
        m.update(nan, target)
        assert m.compute() == {"miou": 0.0, "pixacc": 0.0}         # was 100 / 100
    # one pixel with a NaN, one with an inf logit: both unpredicted; the two others right
    logits = one_hot_logits(torch.tensor([[[0, 1], [0, 1]]]), 3)
    logits[0, 2, 0, 0] = float("nan")
    logits[0, 1, 1, 1] = float("inf")
    truth = torch.tensor([[[0, 1], [0, 1]]])
    m = SegMetrics(3)
    m.update(logits, truth)
    assert m.unpredicted.tolist() == [1, 1, 0] and int(m.confusion.sum()) == 2
    assert m.compute() == pytest.approx({"miou": 50.0, "pixacc": 50.0})   # IoU 1/2 for classes 0 and 1
    other = SegMetrics(3)
    other.merge(m)
    assert other.unpredicted.tolist() == [1, 1, 0] and other.compute() == m.compute()
    m.update(torch.full((1, 3, 2, 2), float("nan")), torch.full((1, 2, 2), -1))   # void pixels: ignored
    assert m.unpredicted.tolist() == [1, 1, 0]


# ---------------------------------------------------------------- depth

def test_depth_hand_case_invalid_pixels_ignored():
    target = torch.tensor([[[[1.0, 2.0], [0.0, 4.0]]]])  # (1, 1, 2, 2); 0 = invalid
    pred = torch.tensor([[[[2.0, 1.0], [9.0, 5.0]]]])
    # valid errors |p - y|: 1, 1, 1 -> abs 1; relative: 1/1, 1/2, 1/4 -> (1.75)/3
    for p, t in ((pred, target), (pred[:, 0], target[:, 0]), (pred, target[:, 0])):
        m = DepthMetrics()
        m.update(p, t)
        assert m.compute() == pytest.approx({"abs_err": 1.0, "rel_err": 1.75 / 3})


def test_depth_brute_force_batch_independence_and_per_batch():
    gen = torch.Generator().manual_seed(1)
    pred = torch.rand(6, 1, 4, 5, generator=gen) * 3
    target = torch.rand(6, 1, 4, 5, generator=gen) * 3 + 0.1
    target[target < 0.8] = 0  # about a quarter invalid
    target[0] = 0  # one image entirely invalid
    p_np, t_np = pred.numpy().ravel().astype(np.float64), target.numpy().ravel().astype(np.float64)
    abs_sum = rel_sum = 0.0
    n = 0
    for p, y in zip(p_np, t_np):
        if y != 0:
            abs_sum += abs(p - y)
            rel_sum += abs(p - y) / y
            n += 1
    expected = {"abs_err": abs_sum / n, "rel_err": rel_sum / n}
    results = []
    for size in (1, 4, 6):
        m = DepthMetrics()
        for i in range(0, 6, size):
            m.update(pred[i:i + size], target[i:i + size])
        results.append(m.compute())
        assert results[-1] == pytest.approx(expected, rel=1e-12)
    # per batch (batches of 2): mean over batches of the per-batch pixel means
    per = DepthMetrics(per_batch=True)
    batch_abs = []
    for i in range(0, 6, 2):
        per.update(pred[i:i + 2], target[i:i + 2])
        valid = target[i:i + 2] != 0
        batch_abs.append(float((pred[i:i + 2] - target[i:i + 2]).abs()[valid].double().mean()))
    assert per.compute()["abs_err"] == pytest.approx(sum(batch_abs) / 3, rel=1e-6)


def test_depth_per_batch_differs_hand_case():
    whole, per = DepthMetrics(), DepthMetrics(per_batch=True)
    batches = [  # batch 1: one valid pixel, error 4; batch 2: three valid pixels, error 0; one invalid
        (torch.tensor([[[5.0]]]), torch.tensor([[[1.0]]])),
        (torch.tensor([[[2.0, 2.0, 2.0, 7.0]]]), torch.tensor([[[2.0, 2.0, 2.0, 0.0]]])),
        (torch.tensor([[[3.0]]]), torch.tensor([[[0.0]]])),  # no valid pixel: skipped by per_batch
    ]
    for m in (whole, per):
        for p, t in batches:
            m.update(p, t)
    # pixel-weighted: abs (4 + 0 + 0 + 0) / 4 = 1, rel (4/1) / 4 = 1
    assert whole.compute() == pytest.approx({"abs_err": 1.0, "rel_err": 1.0})
    # per batch: abs (4 + 0) / 2 = 2, rel (4 + 0) / 2 = 2
    assert per.compute() == pytest.approx({"abs_err": 2.0, "rel_err": 2.0})


def test_depth_errors():
    with pytest.raises(ValueError, match="do not match"):
        DepthMetrics().update(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\) or \(N, H, W\)"):
        DepthMetrics().update(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4))
    m = DepthMetrics()
    m.update(torch.ones(1, 2, 2), torch.zeros(1, 2, 2))
    with pytest.raises(RuntimeError, match="valid"):
        m.compute()


# ---------------------------------------------------------------- surface normals

def unit(*v):
    v = torch.tensor(v, dtype=torch.float64)
    return v / v.norm()


def normals_image(vectors):
    """(1, 3, 1, W) from a list of 3-vectors."""
    return torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in vectors], dim=1)[None, :, None, :]


def test_normal_hand_case_normalises_predictions_and_ignores_invalid():
    z = [0.0, 0.0, 1.0]
    d10 = [0.0, math.sin(math.radians(10)), math.cos(math.radians(10))]
    target = normals_image([z, z, z, z, [0.0, 0.0, 0.0]])  # last pixel invalid
    # angles: 0 (prediction of length 2: normalised first), 10, 25 (length 3), 90, (invalid)
    pred = normals_image([[0.0, 0.0, 2.0], d10,
                          [0.0, 3 * math.sin(math.radians(25)), 3 * math.cos(math.radians(25))],
                          [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    m = NormalMetrics()
    m.update(pred, target)
    out = m.compute()
    # mean (0 + 10 + 25 + 90) / 4 = 31.25; median of [0, 10, 25, 90] = (10 + 25) / 2 = 17.5
    # within 11.25: 2/4; 22.5: 2/4; 30: 3/4
    expected = {"mean": 31.25, "median": 17.5, "within_11.25": 50.0, "within_22.5": 50.0, "within_30": 75.0}
    assert out == pytest.approx(expected, abs=1e-3)
    assert set(out) == set(NormalMetrics.names)


def test_normal_true_median_vs_per_batch_median():
    z = [0.0, 0.0, 1.0]

    def tilt(deg):
        return [0.0, math.sin(math.radians(deg)), math.cos(math.radians(deg))]

    b1 = (normals_image([tilt(0), tilt(0), tilt(1)]), normals_image([z] * 3))  # angles 0, 0, 1
    b2 = (normals_image([tilt(40), tilt(50)]), normals_image([z] * 2))  # angles 40, 50
    whole, per = NormalMetrics(), NormalMetrics(per_batch=True)
    for m in (whole, per):
        for p, t in (b1, b2):
            m.update(p, t)
    # true median of [0, 0, 1, 40, 50] = 1; mean 91 / 5 = 18.2; within 11.25: 3/5 = 60 %
    w = whole.compute()
    assert w["median"] == pytest.approx(1.0, abs=1e-3)
    assert w["mean"] == pytest.approx(18.2, abs=1e-3)
    assert w["within_11.25"] == pytest.approx(60.0)
    # per batch: medians 0 and 45 -> 22.5; means 1/3 and 45 -> 22.667; within 11.25: (100 + 0) / 2 = 50
    b = per.compute()
    assert b["median"] == pytest.approx(22.5, abs=1e-3)
    assert b["mean"] == pytest.approx((1 / 3 + 45) / 2, abs=1e-3)
    assert b["within_11.25"] == pytest.approx(50.0)
    assert b["median"] != pytest.approx(w["median"], abs=1)


def test_normal_brute_force_and_batch_independence():
    gen = torch.Generator().manual_seed(2)
    pred = torch.randn(5, 3, 4, 6, generator=gen)
    target = torch.nn.functional.normalize(torch.randn(5, 3, 4, 6, generator=gen), dim=1)
    target[:, :, 0, :2] = 0  # invalid pixels
    angles = []
    p_np = pred.double().numpy()
    t_np = target.double().numpy()
    for n in range(5):
        for i in range(4):
            for j in range(6):
                y = t_np[n, :, i, j]
                if not y.any():
                    continue
                p = p_np[n, :, i, j] / np.linalg.norm(p_np[n, :, i, j])
                angles.append(math.degrees(math.acos(max(-1.0, min(1.0, float(p @ y))))))
    angles = np.array(angles)
    expected = {"mean": angles.mean(), "median": float(np.median(angles)),
                "within_11.25": 100 * np.mean(angles < 11.25), "within_22.5": 100 * np.mean(angles < 22.5),
                "within_30": 100 * np.mean(angles < 30)}
    assert len(angles) % 2 == 0  # 5 * 22 valid pixels: the median averages two middle values
    for sizes in ((5,), (1, 4), (2, 2, 1)):
        m = NormalMetrics()
        start = 0
        for s in sizes:
            m.update(pred[start:start + s], target[start:start + s])
            start += s
        assert m.compute() == pytest.approx(expected, abs=1e-4)
    flipped = NormalMetrics()
    flipped.update(pred.flip(0), target.flip(0))  # order does not matter
    assert flipped.compute() == pytest.approx(expected, abs=1e-4)


def test_normal_errors():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        NormalMetrics().update(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        NormalMetrics().update(torch.zeros(2, 2, 4, 4), torch.zeros(2, 2, 4, 4))
    m = NormalMetrics()
    m.update(torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))
    with pytest.raises(RuntimeError, match="valid"):
        m.compute()


# ---------------------------------------------------------------- shared behaviour

def test_reset_gradients_and_delta_mtl_directions():
    m = SegMetrics(2)
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    m.update(logits, torch.zeros(1, 3, 3, dtype=torch.long))
    m.reset()
    assert int(m.confusion.sum()) == 0
    d = DepthMetrics()
    d.update(torch.ones(1, 1, 2, 2, requires_grad=True), torch.full((1, 1, 2, 2), 2.0))  # detached inside
    assert d.compute() == {"abs_err": 1.0, "rel_err": 0.5}
    for name in SegMetrics.names + DepthMetrics.names + NormalMetrics.names:
        assert name in HIGHER_IS_BETTER
    # better on every metric -> positive delta: mIoU up 10 %, abs err down 10 %, median angle down 10 %
    base = {"seg/miou": 50.0, "depth/abs_err": 1.0, "normal/median": 20.0, "normal/within_30": 50.0}
    model = {"seg/miou": 55.0, "depth/abs_err": 0.9, "normal/median": 18.0, "normal/within_30": 55.0}
    assert delta_mtl(model, base) == pytest.approx(10.0)


@pytest.mark.parametrize("per_batch", [False, True])
def test_merging_shards_equals_one_pass(per_batch):
    """What a process group does at evaluation: each process updates on its shard, then the states merge."""
    gen = torch.Generator().manual_seed(5)
    batches = []
    for _ in range(6):
        logits = torch.randn(2, 4, 5, 6, generator=gen)
        labels = torch.randint(-1, 4, (2, 5, 6), generator=gen)
        depth_t = torch.rand(2, 1, 5, 6, generator=gen) * (torch.rand(2, 1, 5, 6, generator=gen) > 0.2)
        normal_t = torch.nn.functional.normalize(torch.randn(2, 3, 5, 6, generator=gen), dim=1)
        batches.append((logits, labels, torch.rand(2, 1, 5, 6, generator=gen), depth_t,
                        torch.randn(2, 3, 5, 6, generator=gen), normal_t))

    def make():
        return [SegMetrics(4, per_batch=per_batch), DepthMetrics(per_batch=per_batch),
                NormalMetrics(per_batch=per_batch), ClassMetrics(), RegressMetrics()]

    def feed(metrics, subset):
        for logits, labels, depth_p, depth_t, normal_p, normal_t in subset:
            metrics[0].update(logits, labels)
            metrics[1].update(depth_p, depth_t)
            metrics[2].update(normal_p, normal_t)
            metrics[3].update(logits[:, :, 0, 0], labels[:, 0, 0].clamp_min(0))
            metrics[4].update(depth_p[:, 0, 0, 0], depth_t[:, 0, 0, 0])

    whole, left, right = make(), make(), make()
    feed(whole, batches)
    feed(left, batches[::2])
    feed(right, batches[1::2])
    for a, b, c in zip(left, right, whole):
        a.merge(b)
        got, expected = a.compute(), c.compute()
        assert got.keys() == expected.keys()
        for key in got:
            assert got[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-9), (type(a).__name__, key)
    with pytest.raises(TypeError, match="cannot merge"):
        whole[1].merge(whole[2])
