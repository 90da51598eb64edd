import math

import pytest
import torch
from torch import nn

import mtlutils as mu
from mtlutils import weighting
from mtlutils.tasks import Task

from conftest import StopAtEpoch, params_equal, small_model


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
    with pytest.raises(ValueError, match=r"unknown weighting 'gradnrom'; valid choices: \['cagrad', 'dwa', "
                                         r"'equal', 'gradnorm', 'mgda', 'pcgrad', 'rlw', 'uncertainty'\]"):
        weighting.create("gradnrom", ["a"])


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


# ---------------------------------------------------------------------------------------------------
# uncertainty weighting
def test_uncertainty_reference_form_by_hand_and_its_gradient():
    w = weighting.create("uncertainty", ["seg", "depth"])
    assert w.form == "reference" and torch.equal(w.log_var.detach(), torch.tensor([-0.5, -0.5]))
    losses = {"seg": torch.tensor(2.0, requires_grad=True), "depth": torch.tensor(0.3, requires_grad=True)}
    total = w.combine(losses)
    s = -0.5
    expected = 2.0 / (2 * math.exp(s)) + 0.3 / (2 * math.exp(s)) + 2 * s / 2
    assert total.item() == pytest.approx(expected, rel=1e-6)
    total.backward()
    # dL/ds_t = -L_t / (2 e^{s_t}) + 1/2, dL/dL_t = 1 / (2 e^{s_t})
    assert w.log_var.grad.tolist() == pytest.approx([-2.0 / (2 * math.exp(s)) + 0.5, -0.3 / (2 * math.exp(s)) + 0.5])
    assert losses["seg"].grad.item() == pytest.approx(1 / (2 * math.exp(s)))
    assert w.weights() == pytest.approx({"seg": 1 / (2 * math.exp(s)), "depth": 1 / (2 * math.exp(s))})


def test_uncertainty_kendall_form_weights_by_kind():
    tasks = [Task("seg", "seg", 7), Task("depth", "depth", 1), Task("normal", "normal", 3)]
    w = weighting.create("uncertainty", tasks, form="kendall")
    assert w.kinds == {"seg": "seg", "depth": "depth", "normal": "normal"}
    with torch.no_grad():
        w.log_var.copy_(torch.tensor([0.2, -0.4, 1.0]))
    losses = {"seg": torch.tensor(1.5), "depth": torch.tensor(0.5), "normal": torch.tensor(0.8)}
    var = [math.exp(0.2), math.exp(-0.4), math.exp(1.0)]  # sigma^2
    expected = (1.5 / var[0] + 0.5 / (2 * var[1]) + 0.8 / (2 * var[2])
                + sum(math.log(math.sqrt(v)) for v in var))  # + log sigma
    assert w.combine(losses).item() == pytest.approx(expected, rel=1e-6)
    assert w.weights() == pytest.approx({"seg": 1 / var[0], "depth": 1 / (2 * var[1]), "normal": 1 / (2 * var[2])})
    assert weighting.create("uncertainty", tasks, form="kendall").log_var.tolist() == [0.0, 0.0, 0.0]
    # a dict of tasks and names with explicit kinds work too
    assert weighting.create("uncertainty", {t.name: t for t in tasks}, form="kendall").kinds == w.kinds
    named = weighting.create("uncertainty", ["a", "b"], form="kendall", kinds={"a": "class", "b": "regress"})
    assert named.weights() == {"a": 1.0, "b": 0.5}


def test_uncertainty_errors_say_what_is_expected():
    with pytest.raises(ValueError, match=r"needs the kind of \['a'\]"):
        weighting.create("uncertainty", ["a"], form="kendall")
    with pytest.raises(ValueError, match=r"unknown uncertainty form 'kendal'.*'reference', 'kendall'"):
        weighting.create("uncertainty", ["a"], form="kendal")
    with pytest.raises(KeyError, match="expects losses for tasks"):
        weighting.create("uncertainty", ["a", "b"]).combine({"a": torch.tensor(1.0)})


