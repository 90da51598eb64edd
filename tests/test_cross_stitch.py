"""Cross-stitch networks (Misra et al. 2016): the unit's hand-written backward against gradcheck, the layer
against it, and the properties the paper states for the networks."""
import pytest
import torch
from torch.autograd import gradcheck

import mtlutils as mu
from mtlutils.layers import CrossStitch, CrossStitchFunction
from mtlutils.layers.cross_stitch import cross_stitch, init_alpha, mix
from mtlutils.models import count_parameters, create
from mtlutils.models.cross_stitch import CrossStitchNetwork
from mtlutils.tasks import TASKS, Task, seg_task

DENSE = [seg_task(5), TASKS["normal"]]
IMAGE = [Task("left", "class", 10), Task("right", "class", 10), Task("size", "regress", 1)]


def random_alpha(t, channels, gen, per_channel=True):
    shape = (t, t, channels) if per_channel else (t, t)
    return torch.rand(*shape, generator=gen, dtype=torch.float64, requires_grad=True)


def random_inputs(t, shape, gen):
    return [torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(t)]


# ------------------------------------------------------------------------------------------ the unit
@pytest.mark.parametrize("tasks", [2, 3, 4])
@pytest.mark.parametrize("per_channel", [True, False], ids=["channel", "layer"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 3), (2, 3, 6)], ids=["maps", "vectors", "sequences"])
def test_hand_written_backward_passes_gradcheck(tasks, per_channel, shape):
    gen = torch.Generator().manual_seed(tasks)
    alpha = random_alpha(tasks, shape[1], gen, per_channel)
    xs = random_inputs(tasks, shape, gen)
    assert gradcheck(lambda a, *x: CrossStitchFunction.apply(a, *x), (alpha, *xs), eps=1e-6, atol=1e-8)


def test_hand_written_backward_is_eq2_and_corrected_eq3_by_hand():
    """Two tasks, one channel, one pixel: the four alpha gradients written out (Eq. 3 corrected)."""
    alpha = torch.tensor([[0.9, 0.1], [0.3, 0.7]], dtype=torch.float64, requires_grad=True)
    xa = torch.tensor([[2.0]], dtype=torch.float64, requires_grad=True)
    xb = torch.tensor([[-5.0]], dtype=torch.float64, requires_grad=True)
    ya, yb = cross_stitch(alpha, [xa, xb])
    assert ya.item() == pytest.approx(0.9 * 2 - 0.1 * 5) and yb.item() == pytest.approx(0.3 * 2 - 0.7 * 5)
    (3.0 * ya + 11.0 * yb).sum().backward()  # dL/dx~_A = 3, dL/dx~_B = 11
    # Eq. 3: dL/dalpha_AB = dL/dx~_A * x_B = 3 * -5 (the paper prints dL/dx~_B * x_A = 11 * 2)
    assert alpha.grad.tolist() == [[3 * 2, 3 * -5], [11 * 2, 11 * -5]]
    # Eq. 2: dL/dx_A = alpha_AA dL/dx~_A + alpha_BA dL/dx~_B
    assert xa.grad.item() == pytest.approx(0.9 * 3 + 0.3 * 11)
    assert xb.grad.item() == pytest.approx(0.1 * 3 + 0.7 * 11)


