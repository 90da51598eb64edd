"""The constant predictor: hand-computed constants and scores."""
import math

import pytest
import torch

from mtlutils.baselines import constant_prediction, constant_predictor_scores
from mtlutils.tasks import TASKS, Task, seg_task


def test_constants_by_hand():
    seg = torch.tensor([[[0, 2, 2], [-1, -1, -1]]])          # void is not a vote: 2 wins
    assert int(constant_prediction(seg_task(3), seg)) == 2
    depth = torch.tensor([0.0, 1.0, 2.0, 10.0, 0.0]).view(1, 1, 1, 5)   # zeros are invalid
    assert float(constant_prediction(TASKS["depth"], depth)) == 2.0     # lower median of 1, 2, 10
    normal = torch.zeros(1, 3, 1, 3)
    normal[0, :, 0, 0] = torch.tensor([1.0, 0, 0])
    normal[0, :, 0, 1] = torch.tensor([0, 1.0, 0])               # pixel 2 invalid (all zero)
    assert torch.allclose(constant_prediction(TASKS["normal"], normal),
                          torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64) / math.sqrt(2))


def test_scores_by_hand():
    tasks = [seg_task(3), TASKS["depth"], Task("digit", "class", 4), Task("size", "regress", 1)]
    train = {"seg": torch.tensor([[[1, 1, 0]]]), "depth": torch.tensor([2.0, 4.0, 0.0]).view(1, 1, 1, 3),
             "digit": torch.tensor([3, 3, 1]), "size": torch.tensor([1.0, 5.0, 2.0])}
    val = {"seg": torch.tensor([[[1, 0, -1]]]), "depth": torch.tensor([1.0, 0.0, 3.0]).view(1, 1, 1, 3),
           "digit": torch.tensor([3, 0]), "size": torch.tensor([2.0, 4.0])}
    s = constant_predictor_scores(tasks, train, val)
    # seg: predict 1 everywhere; valid val pixels 1 (right), 0 (wrong); IoU class 1 = 1/2, class 0 = 0/1
    assert s["seg/pixacc"] == pytest.approx(50.0) and s["seg/miou"] == pytest.approx(25.0)
    # depth: lower median of {2, 4} is 2; valid val pixels 1 and 3 -> |1| and |1|
    assert s["depth/abs_err"] == pytest.approx(1.0)
    assert s["depth/rel_err"] == pytest.approx((1 / 1 + 1 / 3) / 2)
    assert s["digit/accuracy"] == pytest.approx(50.0)
    assert s["size/mae"] == pytest.approx(1.0)                  # median 2: errors 0 and 2


def test_missing_targets_say_which():
    with pytest.raises(KeyError, match="depth"):
        constant_predictor_scores([TASKS["depth"]], {}, {})