@pytest.mark.parametrize("form", ["reference", "kendall"])
def test_uncertainty_fixed_point_is_half_the_inverse_loss_in_both_forms(form):
    """At the optimum over s_t (losses held fixed) both forms weight task t by 1 / (2 L_t)."""
    tasks = [Task("seg", "seg", 7), Task("depth", "depth", 1)]
    w = weighting.create("uncertainty", tasks, form=form)
    losses = {"seg": torch.tensor(1.7), "depth": torch.tensor(0.05)}
    opt = torch.optim.Adam(w.parameters(), lr=0.05)
    for _ in range(1500):
        opt.zero_grad()
        w.combine(losses).backward()
        opt.step()
    assert w.weights() == pytest.approx({"seg": 1 / (2 * 1.7), "depth": 1 / (2 * 0.05)}, rel=1e-3)


def test_fit_trains_the_log_variances(digit_tasks, tiny_loaders):
    train, _ = tiny_loaders
    w = weighting.create("uncertainty", digit_tasks)
    history = mu.fit(small_model("split", digit_tasks), train, digit_tasks, w, epochs=2, progress=False,
                     device="cpu")
    assert not torch.allclose(w.log_var.detach(), torch.full((2,), -0.5))
    assert history.series("weight/left")[0] == pytest.approx(1 / (2 * math.exp(-0.5)))
    assert history.series("weight/left")[1] != history.series("weight/left")[0]


# ---------------------------------------------------------------------------------------------------
# Dynamic Weight Average
def test_dwa_worked_example_by_hand():
    history = [[1.0, 2.0], [0.5, 1.8]]  # task a halves its loss, task b falls by 10%
    w_a, w_b = 0.5 / 1.0, 1.8 / 2.0
    e_a, e_b = math.exp(w_a / 2), math.exp(w_b / 2)
    expected = [2 * e_a / (e_a + e_b), 2 * e_b / (e_a + e_b)]
    assert weighting.dwa_weights(history, temperature=2.0).tolist() == pytest.approx(expected)
    assert expected[1] > 1 > expected[0]  # the slower task gets more weight


def test_dwa_is_one_for_the_first_two_epochs_and_uses_the_last_two():
    assert weighting.dwa_weights(torch.zeros(0, 3)).tolist() == [1.0, 1.0, 1.0]
    assert weighting.dwa_weights([[5.0, 1.0, 2.0]]).tolist() == [1.0, 1.0, 1.0]
    long = [[9.0, 9.0], [1.0, 2.0], [0.5, 1.8]]
    assert torch.equal(weighting.dwa_weights(long), weighting.dwa_weights(long[1:]))


@pytest.mark.parametrize("seed", range(5))
def test_dwa_properties(seed):
    gen = torch.Generator().manual_seed(seed)
    k = 2 + seed
    history = torch.rand(2, k, generator=gen, dtype=torch.float64) + 0.1
    ratios = history[1] / history[0]
    for t in (0.05, 0.5, 2.0, 10.0):
        lam = weighting.dwa_weights(history, t)
        assert lam.sum().item() == pytest.approx(k)  # Σλ = K always
        assert (lam > 0).all()
        assert lam.argmax() == ratios.argmax()  # the slowest-falling task gets the most weight
    # equal ratios -> all ones, whatever T
    equal = torch.stack([history[0], 0.7 * history[0]])
    assert weighting.dwa_weights(equal, 0.1).tolist() == pytest.approx([1.0] * k)
    # T -> infinity: uniform; T -> 0: all weight (K) on the slowest-falling task
    assert weighting.dwa_weights(history, 1e9).tolist() == pytest.approx([1.0] * k)
    cold = weighting.dwa_weights(history, 1e-6)
    assert cold[ratios.argmax()].item() == pytest.approx(k) and cold.sum().item() == pytest.approx(k)