def test_hand_written_backward_refuses_a_second_derivative():
    """The hand-written backward is not differentiable itself: asking for a second derivative must fail
    with a clear message, not return a wrong number; the autograd form gives it."""
    gen = torch.Generator().manual_seed(2)
    alpha, xs = random_alpha(2, 3, gen), random_inputs(2, (2, 3, 4), gen)
    (grad,) = torch.autograd.grad(sum((y * y).sum() for y in cross_stitch(alpha, xs)), alpha, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()
    (grad,) = torch.autograd.grad(sum((y * y).sum() for y in mix(alpha, xs)), alpha, create_graph=True)
    grad.sum().backward()  # the autograd form has a second derivative
    assert xs[0].grad is not None


@pytest.mark.parametrize("granularity", ["channel", "layer"])
@pytest.mark.parametrize("autograd", [True, False], ids=["autograd", "default"])
def test_layer_equals_the_hand_written_function_in_values_and_gradients(granularity, autograd):
    """The layer's autograd form (Eq. 1 differentiated by autograd) and its default form equal the
    hand-written backward."""
    gen = torch.Generator().manual_seed(1)
    layer = CrossStitch(3, channels=4, granularity=granularity, autograd=autograd).double()
    with torch.no_grad():
        layer.alpha.copy_(torch.rand(layer.alpha.shape, generator=gen, dtype=torch.float64))
    xs = random_inputs(3, (2, 4, 5, 5), gen)
    weights = [torch.randn(2, 4, 5, 5, generator=gen, dtype=torch.float64) for _ in range(3)]
    out = layer(xs)
    sum((w * y).sum() for w, y in zip(weights, out)).backward()
    got = [layer.alpha.grad.clone()] + [x.grad.clone() for x in xs]
    alpha = layer.alpha.detach().clone().requires_grad_()
    xs2 = [x.detach().clone().requires_grad_() for x in xs]
    ref = cross_stitch(alpha, xs2)
    sum((w * y).sum() for w, y in zip(weights, ref)).backward()
    for y, r in zip(out, ref):
        torch.testing.assert_close(y, r, rtol=0, atol=1e-12)
    for g, r in zip(got, [alpha.grad] + [x.grad for x in xs2]):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-12)


def test_identity_alpha_passes_every_input_through():
    gen = torch.Generator().manual_seed(2)
    unit = CrossStitch(3, channels=4, init=(1.0, 0.0))
    xs = [torch.randn(2, 4, 3, 3, generator=gen) for _ in range(3)]
    assert all(torch.equal(y, x) for y, x in zip(unit(xs), xs))


def test_rows_summing_to_one_keep_the_scale_of_the_activations():
    gen = torch.Generator().manual_seed(3)
    alpha = torch.rand(3, 3, 4, generator=gen, dtype=torch.float64)
    alpha = alpha / alpha.sum(1, keepdim=True)  # every row of every channel's matrix sums to one
    x = torch.rand(8, 4, 6, 6, generator=gen, dtype=torch.float64)
    for y in mix(alpha, [x, x, x]):  # the same input everywhere comes out unchanged
        torch.testing.assert_close(y, x, rtol=0, atol=1e-12)
    # independent post-ReLU-like inputs with one mean per channel: the mixture keeps that mean
    xs = [torch.rand(4000, 4, generator=gen, dtype=torch.float64) * 2 for _ in range(3)]
    for y in mix(alpha, xs):
        torch.testing.assert_close(y.mean(0), torch.ones(4, dtype=torch.float64), rtol=0, atol=0.03)
    # rows summing to two double it: the scale is the row sum
    for y in mix(2 * alpha, [x, x, x]):
        torch.testing.assert_close(y, 2 * x, rtol=0, atol=1e-12)


def test_per_channel_and_per_layer_agree_when_channels_share_a_value():
    gen = torch.Generator().manual_seed(4)
    matrix = torch.rand(2, 2, generator=gen, dtype=torch.float64)
    per_layer = matrix.clone().requires_grad_()
    per_channel = matrix.unsqueeze(-1).repeat(1, 1, 5).requires_grad_()
    xs = random_inputs(2, (3, 5, 4, 4), gen)
    weights = [torch.randn(3, 5, 4, 4, generator=gen, dtype=torch.float64) for _ in range(2)]
    out_layer, out_channel = cross_stitch(per_layer, xs), cross_stitch(per_channel, xs)
    for a, b in zip(out_layer, out_channel):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    sum((w * y).sum() for w, y in zip(weights, out_layer)).backward()
    sum((w * y).sum() for w, y in zip(weights, out_channel)).backward()
    # the per-layer gradient is the per-channel one summed over the channels
    torch.testing.assert_close(per_layer.grad, per_channel.grad.sum(-1), rtol=0, atol=1e-10)


