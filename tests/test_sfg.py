"""Stochastic Filter Groups (Bragman et al., ICCV 2019): the Gumbel-Softmax sampler, the filter-group
convolution (two implementations that must agree), the properties the paper states, routing through
unpooling, the objective, inference modes and batch norm under random routings."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mtlutils as mu

from conftest import StopAtEpoch
from mtlutils.layers import FilterGroupConv, gumbel_softmax
from mtlutils.layers.filter_groups import (filter_group_conv, filter_group_conv_masked, fixed_assignment,
                                           group_entropy, kernel_input_mask, log_probs, routing_matrix)
from mtlutils.models.sfg import SFGNetwork, recalibrate_batch_norm
from mtlutils.tasks import Task

DIGITS = [mu.TASKS["sum"], mu.TASKS["left"]]
THREE = [Task("a", "class", 4), Task("b", "regress", 1), Task("c", "class", 3)]
DENSE = [mu.tasks.seg_task(3), mu.TASKS["depth"]]


def sfg(tasks=DIGITS, seed=0, **kw):
    mu.seed_everything(seed)
    kw.setdefault("width", 0.5)
    return mu.models.create("sfg", tasks, **kw)


def one_hot_groups(channels, groups, gen):
    return F.one_hot(torch.randint(0, groups, (channels,), generator=gen), groups).double()


# --------------------------------------------------------------------------------------------------
# Gumbel-Softmax
def frequencies(samples):
    return samples.argmax(dim=-1).bincount(minlength=samples.shape[-1]).double() / samples.shape[0]


@pytest.mark.parametrize("sampler", ["ours", "torch"])
def test_hard_samples_follow_p_within_sampling_error(sampler):
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    n = 40_000
    logits = p.log().expand(n, 4).clone()
    torch.manual_seed(0)
    if sampler == "ours":
        y = gumbel_softmax(logits, tau=0.5, hard=True)
    else:
        y = F.gumbel_softmax(logits, tau=0.5, hard=True)
    torch.testing.assert_close(y, F.one_hot(y.argmax(1), 4).double(), rtol=0, atol=1e-12)  # one-hot
    sigma = (p * (1 - p) / n).sqrt()
    assert ((frequencies(y) - p).abs() / sigma).max() < 5  # within 5 standard errors


def test_soft_samples_approach_one_hot_as_tau_goes_to_zero():
    logits = torch.tensor([0.3, 0.2, 0.5]).log().expand(5000, 3)
    torch.manual_seed(1)
    peak = [float(gumbel_softmax(logits, tau=tau).max(dim=1).values.mean()) for tau in (10.0, 1.0, 0.1, 0.01)]
    assert peak == sorted(peak) and peak[-1] > 0.99 and peak[0] < 0.4
    # and the soft samples of both samplers have the same mean (same distribution) at tau = 1
    ours = gumbel_softmax(logits.double().repeat(8, 1), tau=1.0).mean(dim=0)
    theirs = F.gumbel_softmax(logits.double().repeat(8, 1), tau=1.0).mean(dim=0)
    assert (ours - theirs).abs().max() < 0.01


def test_straight_through_forward_is_one_hot_backward_is_the_soft_gradient():
    logits = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(6, 4, dtype=torch.float64)
    hard = gumbel_softmax(logits, tau=0.7, hard=True, generator=torch.Generator().manual_seed(3))
    (g_hard,) = torch.autograd.grad((hard * weights).sum(), logits)
    soft = gumbel_softmax(logits, tau=0.7, generator=torch.Generator().manual_seed(3))
    (g_soft,) = torch.autograd.grad((soft * weights).sum(), logits)
    assert torch.equal(hard.argmax(1), soft.argmax(1)) and torch.equal(hard.sum(1), torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(g_hard, g_soft, rtol=0, atol=1e-12)
    assert g_hard.abs().sum() > 0


def test_gumbel_softmax_gradcheck_with_fixed_noise():
    logits = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    fn = lambda v: gumbel_softmax(v, tau=0.8, generator=torch.Generator().manual_seed(7))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits,))


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan"), float("inf")])
def test_gumbel_softmax_rejects_a_bad_temperature(tau):
    with pytest.raises(ValueError, match="temperature tau must be a finite number > 0"):
        gumbel_softmax(torch.zeros(2, 3), tau=tau)


def test_gumbel_softmax_rejects_non_finite_logits_and_survives_extremes(monkeypatch):
    with pytest.raises(ValueError, match="logits must be finite"):
        gumbel_softmax(torch.tensor([0.0, float("-inf")]))
    with pytest.raises(ValueError, match="logits must be finite"):
        gumbel_softmax(torch.tensor([0.0, float("nan")]))
    with pytest.raises(TypeError, match="floating-point"):
        gumbel_softmax(torch.tensor([1, 2]))
    y = gumbel_softmax(torch.tensor([[1e4, -1e4, 0.0]]), tau=1e-3, hard=True)
    assert torch.isfinite(y).all()
    # uniforms of exactly 0 and 1 are clamped: the noise stays finite
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.tensor([[0.0, 1.0, 0.5]]))
    g = mu.layers.gumbel.sample_gumbel((1, 3))
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("dtype, big, tau", [(torch.float32, 1e37, 0.01), (torch.float16, 1e4, 0.05),
                                             (torch.float64, 1e307, 0.001)])
def test_gumbel_softmax_does_not_overflow_for_huge_logits(dtype, big, tau):
    logits = torch.tensor([[big, 0.0, -big], [0.0, big, big / 2]], dtype=dtype, requires_grad=True)
    for hard in (False, True):
        y = gumbel_softmax(logits, tau=tau, hard=hard, generator=torch.Generator().manual_seed(0))
        assert y.dtype == dtype and torch.isfinite(y).all(), y
        assert y.argmax(1).tolist() == [0, 1]
        torch.testing.assert_close(y.detach().float(), torch.tensor([[1.0, 0, 0], [0, 1, 0]]), rtol=0, atol=1e-3)
        (grad,) = torch.autograd.grad((y * torch.arange(3.0, dtype=dtype)).sum(), logits)
        assert torch.isfinite(grad).all()


def test_gumbel_softmax_ordinary_inputs_unchanged_bit_for_bit():
    """The overflow guard must not change a single bit where the plain division is finite."""
    for dtype in (torch.float32, torch.float64):
        logits = torch.randn(200, 5, dtype=dtype, generator=torch.Generator().manual_seed(1)) * 4
        for tau in (0.01, 0.5, 1.0, 7.0):
            g = mu.layers.gumbel.sample_gumbel(logits.shape, dtype=dtype, generator=torch.Generator().manual_seed(2))
            plain = F.softmax((logits + g) / tau, dim=-1)
            assert torch.equal(gumbel_softmax(logits, tau=tau, generator=torch.Generator().manual_seed(2)), plain)


# --------------------------------------------------------------------------------------------------
# the filter-group convolution
def test_routing_matrix_for_two_tasks():
    # rows: kernel group (task 1, task 2, shared); columns: input group it reads
    assert routing_matrix(2).tolist() == [[1, 0, 1], [0, 1, 1], [0, 0, 1]]
    z_out = torch.eye(3)                    # one kernel per group
    z_in = torch.eye(3)                     # one input channel per group
    assert kernel_input_mask(z_out, z_in).tolist() == [[1, 0, 1], [0, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize("num_tasks", [1, 2, 3])
@pytest.mark.parametrize("relaxed", [False, True])
def test_fast_and_masked_implementations_agree_in_values_and_gradients(num_tasks, relaxed):
    gen = torch.Generator().manual_seed(num_tasks)
    g = num_tasks + 1
    x = torch.randn(2, 7, 6, 5, dtype=torch.float64, generator=gen)
    w = torch.randn(9, 7, 3, 3, dtype=torch.float64, generator=gen)
    b = torch.randn(9, dtype=torch.float64, generator=gen)
    if relaxed:
        z_out = torch.rand(9, g, generator=gen, dtype=torch.float64).softmax(1)
        z_in = torch.rand(7, g, generator=gen, dtype=torch.float64).softmax(1)
    else:
        z_out, z_in = one_hot_groups(9, g, gen), one_hot_groups(7, g, gen)
    inputs = [t.clone().requires_grad_() for t in (x, w, b, z_out, z_in)]
    fast = filter_group_conv(*inputs, stride=1, padding=1)
    up = torch.randn(fast.shape, generator=gen, dtype=torch.float64)
    grads_fast = torch.autograd.grad((fast * up).sum(), inputs)
    masked = filter_group_conv_masked(*inputs, stride=1, padding=1)
    grads_masked = torch.autograd.grad((masked * up).sum(), inputs)
    torch.testing.assert_close(fast, masked, rtol=0, atol=1e-12)
    for name, a, c in zip(["x", "weight", "bias", "z_out", "z_in"], grads_fast, grads_masked):
        torch.testing.assert_close(a, c, rtol=0, atol=1e-10, msg=f"gradient of {name}")
    assert all(gr.abs().sum() > 0 for gr in grads_fast)


@pytest.mark.parametrize("impl", [filter_group_conv, filter_group_conv_masked])
def test_gradcheck_of_both_implementations(impl):
    gen = torch.Generator().manual_seed(0)
    args = [torch.randn(1, 3, 4, 4, dtype=torch.float64, generator=gen),
            torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=gen),
            torch.randn(4, dtype=torch.float64, generator=gen),
            torch.rand(4, 3, dtype=torch.float64, generator=gen).softmax(1),
            torch.rand(3, 3, dtype=torch.float64, generator=gen).softmax(1)]
    args = [a.requires_grad_() for a in args]
    assert torch.autograd.gradcheck(lambda *a: impl(*a, stride=2, padding=1), args)


def test_input_none_means_all_input_channels_are_shared():
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(2, 3, 5, 5, generator=gen), torch.randn(4, 3, 3, 3, generator=gen)
    z_out = F.one_hot(torch.tensor([0, 1, 2, 2]), 3).float()
    y = filter_group_conv(x, w, None, z_out)
    torch.testing.assert_close(y, F.conv2d(x, w, padding=1))  # every kernel may read the image


def test_fixed_assignment_counts():
    a = fixed_assignment(10, [1, 1, 1])
    assert a.tolist() == [0] * 4 + [1] * 3 + [2] * 3
    assert fixed_assignment(8, [0, 0, 1]).tolist() == [2] * 8
    assert fixed_assignment(7, [0.5, 0.5, 0]).bincount().tolist() == [4, 3]
    with pytest.raises(ValueError, match="non-negative"):
        fixed_assignment(4, [1, -1, 1])


@pytest.mark.parametrize("parameterization", ["softmax", "softplus"])
def test_layer_initialisations_of_p(parameterization):
    torch.manual_seed(0)
    layer = FilterGroupConv(3, 6, num_tasks=2, parameterization=parameterization)
    torch.testing.assert_close(layer.probs(), torch.full((6, 3), 1 / 3))
    torch.testing.assert_close(layer.entropy(), torch.tensor(6 * math.log(3)))
    layer.reset_groups([0.2, 0.6, 0.2])
    torch.testing.assert_close(layer.probs(), torch.tensor([[0.2, 0.6, 0.2]]).expand(6, 3))
    layer.reset_groups("dirichlet")
    p = layer.probs()
    torch.testing.assert_close(p.sum(1), torch.ones(6))
    assert p.std(0).min() > 0.01  # different kernels start differently
    for bad, message in [("beta", "unknown init"), ([0.5, 0.5], "3 positive numbers")]:
        with pytest.raises(ValueError, match=message):
            layer.reset_groups(bad)


def test_layer_options_are_checked():
    with pytest.raises(ValueError, match=r"unknown parameterization 'relu'; valid choices: \['softmax', 'softplus'\]"):
        FilterGroupConv(3, 4, 2, parameterization="relu")
    with pytest.raises(ValueError, match=r"unknown impl 'sparse'; valid choices: \['fast', 'masked'\]"):
        FilterGroupConv(3, 4, 2, impl="sparse")
    with pytest.raises(ValueError, match="fixed group indices must lie in 0..2"):
        FilterGroupConv(3, 4, 2, fixed=torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"expects input \(N, 3, H, W\)"):
        FilterGroupConv(3, 4, 2)(torch.zeros(1, 2, 5, 5))
    with pytest.raises(ValueError, match=r"z_in must have shape \(channels, T\+1\) = \(3, 3\)"):
        FilterGroupConv(3, 4, 2)(torch.zeros(1, 3, 5, 5), torch.zeros(3, 2))


def test_one_grouping_per_call_for_the_whole_batch():
    """Training draws one grouping per call, shared by all samples of the batch; eval uses argmax p."""
    torch.manual_seed(0)
    layer = FilterGroupConv(3, 16, num_tasks=2, init="dirichlet")
    x = torch.randn(4, 3, 5, 5)
    y, z = layer(x, F.one_hot(torch.tensor([0, 1, 2]), 3).float())
    for i in range(4):  # each sample alone, with the grouping the batch used
        alone, _ = layer(x[i:i + 1], F.one_hot(torch.tensor([0, 1, 2]), 3).float(), groups_out=z)
        torch.testing.assert_close(alone, y[i:i + 1])
    draws = {tuple(layer(x)[1].argmax(1).tolist()) for _ in range(5)}
    assert len(draws) > 1, "training samples a new grouping every call"
    layer.eval()
    z1, z2 = layer(x)[1], layer(x)[1]
    assert torch.equal(z1, z2) and torch.equal(z1.argmax(1), layer.probs().argmax(1))
    layer.inference = "sample"
    assert len({tuple(layer(x)[1].argmax(1).tolist()) for _ in range(5)}) > 1


# --------------------------------------------------------------------------------------------------
# the network: properties the paper states
def batch_norms(model):
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def conv_and_bn(trunk):
    return [m for m in trunk.modules() if isinstance(m, (nn.Conv2d, FilterGroupConv, nn.BatchNorm2d))]


def copy_task_network(model, single, t, kernels):
    """Copy the weights of task t's kernels (per layer index tensors) of the SFG model into the t-th
    single-task network."""
    layers, k = conv_and_bn(model.trunk), 0
    previous = None
    with torch.no_grad():
        for src, dst in zip(layers, conv_and_bn(single.trunks[list(model.tasks)[t]])):
            if isinstance(src, FilterGroupConv):
                rows = kernels[k]
                cols = slice(None) if previous is None else previous
                dst.weight.copy_(src.weight[rows][:, cols])
                dst.bias.copy_(src.bias[rows])
                previous, k = rows, k + 1
            else:
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(dst, name).copy_(getattr(src, name)[previous])
    return previous


@pytest.mark.parametrize("tasks", [DIGITS, THREE], ids=["T=2", "T=3"])
def test_all_kernels_in_task_groups_is_exactly_T_separate_networks(tasks):
    T = len(tasks)
    model = sfg(tasks, width=0.75, fixed=[1] * T + [0]).eval()   # 12/24/48/48 kernels, split evenly
    single = mu.models.create("single", tasks, width=0.75 / T).eval()
    x = torch.rand(5, 1, 20, 28)
    for t, name in enumerate(model.tasks):
        kernels = [torch.nonzero(layer.fixed_groups[:, t]).flatten() for layer in model.group_layers]
        last = copy_task_network(model, single, t, kernels)
        grid = model.trunk.out_features // model.group_layers[-1].out_channels
        columns = (last[:, None] * grid + torch.arange(grid)).flatten()  # flattened (channel, cell) order
        with torch.no_grad():
            head, own = model.heads[name].net, single.heads[name].net
            own[0].weight.copy_(head[0].weight[:, columns])
            for i, j in ((0, "bias"), (2, "weight"), (2, "bias")):
                getattr(own[i], j).copy_(getattr(head[i], j))
    for mode in ("eval", "train"):  # running statistics and batch statistics
        model.train(mode == "train"), single.train(mode == "train")
        a, b = model(x), single(x)
        for name in model.tasks:
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_dense_trunk_with_all_kernels_in_task_groups_is_two_segnets():
    model = sfg(DENSE, backbone="segnet", width=0.125, fixed=[1, 1, 0]).eval()
    single = mu.models.create("single", DENSE, backbone="segnet", width=0.0625).eval()
    x = torch.rand(2, 3, 32, 32)
    features = model.trunk(x)
    for t, name in enumerate(model.tasks):
        kernels = [torch.nonzero(layer.fixed_groups[:, t]).flatten() for layer in model.group_layers]
        last = copy_task_network(model, single, t, kernels)
        torch.testing.assert_close(features[:, last], single.trunks[name](x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backbone,tasks,shape", [("vgg", DIGITS, (3, 1, 20, 28)),
                                                   ("segnet", DENSE, (2, 3, 32, 32))])
def test_all_kernels_shared_is_exactly_the_hard_shared_network(backbone, tasks, shape):
    """Same seed, all kernels in G_s: the SFG network *is* `split` (same weights, same outputs)."""
    width = 0.5 if backbone == "vgg" else 0.125
    model = sfg(tasks, backbone=backbone, width=width, fixed=[0, 0, 1])
    mu.seed_everything(0)
    split = mu.models.create("split", tasks, backbone=backbone, width=width)
    x = torch.rand(*shape)
    for mode in (True, False):
        model.train(mode), split.train(mode)
        a, b = model(x), split(x)
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


def branchwise_forward(model, x):
    """The routing written out per group, as a hand-designed network: per layer and group i, gather the
    input channels group i reads, convolve them with group i's kernels, put the outputs in place."""
    T = model.num_tasks
    z_in = torch.full((x.shape[1],), T)  # the image is shared
    for layer in model.trunk.features:
        if not isinstance(layer, nn.Sequential):
            x = layer(x)
            continue
        conv = layer[0].conv
        z_out = conv.fixed_groups.argmax(1)
        out = x.new_zeros(x.shape[0], conv.out_channels, *x.shape[2:])
        for i in range(T + 1):
            rows = torch.nonzero(z_out == i).flatten()
            reads = (z_in == T) if i == T else (z_in == i) | (z_in == T)
            cols = torch.nonzero(reads).flatten()
            if len(rows) and len(cols):
                out[:, rows] = F.conv2d(x[:, cols], conv.weight[rows][:, cols], conv.bias[rows], padding=1)
            elif len(rows):
                out[:, rows] = conv.bias[rows][None, :, None, None].expand(x.shape[0], -1, *x.shape[2:])
        x, z_in = layer[2](layer[1](out)), z_out
    features = model.trunk.pool(x)
    result = {}
    for t, (name, head) in enumerate(model.heads.items()):
        keep = ((z_in == t) | (z_in == T)).float()[None, :, None, None]
        result[name] = head((features * keep).flatten(1))
    return result


