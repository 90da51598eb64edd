import pytest
import torch
from torch import nn

import mtlutils as mu
from mtlutils import weighting
from mtlutils.tasks import Task

from conftest import small_model


def test_equal_weighting_sums_losses():
    w = weighting.create("equal", ["a", "b"])
    losses = {"a": torch.tensor(1.5, requires_grad=True), "b": torch.tensor(0.25, requires_grad=True)}
    total = w.combine(losses)
    assert total.item() == pytest.approx(1.75)
    total.backward()
    assert losses["a"].grad.item() == 1.0 and losses["b"].grad.item() == 1.0
    assert w.weights() == {"a": 1.0, "b": 1.0}
    with pytest.raises(KeyError, match="expects losses for tasks"):
        w.combine({"a": torch.tensor(1.0)})


def test_unknown_weighting_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown weighting 'gradnorm'.*\['equal'"):
        weighting.create("gradnorm", ["a"])


class RecordingWeighting(weighting.Weighting):
    """A learnable weighting that also records what the loop tells it: proves the interface is enough
    for DWA (epoch-mean unweighted losses) and for uncertainty weighting (own trained parameters)."""

    def __init__(self, task_names):
        super().__init__(task_names)
        self.log_scale = nn.Parameter(torch.zeros(len(self.task_names)))
        self.seen: list[dict[str, float]] = []
        self.step_losses: list[dict[str, float]] = []

    def combine(self, losses):
        self.step_losses.append({k: float(v.detach()) for k, v in losses.items()})
        return sum(torch.exp(-s) * losses[n] + s for n, s in zip(self.task_names, self.log_scale))

    def weights(self):
        return {n: float(torch.exp(-s.detach())) for n, s in zip(self.task_names, self.log_scale)}

    def end_epoch(self, mean_losses):
        self.seen.append(dict(mean_losses))


def test_fit_feeds_epoch_mean_unweighted_losses_and_trains_weighting_parameters(digit_tasks):
    from conftest import ListLoader

    gen = torch.Generator().manual_seed(0)
    batches = [{"image": torch.rand(n, 1, 20, 28, generator=gen), "left": torch.randint(0, 10, (n,), generator=gen),
                "right": torch.randint(0, 10, (n,), generator=gen)} for n in (8, 8, 4)]
    model = small_model("split", digit_tasks)
    w = RecordingWeighting(["left", "right"])
    history = mu.fit(model, ListLoader(batches), digit_tasks, w, epochs=2, progress=False, device="cpu")
    assert len(w.seen) == 2
    # epoch-mean, weighted by batch size, of the *unweighted* per-step losses
    first = w.step_losses[:3]
    expected = sum(s["left"] * n for s, n in zip(first, (8, 8, 4))) / 20
    assert w.seen[0]["left"] == pytest.approx(expected, rel=1e-6)
    assert history.series("train/left/loss")[0] == pytest.approx(expected, rel=1e-6)
    assert not torch.equal(w.log_scale.detach(), torch.zeros(2)), "weighting parameters were not trained"
    assert history.series("weight/left")[0] == 1.0  # the weights in force at the start of epoch 1