def test_initialisation_and_bad_input():
    a = init_alpha(3, 0.9, 0.1, channels=2)
    assert a.shape == (3, 3, 2) and torch.allclose(a.sum(1), torch.ones(3, 2))
    assert a[0, 0, 0] == pytest.approx(0.9) and a[0, 1, 0] == pytest.approx(0.05)
    assert torch.allclose(init_alpha(2, 0.9, 0.1), torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    unit = CrossStitch(2, channels=4)
    with pytest.raises(ValueError, match="mixes 2 task activations, got 3"):
        unit([torch.zeros(1, 4)] * 3)
    with pytest.raises(ValueError, match=r"\(N, 4, \.\.\.\), got shape \(1, 3, 2, 2\)"):
        unit([torch.zeros(1, 3, 2, 2)] * 2)
    with pytest.raises(ValueError, match="one shape"):
        unit([torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 3, 3)])
    with pytest.raises(ValueError, match=r"unknown granularity 'pixel'; valid choices: \['channel', 'layer'\]"):
        CrossStitch(2, 4, granularity="pixel")
    with pytest.raises(ValueError, match="at least two tasks"):
        CrossStitch(1, 4)


# ---------------------------------------------------------------------------------------- backbones
@pytest.mark.parametrize("backbone,shape", [("vgg", (2, 1, 20, 28)), ("segnet", (2, 3, 32, 64))])
@pytest.mark.parametrize("every", ["stage", "conv"])
def test_stitched_run_without_mixing_equals_forward(backbone, shape, every):
    tasks = IMAGE[:2] if backbone == "vgg" else DENSE
    torch.manual_seed(0)
    trunk = create("single", tasks[:1], backbone=backbone, width=0.25).trunks[tasks[0].name].eval()
    x = torch.rand(*shape)
    run = trunk.run_stitched(x, every)
    value, channels = next(run), []
    try:
        while True:
            channels.append(value.shape[1])
            value = run.send(value)
    except StopIteration as stop:
        out = stop.value
    assert torch.equal(out, trunk(x))
    assert channels == [c for _, c in trunk.stitch_points(every)]
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in trunk.modules())
    expected = {"vgg": {"stage": 3, "conv": convs}, "segnet": {"stage": 10, "conv": convs}}[backbone][every]
    assert len(channels) == expected