@pytest.mark.parametrize("tasks", [DIGITS, THREE], ids=["T=2", "T=3"])
def test_any_fixed_grouping_is_the_corresponding_hand_designed_split(tasks):
    T = len(tasks)
    gen = torch.Generator().manual_seed(5)
    proportions = [torch.rand(T + 1, generator=gen).tolist() for _ in range(4)]
    proportions[0] = [0] * T + [1]          # e.g. a shared first layer ...
    proportions[-1] = [1] * T + [0]         # ... and task-specific last layer
    model = sfg(tasks, fixed=proportions)
    x = torch.rand(4, 1, 20, 28)
    for mode in (True, False):
        model.train(mode)
        expected, got = branchwise_forward(model, x), model(x)
        for name in tasks:
            torch.testing.assert_close(got[name.name], expected[name.name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backbone,tasks,shape", [("vgg", THREE, (3, 1, 20, 28)),
                                                   ("segnet", DENSE, (2, 3, 32, 32))])
def test_specialist_kernels_get_no_gradient_from_another_tasks_loss(backbone, tasks, shape):
    model = sfg(tasks, backbone=backbone, width=0.5 if backbone == "vgg" else 0.125, init="dirichlet")
    x = torch.rand(*shape)
    out = model(x)                                   # one sampled grouping (training mode)
    groups = model.last_groups
    names = list(model.tasks)
    loss = tasks[0].loss(out[names[0]], torch.zeros(out[names[0]].shape[0], *out[names[0]].shape[2:]).long()
                         if tasks[0].kind in ("class", "seg") else torch.zeros_like(out[names[0]]))
    loss.backward()
    bns = [m for m in model.trunk.modules() if isinstance(m, nn.BatchNorm2d)]
    for layer, bn, g in zip(model.group_layers, bns, groups):
        others = torch.nonzero((g != 0) & (g != model.num_tasks)).flatten()  # other tasks' specialists
        mine = torch.nonzero(g == 0).flatten()
        assert len(others) and len(mine)
        assert torch.count_nonzero(layer.weight.grad[others]) == 0
        assert torch.count_nonzero(bn.weight.grad[others]) == 0
        assert torch.count_nonzero(layer.weight.grad[mine]) > 0
    for name in names[1:]:
        assert all(p.grad is None for p in model.heads[name].parameters())
    assert model.group_logits.grad is not None and torch.count_nonzero(model.group_logits.grad) > 0


