"""The gradient-level weighting protocol and the balancing methods of chapter 7, against their papers'
properties: MGDA's min-norm point (brute force on the simplex), its two-task closed form; PCGrad's
projections; CAGrad's constraint and its c = 0 case; GradNorm's target without gradient and Σw = T; RLW on
the simplex. And the protocol: task-specific parameters get their own gradients, a gradient-level
weighting trains through fit, and every loss-level weighting is unchanged."""
from __future__ import annotations

import copy
import itertools

import pytest
import torch

import mtlutils as mu
from mtlutils import weighting as W
from mtlutils.weighting import solvers as S

from conftest import StopAtEpoch, params_equal, small_model


def _simplex(t: int, n: int):
    for point in itertools.product(range(n + 1), repeat=t - 1):
        if sum(point) <= n:
            yield torch.tensor([*point, n - sum(point)], dtype=torch.float64) / n


@pytest.mark.parametrize("t", [2, 3, 4])
def test_mgda_finds_the_min_norm_point(t):
    torch.manual_seed(t)
    for _ in range(5):
        g = torch.randn(t, 7, dtype=torch.float64)
        brute = min(float((a @ g).norm() ** 2) for a in _simplex(t, 60 if t < 4 else 24))
        exact = S.min_norm(g, method="exact") if t > 2 else S.min_norm(g)
        fw = S.min_norm(g)
        assert abs(float(exact.sum()) - 1) < 1e-12 and bool((exact >= 0).all())
        assert float((exact @ g).norm() ** 2) <= brute + 1e-12
        assert float((fw @ g).norm() ** 2) <= float((exact @ g).norm() ** 2) * 1.01 + 1e-12


def test_mgda_two_task_closed_form():
    g1, g2 = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64)
    a = S.min_norm_two(g1, g2)     # ((g2 - g1)·g2 / |g1 - g2|^2) = 4 / 5
    assert torch.allclose(a, torch.tensor([0.8, 0.2], dtype=torch.float64))
    assert torch.allclose(S.min_norm_two(g1, 3 * g1), torch.tensor([1.0, 0.0], dtype=torch.float64))  # clipped
    same = torch.tensor([1.0, 1.0], dtype=torch.float64)
    assert float(S.min_norm_two(same, same).sum()) == 1.0


def test_pcgrad_projects_only_conflicts():
    aligned = torch.tensor([[1.0, 1.0], [1.0, 0.5]])
    assert torch.equal(S.pcgrad(aligned), aligned)
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    out = S.pcgrad(g)
    assert float(out[0] @ g[1]) >= -1e-6 and float(out[1] @ g[0]) >= -1e-6
    assert torch.allclose(out[0], torch.tensor([0.5, 0.5])) and torch.allclose(out[1], torch.tensor([0.0, 1.0]))
    torch.manual_seed(0)
    many = torch.randn(4, 10)
    projected = S.pcgrad(many, order=[[j for j in range(4) if j != i] for i in range(4)])
    for i in range(4):   # the last projection of each task leaves it non-conflicting with that task
        last = [j for j in range(4) if j != i][-1]
        assert float(projected[i] @ many[last]) >= -1e-5


@pytest.mark.parametrize("t", [2, 3])
def test_cagrad_constraint_optimality_and_its_zero_case(t):
    torch.manual_seed(10 + t)
    g = torch.randn(t, 6, dtype=torch.float64)
    g0 = g.mean(0)
    assert torch.allclose(S.cagrad(g, c=0.0)[0], g0)
    c = 0.5
    d, w = S.cagrad(g, c=c, rescale=0)
    assert float((d - g0).norm()) <= c * float(g0.norm()) + 1e-9
    m, b, sqrt_phi = g @ g.T, g @ g0, c * g0.norm()

    def dual(v):
        return float(b @ v + sqrt_phi * (v @ m @ v).sqrt())

    assert dual(w) <= min(dual(v) for v in _simplex(t, 80)) + 1e-9
    worst = float((g @ d).min())   # the worst task's improvement beats the mean's within the ball
    assert worst >= float((g @ g0).min()) - 1e-9
    assert torch.allclose(S.cagrad(g, c=c, rescale=1)[0], d / (1 + c ** 2))


def test_gradnorm_target_gets_no_gradient_and_weights_sum_to_t():
    gn = W.create("gradnorm", ["a", "b", "c"], alpha=1.5)
    gn.initial_losses.copy_(torch.tensor([2.0, 1.0, 4.0]))
    losses = torch.tensor([1.0, 0.9, 1.0])
    norms = torch.tensor([3.0, 1.0, 2.0])
    loss = gn.gradnorm_loss(norms, losses)
    (grad,) = torch.autograd.grad(loss, gn.w)
    # with the target held constant: d/dw_t |w_t n_t - target_t| = sign(...) n_t only
    g = gn.w.detach() * norms
    r = (losses / gn.initial_losses) / (losses / gn.initial_losses).mean()
    target = g.mean() * r ** 1.5
    assert torch.allclose(grad, torch.sign(g - target) * norms)
    gn.w.data = torch.tensor([2.0, 0.5, 1.0])
    gn._renormalise()
    assert float(gn.w.detach().sum()) == pytest.approx(3.0)