# ------------------------------------------------------------------------------------------ network
def tiny(tasks=DENSE, seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("width", 0.125)
    return create("cross_stitch", tasks, **kw)


@pytest.mark.parametrize("backbone", ["vgg", "segnet"])
@pytest.mark.parametrize("granularity", ["channel", "layer"])
@pytest.mark.parametrize("stitch", ["stage", "conv"])
def test_any_number_of_tasks_backbone_and_placement(backbone, granularity, stitch):
    if backbone == "vgg":
        model, x = tiny(IMAGE, width=0.5, hidden=8, granularity=granularity, stitch=stitch), torch.rand(2, 1, 20, 28)
    else:
        tasks = [seg_task(3), TASKS["depth"], TASKS["normal"]]
        model, x = tiny(tasks, granularity=granularity, stitch=stitch), torch.rand(2, 3, 32, 32)
    out = model(x)
    assert set(out) == set(model.tasks)
    assert all(unit.alpha.shape[:2] == (3, 3) for unit in model.units)
    head_unit = backbone == "vgg" and stitch == "stage"  # the head's hidden FC layer (fc6/fc7)
    assert len(model.units) == len(model.trunks[next(iter(model.tasks))].stitch_points(stitch)) + head_unit
    sum(v.float().sum() for v in out.values()).backward()
    assert all(unit.alpha.grad is not None and unit.alpha.grad.abs().sum() > 0 for unit in model.units)


def test_sfg_baseline_half_width_vgg_per_channel_after_every_conv():
    model = create("cross_stitch", IMAGE[:2], backbone="vgg", width=0.5, stitch="conv")
    convs = [m for m in model.trunks["left"].modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(model.units) == len(convs) and all(u.granularity == "channel" for u in model.units)
    assert [u.alpha.shape[-1] for u in model.units] == [c.out_channels for c in convs]
    assert convs[0].out_channels == 8  # half of the default 16


def test_vgg_placement_is_the_papers_every_pooling_and_hidden_fully_connected_layer():
    """pool1, pool2, pool3 (this backbone's pool5) and fc (its fc6/fc7) are stitched; the output layer
    (fc8) is not. With alpha = I the network is the two single-task networks; mixing at fc changes it."""
    model = tiny(IMAGE[:2], width=0.5, hidden=8, alpha_init=(1.0, 0.0)).eval()
    assert model.point_names == ["pool1", "pool2", "pool3", "fc"]
    assert model.units[-1].alpha.shape == (2, 2, 8)
    torch.manual_seed(5)
    single = create("single", IMAGE[:2], width=0.5, hidden=8).eval()
    single.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("units.")})
    x = torch.rand(3, 1, 20, 28)
    out = model(x)
    assert all(torch.equal(out[k], single(x)[k]) for k in out)
    with torch.no_grad():
        model.units[-1].alpha.copy_(init_alpha(2, 0.5, 0.5, 8))
        features = {k: single.trunks[k](x) for k in model.tasks}
        hidden = {k: single.heads[k].hidden(features[k]) for k in model.tasks}
        mixed = single.heads["left"].output(0.5 * hidden["left"] + 0.5 * hidden["right"])
    torch.testing.assert_close(model(x)["left"], mixed)


def test_alpha_initialisation_default_and_configurable():
    model = tiny()
    for unit in model.units:
        assert torch.allclose(unit.alpha[0, 0], torch.full_like(unit.alpha[0, 0], 0.9))
        assert torch.allclose(unit.alpha[0, 1], torch.full_like(unit.alpha[0, 1], 0.1))
    model = tiny(alpha_init=(0.5, 0.5), granularity="layer")
    assert all(torch.equal(unit.alpha, torch.full((2, 2), 0.5)) for unit in model.units)
    table = tiny(alpha_init=(0.7, 0.3)).alpha_table()
    assert len(table) == 2 * 10 and set(table["task"]) == {"seg", "normal"}
    assert table["alpha_S"].tolist() == pytest.approx([0.7] * 20) and table["alpha_D"].tolist() == pytest.approx([0.3] * 20)


def test_identity_alpha_makes_the_task_networks_independent():
    """α = I: each task's output is that of a standalone single-task network with the same weights,
    and does not depend on the other task's weights."""
    model = tiny(alpha_init=(1.0, 0.0)).eval()
    torch.manual_seed(5)
    single = create("single", DENSE, width=0.125).eval()
    single.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("units.")})
    x = torch.rand(2, 3, 32, 64)
    out, ref = model(x), single(x)
    for name in out:
        assert torch.equal(out[name], ref[name])
    with torch.no_grad():
        for p in list(model.trunks["normal"].parameters()) + list(model.heads["normal"].parameters()):
            p.add_(torch.randn_like(p))
    after = model(x)
    assert torch.equal(after["seg"], out["seg"]) and not torch.equal(after["normal"], out["normal"])
    model.zero_grad()
    model(x)["seg"].sum().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.trunks["normal"].parameters())


def test_rows_summing_to_one_with_equal_networks_reproduce_the_single_network():
    """Both networks with the same weights and every α row summing to one: each task network sees the
    activations of the single network (the mixture of equal maps is the map), whatever the α."""
    model = tiny(granularity="channel").eval()
    state = model.trunks["seg"].state_dict()
    model.trunks["normal"].load_state_dict(state)
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for unit in model.units:
            a = torch.rand(unit.alpha.shape, generator=gen) + 0.1
            unit.alpha.copy_(a / a.sum(1, keepdim=True))
    x = torch.rand(2, 3, 32, 32)
    features = model.trunks["seg"](x)
    for name in model.tasks:
        torch.testing.assert_close(model(x)[name], model.heads[name](features), rtol=1e-4, atol=1e-5)