# --------------------------------------------------------------------------------------------------
# objective, schedule, inference, training
def test_entropy_regulariser_and_its_minimum_at_uniform():
    model = sfg(entropy_weight=0.01)
    kernels = sum(layer.out_channels for layer in model.group_layers)
    torch.testing.assert_close(model.entropy(), torch.tensor(kernels * math.log(3)))
    torch.testing.assert_close(model.regularization(), -0.01 * model.entropy())
    # -H is the KL to the uniform prior up to a constant: KL(p || u) = log(T+1) - H(p) >= 0
    p = torch.rand(10, 3).softmax(1)
    kl = (p * (p.log() - math.log(1 / 3))).sum(1)
    torch.testing.assert_close(kl, math.log(3) - group_entropy(p.log()))
    fixed = sfg(fixed=[1, 1, 1], entropy_weight=1.0)
    assert float(fixed.regularization()) == 0.0
    # the authors' softplus form gives the same entropy at the same p
    torch.testing.assert_close(log_probs(torch.log(torch.expm1(p)), "softplus"), p.log())


def test_parameter_groups_and_temperature_schedule():
    model = sfg(group_lr=100.0, temperature=2.0, anneal_rate=0.01, min_temperature=0.1)
    groups = model.param_groups(1e-3)
    logits = {id(p) for p in model.group_parameters()}
    assert {id(p) for p in groups[1]["params"]} == logits and groups[1]["lr"] == pytest.approx(0.1)
    assert groups[1]["weight_decay"] == 0.0 and not logits & {id(p) for p in groups[0]["params"]}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
    model.on_train_step(0)
    assert model.temperature == 2.0 and all(layer.tau == 2.0 for layer in model.group_layers)
    model.on_train_step(100)
    assert model.temperature == pytest.approx(2.0 * math.exp(-1.0))
    model.on_train_step(10_000)
    assert model.temperature == 0.1
    model.on_train_step(100)  # a function of the step only
    assert model.temperature == pytest.approx(2.0 * math.exp(-1.0))
    assert sfg(temperature=0.5).temperature_at(10**6) == 0.5