def test_dwa_bad_input():
    with pytest.raises(ValueError, match="temperature must be positive"):
        weighting.create("dwa", ["a"], temperature=0.0)
    with pytest.raises(ValueError, match=r"history must be \(epochs, tasks\)"):
        weighting.dwa_weights(torch.ones(3))
    with pytest.raises(KeyError, match="expects losses for tasks"):
        weighting.create("dwa", ["a", "b"]).end_epoch({"a": 1.0})


def test_dwa_weights_are_constant_within_an_epoch_and_follow_end_epoch():
    w = weighting.create("dwa", ["a", "b"])
    losses = {"a": torch.tensor(3.0, requires_grad=True), "b": torch.tensor(1.0, requires_grad=True)}
    w.combine(losses).backward()
    assert losses["a"].grad.item() == 1.0 and w.weights() == {"a": 1.0, "b": 1.0}
    w.end_epoch({"a": 1.0, "b": 2.0})
    assert w.weights() == {"a": 1.0, "b": 1.0}  # t = 2: still 1
    w.end_epoch({"a": 0.5, "b": 1.8})
    expected = weighting.dwa_weights([[1.0, 2.0], [0.5, 1.8]]).tolist()
    assert list(w.weights().values()) == pytest.approx(expected)
    losses = {"a": torch.tensor(3.0, requires_grad=True), "b": torch.tensor(1.0, requires_grad=True)}
    total = w.combine(losses)
    total.backward()
    assert total.item() == pytest.approx(3.0 * expected[0] + expected[1])
    assert [losses["a"].grad.item(), losses["b"].grad.item()] == pytest.approx(expected)


def test_dwa_in_fit_uses_the_epoch_mean_unweighted_losses(digit_tasks, tiny_loaders):
    train, _ = tiny_loaders
    w = weighting.create("dwa", digit_tasks, temperature=2.0)
    history = mu.fit(small_model("split", digit_tasks), train, digit_tasks, w, epochs=4, progress=False,
                     device="cpu")
    losses = [[history.series(f"train/{t.name}/loss")[e] for t in digit_tasks] for e in range(4)]
    assert w.loss_history == losses
    for epoch in range(4):  # the weights in force during epoch e + 1
        expected = weighting.dwa_weights(torch.tensor(losses[:epoch]).reshape(-1, 2)).tolist()
        assert [history.series(f"weight/{t.name}")[epoch] for t in digit_tasks] == pytest.approx(expected)
    assert history.series("weight/left")[2] != 1.0


def test_dwa_state_is_saved_and_a_resumed_run_equals_an_uninterrupted_one(digit_tasks, tiny_digits, tmp_path):
    def run(epochs, **kw):
        train, _ = mu.data.loaders(*tiny_digits, batch_size=32, seed=0)
        model = small_model("split", digit_tasks)
        w = weighting.create("dwa", digit_tasks)
        history = mu.fit(model, train, digit_tasks, w, epochs=epochs, progress=False, device="cpu", seed=3, **kw)
        return model, w, history

    full_model, full_w, full = run(5)
    ckpt = tmp_path / "dwa.pt"
    with pytest.raises(KeyboardInterrupt):
        run(5, checkpoint=ckpt, callbacks=[StopAtEpoch(4)])
    state = mu.train.load_checkpoint(ckpt)
    assert len(state["weighting"]["_extra_state"]["loss_history"]) == 3
    model, w, resumed = run(5, checkpoint=ckpt, resume=True)
    assert resumed == full and w.loss_history == full_w.loss_history
    assert params_equal(model, full_model)
    assert resumed.series("weight/left")[3] != 1.0  # epochs 4-5 used DWA weights from the restored history
    fresh = weighting.create("dwa", digit_tasks, temperature=3.0)
    with pytest.raises(ValueError, match="temperature is 2.0"):
        fresh.load_state_dict(state["weighting"])