def test_load_single_copies_the_trained_single_task_networks():
    torch.manual_seed(7)
    single = create("single", DENSE, width=0.125)
    model = tiny(seed=8).load_single(single)
    for name in ("seg", "normal"):
        for part in ("trunks", "heads"):
            mine, theirs = getattr(model, part)[name].state_dict(), getattr(single, part)[name].state_dict()
            assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert all(torch.allclose(u.alpha[0, 0], torch.tensor(0.9)) for u in model.units)  # α keeps its init
    # a mapping of separately trained networks works too; a wrong width or task is a clear error
    torch.manual_seed(9)
    alone = {t.name: create("single", [t], width=0.125) for t in DENSE}
    model.load_single(alone)
    assert torch.equal(model.trunks["normal"].encoder[0][0][0].weight, alone["normal"].trunks["normal"].encoder[0][0][0].weight)
    with pytest.raises(ValueError, match="does not fit"):
        model.load_single(create("single", DENSE, width=0.25))
    with pytest.raises(ValueError, match="no single-task network for task 'normal'"):
        model.load_single({"seg": single})


def test_alpha_learning_rate_multiplier_goes_through_param_groups():
    model = tiny(alpha_lr_mult=250.0)
    groups = model.param_groups(1e-3)
    alphas = {id(u.alpha) for u in model.units}
    assert groups[0]["lr"] == 1e-3 and not any(id(p) in alphas for p in groups[0]["params"])
    assert groups[1]["lr"] == pytest.approx(0.25) and {id(p) for p in groups[1]["params"]} == alphas
    assert sum(p.numel() for g in groups for p in g["params"]) == count_parameters(model)
    assert tiny().alpha_lr_mult == 100.0  # the paper's range is 10^2-10^3


def test_fit_trains_alpha_at_its_own_learning_rate():
    tasks = [Task("left", "class", 10), Task("right", "class", 10)]
    data = mu.data.multidigits("train", n=32, seed=0)
    loader, _ = mu.data.loaders(data, batch_size=16, seed=0)
    moved = {}
    for mult in (0.0, 100.0):
        mu.seed_everything(0)
        model = create("cross_stitch", tasks, width=0.25, hidden=8, alpha_lr_mult=mult)
        start = [u.alpha.detach().clone() for u in model.units]
        mu.fit(model, loader, tasks, epochs=1, lr=1e-3, optimizer="sgd", progress=False, device="cpu")
        moved[mult] = max(float((u.alpha.detach() - s).abs().max()) for u, s in zip(model.units, start))
    assert moved[0.0] == 0.0 and moved[100.0] > 0.0


def test_options_and_errors():
    with pytest.raises(ValueError, match=r"unknown stitch placement 'fc'; valid choices: \['stage', 'conv'\]"):
        tiny(stitch="fc")
    with pytest.raises(ValueError, match="at least two tasks"):
        tiny([seg_task(3)])
    with pytest.raises(ValueError, match=r"divisible by 32"):
        tiny()(torch.rand(1, 3, 48, 64))
    with pytest.raises(TypeError):
        tiny(alpha_int=(0.9, 0.1))  # a misspelt option is not silently ignored


def test_parameters_are_those_of_the_task_networks_plus_alpha():
    single = count_parameters(create("single", DENSE, width=0.125))
    model = tiny()
    alphas = sum(u.alpha.numel() for u in model.units)
    # per channel: 2x2 per channel at every stage boundary: encoder 8+16+32+64+64, decoder 64+32+16+8+8
    assert alphas == 4 * (8 + 16 + 32 + 64 + 64 + 64 + 32 + 16 + 8 + 8)
    assert count_parameters(model) == single + alphas