def test_stochastic_and_deterministic_inference():
    model = sfg(THREE, init="dirichlet", passes=7).eval()
    x = torch.rand(6, 1, 20, 28)
    a, b = model(x), model(x)
    assert all(torch.equal(a[k], b[k]) for k in a), "argmax inference is deterministic"
    model.inference = "sample"
    running = [bn.running_mean.clone() for bn in batch_norms(model)]
    torch.manual_seed(3)
    votes = model(x)
    assert all(torch.equal(a, bn.running_mean) for a, bn in zip(running, batch_norms(model)))  # untouched
    model.train()                                         # the authors' evaluation: training-mode batch norm
    torch.manual_seed(3)
    with torch.no_grad():
        passes = [model._forward_once(x) for _ in range(7)]  # the same 7 sampled networks
    model.eval()
    torch.testing.assert_close(votes["b"], torch.stack([p["b"] for p in passes]).mean(0))   # mean
    counts = sum(F.one_hot(p["a"].argmax(1), 4) for p in passes)
    assert torch.equal(votes["a"].argmax(1), counts.argmax(1))                               # mode
    torch.testing.assert_close(votes["a"].exp().sum(1), torch.ones(6), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=r"unknown inference 'mean'; valid choices: \['argmax', 'sample'\]"):
        model.inference = "mean"