def test_rlw_weights_lie_on_the_simplex():
    rlw = W.create("rlw", ["a", "b", "c"])
    torch.manual_seed(0)
    draws = torch.stack([rlw.draw() for _ in range(200)])
    assert torch.allclose(draws.sum(1), torch.ones(200)) and bool((draws > 0).all())
    assert draws.std(0).min() > 0.05          # a fresh draw every step


# ---------------------------------------------------------------------------------------------- protocol
@pytest.mark.parametrize("name", ["pcgrad", "cagrad", "mgda"])
def test_task_specific_parameters_get_their_own_gradients(digit_tasks, tiny_loaders, name):
    model = small_model("split", digit_tasks)
    batch = next(iter(tiny_loaders[0]))
    weighting = W.create(name, digit_tasks)
    preds = model(batch["image"])
    losses = {t.name: t.loss(preds[t.name], batch[t.name]) for t in digit_tasks}
    weighting.backward(losses, model)
    reference = copy.deepcopy(model)
    preds = reference(batch["image"])
    for t in digit_tasks:   # each head's gradient is its own task's plain gradient
        head = dict(reference.heads[t.name].named_parameters())
        grads = torch.autograd.grad(t.loss(preds[t.name], batch[t.name]), list(head.values()), retain_graph=True)
        for (key, _), g in zip(head.items(), grads):
            assert torch.allclose(dict(model.heads[t.name].named_parameters())[key].grad, g, atol=1e-6)
    assert all(p.grad is not None for p in model.trunk.parameters())


def test_pcgrad_without_conflict_is_equal_weighting(digit_tasks, tiny_loaders):
    model = small_model("split", digit_tasks)
    batch = next(iter(tiny_loaders[0]))

    class NoConflict(W.PCGrad):
        def combine_gradients(self, grads):
            return grads.sum(0), torch.ones(len(grads))

    twin = copy.deepcopy(model)
    preds = model(batch["image"])
    NoConflict(["left", "right"]).backward({t.name: t.loss(preds[t.name], batch[t.name]) for t in digit_tasks},
                                           model)
    preds = twin(batch["image"])
    sum(t.loss(preds[t.name], batch[t.name]) for t in digit_tasks).backward()
    for p, q in zip(model.parameters(), twin.parameters()):   # the same sums in another order
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["mgda", "pcgrad", "cagrad", "gradnorm", "rlw"])
def test_every_new_weighting_trains_through_fit_and_resumes_exactly(digit_tasks, tiny_loaders, tmp_path, name):
    train, test = tiny_loaders

    def run(**kw):
        model = small_model("split", digit_tasks)
        weighting = W.create(name, digit_tasks)
        history = mu.fit(model, train, digit_tasks, weighting, epochs=3, val_data=test, progress=False,
                         device="cpu", seed=2, **kw)
        return model, history

    model, history = run()
    assert history.curve("train", "left")[-1] < history.curve("train", "left")[0]
    weights = [history.curve("weight", n) for n in ("left", "right")]
    assert all(w > 0 for series in weights for w in series)
    ckpt = tmp_path / "c.pt"
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint=ckpt, callbacks=[StopAtEpoch(3)])
    resumed_model, resumed = run(checkpoint=ckpt, resume=True)
    assert resumed == history and params_equal(resumed_model, model)


def test_gradient_weightings_refuse_models_without_shared_parts(digit_tasks, tiny_loaders):
    train, _ = tiny_loaders
    with pytest.raises(ValueError, match="names no shared parameters"):
        mu.fit(small_model("single", digit_tasks), train, digit_tasks, W.create("pcgrad", digit_tasks), epochs=1,
               progress=False, device="cpu")
    with pytest.raises(ValueError, match="no shared representation"):
        mu.fit(small_model("mtan", digit_tasks), train, digit_tasks, W.create("mgda", digit_tasks), epochs=1,
               progress=False, device="cpu")


def test_a_model_with_a_stored_representation_still_deep_copies(digit_tasks, tiny_loaders):
    model = small_model("split", digit_tasks)
    model(next(iter(tiny_loaders[0]))["image"])
    assert model.shared_representation() is not None
    twin = copy.deepcopy(model)
    assert twin.shared_representation() is None and params_equal(model, twin)