def test_create_sfg_options_and_errors():
    model = sfg(THREE, width=0.3, impl="masked", parameterization="softplus")
    assert model.num_tasks == 3 and all(layer.impl == "masked" for layer in model.group_layers)
    assert model.group_fractions().shape == (4, 4) and model.group_names() == ["a", "b", "c", "shared"]
    torch.testing.assert_close(model.group_fractions("expected"), torch.full((4, 4), 0.25).numpy())
    with pytest.raises(ValueError, match="one entry per filter-group layer"):
        sfg(fixed=[[1, 1, 1]] * 3)
    with pytest.raises(ValueError, match="temperature > 0"):
        sfg(temperature=0.0)
    with pytest.raises(ValueError, match="unknown kind"):
        model.group_fractions("mode")
    dense = sfg(DENSE, backbone="segnet", width=0.125)
    assert len(dense.group_layers) == 26
    out = dense(torch.rand(2, 3, 32, 64))
    assert out["seg"].shape == (2, 3, 32, 64) and out["depth"].shape == (2, 1, 32, 64)


def test_fit_trains_sfg_logs_the_regulariser_and_resumes_exactly(tmp_path):
    train = mu.data.multidigits("train", n=64, seed=0, targets=("sum", "left"))
    loader, _ = mu.data.loaders(train, None, batch_size=16, seed=0)

    def run(epochs, resume=False, callbacks=()):
        model = sfg(entropy_weight=1e-3, group_lr=10.0, anneal_rate=0.05, temperature=1.0)
        history = mu.fit(model, loader, DIGITS, epochs=epochs, seed=0, progress=False, device="cpu",
                         checkpoint=tmp_path / "sfg.pt", resume=resume, weight_decay=5e-4, callbacks=callbacks)
        return model, history

    model, full = run(2)
    assert "train/model/regularization" in full.keys
    assert full.rows[-1]["train/model/regularization"] < 0
    assert model.temperature == pytest.approx(math.exp(-0.05 * 7))  # 4 steps per epoch, last step 7
    mu.train.remove_checkpoint(tmp_path / "sfg.pt")
    with pytest.raises(KeyboardInterrupt):
        run(2, callbacks=[StopAtEpoch(2)])
    resumed_model, resumed = run(2, resume=True)
    assert resumed == full
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), resumed_model.state_dict().values()))


def test_multidigits_sum_target_is_additive():
    plain = mu.data.multidigits("train", n=50, seed=3)
    both = mu.data.multidigits("train", n=50, seed=3, targets=("left", "right", "sum"))
    assert set(plain[0]) == {"image", "left", "right"}
    assert torch.equal(plain.images, both.images)
    assert torch.equal(both.targets["left"], plain.targets["left"])
    torch.testing.assert_close(both.targets["sum"] * 18, (plain.targets["left"] + plain.targets["right"]).float())
    assert both.targets["sum"].dtype == torch.float32 and 0 <= float(both.targets["sum"].min())
    assert float(both.targets["sum"].max()) <= 1
    with pytest.raises(ValueError, match=r"unknown targets \['product'\]; valid choices: \['left', 'right', 'sum'\]"):
        mu.data.multidigits("train", n=5, targets=("left", "product"))


# --------------------------------------------------------------------------------------------------
# the routing holds through the whole trunk, pooling indices included
def perturb_group(model, groups, t, gen):
    """A copy of ``model`` whose kernels in group ``t`` (per layer, ``groups``) have new random weights."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        for layer, g in zip(other.group_layers, groups):
            rows = torch.nonzero(g == t).flatten()
            layer.weight[rows] += torch.randn(layer.weight[rows].shape, generator=gen)
            layer.bias[rows] += torch.randn(len(rows), generator=gen)
    return other


def random_fixed_groupings(tasks, backbone, width, gen):
    """Random group indices per layer (non-contiguous), equal on the layers that unpooling ties."""
    template = sfg(tasks, backbone=backbone, width=width)
    groups = [torch.randint(0, len(tasks) + 1, (layer.out_channels,), generator=gen)
              for layer in template.group_layers]
    for owner, tied in getattr(template, "ties", []):  # layers tied by unpooling (SegNet)
        groups[tied] = groups[owner]
    return groups


@pytest.mark.parametrize("grouping", ["learned", "fixed"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("backbone,tasks,shape", [("vgg", THREE, (4, 1, 20, 28)),
                                                   ("segnet", DENSE, (2, 3, 32, 32))])
def test_perturbing_one_tasks_kernels_leaves_every_other_task_unchanged(backbone, tasks, shape, mode, grouping):
    """Random, non-contiguous groupings (fixed ones; or learned: argmax of a Dirichlet start in eval, a
    sample in training): the other tasks' outputs do not move when task t's kernels change, however the
    values travel (max unpooling places a decoder channel with the indices of the encoder channel at the
    same position)."""
    width = 0.5 if backbone == "vgg" else 0.125
    if grouping == "fixed":
        fixed = random_fixed_groupings(tasks, backbone, width, torch.Generator().manual_seed(4))
        model = sfg(tasks, backbone=backbone, width=width, fixed=fixed)
    else:
        model = sfg(tasks, backbone=backbone, width=width, init="dirichlet")
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():                  # running statistics of the scale of the activations (eval mode)
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.momentum = 1.0
        model(x)
    model.train(mode == "train")
    gen = torch.Generator().manual_seed(2)

    def outputs(net):
        torch.manual_seed(3)                                   # the same sampled grouping for every copy
        with torch.no_grad():
            return net(x), net.last_groups

    reference, groups = outputs(model)
    names = list(model.tasks)
    assert sum(not torch.equal(g, g.sort().values) for g in groups) > len(groups) // 2  # not in blocks
    for t, name in enumerate(names):
        changed, same_groups = outputs(perturb_group(model, groups, t, gen))
        assert all(torch.equal(a, b) for a, b in zip(groups, same_groups))
        assert not torch.allclose(changed[name], reference[name]), "task t's own output must move"
        for other in names:
            if other != name:
                leak = float((changed[other] - reference[other]).abs().max())
                assert leak == 0.0, f"perturbing {name}'s kernels moved {other}'s output by {leak:.3g}"


def test_unpooling_ties_the_groupings_of_encoder_and_decoder_layers():
    model = sfg(DENSE, backbone="segnet", width=0.125, init="dirichlet")
    assert model.ties == [(9, 15), (6, 18), (3, 21), (1, 23)]  # enc4-1 last conv -> dec5-2 last conv
    model.train()
    model(torch.rand(2, 3, 32, 32))
    for a, b in model.ties:                                     # one sample for both, in training too
        assert torch.equal(model.last_groups[a], model.last_groups[b])
        assert torch.equal(model.group_layers[a].probs(), model.group_layers[b].probs())
    kernels = sum(layer.out_channels for layer in model.group_layers)
    tied = sum(model.group_layers[b].out_channels for _, b in model.ties)
    assert model.group_logits.shape[0] == kernels - tied       # one categorical per tied pair
    assert sfg(DIGITS).ties == []
    untied = random_fixed_groupings(DENSE, "segnet", 0.125, torch.Generator().manual_seed(0))
    untied[15] = (untied[15] + 1) % 3
    with pytest.raises(ValueError, match="layers 9 and 15 must have the same grouping"):
        sfg(DENSE, backbone="segnet", width=0.125, fixed=untied)


# --------------------------------------------------------------------------------------------------
# batch norm under random routings
def digit_loader(n=64):
    """Training batches in a fixed order (no shuffling), so that two passes see the same batches."""
    train = mu.data.multidigits("train", n=n, seed=0, targets=("sum", "left"))
    return torch.utils.data.DataLoader(train, batch_size=16, shuffle=False)


def argmax_network_statistics(model, loader):
    """The reference: PyTorch's own cumulative average (momentum=None) of the batch statistics of the
    network that evaluation runs (argmax p), over one pass of ``loader``."""
    ref = copy.deepcopy(model).eval()
    for bn in batch_norms(ref):
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    with torch.no_grad():
        for batch in loader:
            ref(batch["image"])
    return batch_norms(ref)


@pytest.mark.parametrize("validate", [False, True], ids=["chapter", "runner"])
def test_fit_leaves_sfg_with_the_batch_norm_statistics_of_the_evaluated_network(validate):
    """Training samples a new grouping every step; evaluation runs argmax p. After fit, the running
    statistics must be those of the argmax network (one pass over the training data), not an average
    over the sampled networks of training; with validation data (the experiment runner, whose result is
    the last epoch's validation metrics) the validation sees them too."""
    loader = digit_loader()
    val = digit_loader(32) if validate else None
    model = sfg(init="dirichlet", group_lr=10.0)
    history = mu.fit(model, loader, DIGITS, epochs=2, seed=0, progress=False, device="cpu", val_data=val)
    for bn, ref in zip(batch_norms(model), argmax_network_statistics(model, loader)):
        torch.testing.assert_close(bn.running_mean, ref.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, ref.running_var, rtol=1e-5, atol=1e-6)
    if validate:
        scores = mu.evaluate(model, val, DIGITS, "cpu")
        assert history.rows[-1]["val/left/accuracy"] == scores["left/accuracy"]
        assert history.rows[-1]["val/sum/mae"] == pytest.approx(scores["sum/mae"], rel=1e-6)


def test_recalibrate_batch_norm_restores_modes_and_a_fixed_grouping_needs_none():
    loader = digit_loader(32)
    model = sfg(init="dirichlet").train()
    momenta = [bn.momentum for bn in batch_norms(model)]
    assert recalibrate_batch_norm(model, loader) == 2
    assert model.training and all(bn.training for bn in batch_norms(model))
    assert [bn.momentum for bn in batch_norms(model)] == momenta
    fixed = sfg(fixed=[1, 1, 1])
    before = copy.deepcopy(fixed.state_dict())
    fixed.calibrate(loader)                  # trained as evaluated: nothing to re-estimate
    assert all(torch.equal(before[k], v) for k, v in fixed.state_dict().items())
    with pytest.raises(ValueError, match="no data"):
        recalibrate_batch_norm(model, [])
