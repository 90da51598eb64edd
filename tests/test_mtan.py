"""MTAN: the attention module, the wiring of the authors' code (book/authors_code.md), STAN, and the fast
path against the per-task loop."""
import copy

import pytest
import torch
from torch import nn

from mtlutils.layers import AttentionModule
from mtlutils.layers.attention import pointwise_conv, shared_unit_per_task, stacked_masks
from mtlutils.models import count_parameters, create
from mtlutils.models.mtan import MTAN
from mtlutils.models.params import PAPER_P, parameter_table
from mtlutils.models.vgg import conv_unit
from mtlutils.tasks import TASKS, Task, seg_task

DENSE = [seg_task(5), TASKS["depth"], TASKS["normal"]]
DIGITS = [TASKS["left"], TASKS["right"]]


def tiny_mtan(tasks=DENSE, seed=0, **kw):
    torch.manual_seed(seed)
    return create("mtan", tasks, **kw)


def randomise_batch_norms(model: nn.Module, seed: int = 1) -> None:
    """Non-trivial affine parameters and running statistics, so that equalities are not vacuous."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))


# ---------------------------------------------------------------------------------------------------
# the attention module
def test_attention_module_is_the_equation():
    torch.manual_seed(0)
    module = AttentionModule(6, 4).double()
    u, prev, p = torch.randn(2, 4, 5, 5).double(), torch.randn(2, 2, 5, 5).double(), torch.randn(2, 4, 5, 5).double()
    mask = module.mask(u, prev)
    x = torch.cat([u, prev], 1)
    assert torch.equal(mask, module.h(module.g(x)))
    assert mask.shape == p.shape and ((mask > 0) & (mask < 1)).all()
    assert torch.equal(module(u, p, prev), mask * p)
    conv_g, conv_h = module.g[0], module.h[0]
    assert (conv_g.in_channels, conv_g.out_channels, conv_g.kernel_size) == (6, 4, (1, 1))
    assert (conv_h.in_channels, conv_h.out_channels, conv_h.kernel_size) == (4, 4, (1, 1))
    assert isinstance(module.g[2], nn.ReLU) and isinstance(module.h[2], nn.Sigmoid)


def test_an_all_ones_mask_returns_the_shared_feature():
    module = AttentionModule(3, 3).eval()
    with torch.no_grad():
        module.h[1].bias.fill_(60.0)  # sigmoid(60) == 1 in float32
    p = torch.randn(2, 3, 4, 4)
    assert torch.equal(module(torch.randn(2, 3, 4, 4), p), p)


def test_attention_module_says_what_it_expects():
    module = AttentionModule(8, 4)
    with pytest.raises(ValueError, match=r"\[u; prev\] with 8 channels"):
        module.mask(torch.rand(1, 4, 3, 3))
    with pytest.raises(ValueError, match="p must have 4 channels"):
        module(torch.rand(1, 4, 3, 3), torch.rand(1, 5, 3, 3), torch.rand(1, 4, 3, 3))


# ---------------------------------------------------------------------------------------------------
# the fast path's building blocks equal their per-task loops (values, gradients, running statistics)
def _grads(tensors):
    return [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("with_prev", [False, True])
def test_stacked_masks_equal_the_per_task_modules(with_prev):
    torch.manual_seed(0)
    T, cu, cp, c = 3, 4, 5, 6
    fast = [AttentionModule(cu + (cp if with_prev else 0), c).double() for _ in range(T)]
    for m in fast:
        randomise_batch_norms(m, seed=len(fast))
    loop = copy.deepcopy(fast)
    u = torch.randn(4, cu, 3, 5, dtype=torch.float64, requires_grad=True)
    prev = torch.randn(4, T, cp, 3, 5, dtype=torch.float64, requires_grad=True) if with_prev else None
    u2 = u.detach().clone().requires_grad_()
    prev2 = prev.detach().clone().requires_grad_() if with_prev else None
    weights = torch.randn(4, T, c, 3, 5, dtype=torch.float64)
    got = stacked_masks(fast, u, prev)
    want = torch.stack([m.mask(u2, None if prev2 is None else prev2[:, t]) for t, m in enumerate(loop)], 1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    torch.testing.assert_close(u.grad, u2.grad, rtol=0, atol=1e-10)
    if with_prev:
        torch.testing.assert_close(prev.grad, prev2.grad, rtol=0, atol=1e-10)
    for a, b in zip(fast, loop):
        for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(pa.grad, pb.grad, rtol=0, atol=1e-10, msg=name)
        for (name, ba), bb in zip(a.named_buffers(), b.buffers()):
            torch.testing.assert_close(ba, bb, rtol=0, atol=1e-12, msg=name)
    for m in fast + loop:
        m.eval()
    want = torch.stack([m.mask(u2, None if prev2 is None else prev2[:, t]) for t, m in enumerate(loop)], 1)
    torch.testing.assert_close(stacked_masks(fast, u, prev), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("pool", [False, True])
def test_shared_unit_per_task_equals_one_call_per_task(pool):
    torch.manual_seed(0)
    after = (lambda y: nn.functional.max_pool2d(y, 2, 2)) if pool else (lambda y: y)  # the reference order
    unit = conv_unit(4, 6).double()
    randomise_batch_norms(unit)
    loop = copy.deepcopy(unit)
    x = torch.randn(3, 4, 4, 6, 6, dtype=torch.float64, requires_grad=True)  # (N, T=4, C, H, W)
    x2 = x.detach().clone().requires_grad_()
    weights = torch.randn(3, 4, 6, *((3, 3) if pool else (6, 6)), dtype=torch.float64)
    got = shared_unit_per_task(unit, x, pool=pool)
    want = torch.stack([after(loop(x2[:, t])) for t in range(4)], 1)  # BN statistics per task, 4 updates
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=1e-10)
    for pa, pb in zip(unit.parameters(), loop.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=0, atol=1e-10)
    bn, bn2 = unit[1], loop[1]
    torch.testing.assert_close(bn.running_mean, bn2.running_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(bn.running_var, bn2.running_var, rtol=0, atol=1e-12)
    assert int(bn.num_batches_tracked) == int(bn2.num_batches_tracked) == 4
    unit.eval(), loop.eval()
    want = torch.stack([after(loop(x2[:, t])) for t in range(4)], 1)
    torch.testing.assert_close(shared_unit_per_task(unit, x, pool=pool), want, rtol=0, atol=1e-12)


def test_batched_blocks_pass_gradcheck():
    torch.manual_seed(0)
    modules = [AttentionModule(5, 3).double() for _ in range(2)]
    unit = conv_unit(3, 2).double()
    u = torch.randn(2, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    prev = torch.randn(2, 2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: stacked_masks(modules, a, b), (u, prev))
    assert torch.autograd.gradcheck(lambda a: shared_unit_per_task(unit, a), (prev,))


# ---------------------------------------------------------------------------------------------------
# the whole network: fast path == the reference per-task loop
def _step(model, x, weights):
    out = model(x)
    loss = sum((out[k] * weights[k]).sum() for k in out)
    loss.backward()
    return out


@pytest.mark.parametrize("backbone", ["segnet", "vgg"])
def test_fast_mtan_equals_the_per_task_loop_in_values_gradients_and_statistics(backbone):
    if backbone == "segnet":
        tasks, x = DENSE, torch.rand(2, 3, 32, 32, dtype=torch.float64)
        fast = tiny_mtan(tasks, width=0.125).double()
    else:
        tasks, x = DIGITS, torch.rand(3, 1, 20, 28, dtype=torch.float64)
        fast = tiny_mtan(tasks, width=0.5, hidden=8).double()
    randomise_batch_norms(fast)
    loop = copy.deepcopy(fast)
    loop.fast = False
    gen = torch.Generator().manual_seed(0)
    weights = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in fast(x).items()}
    fast.load_state_dict(loop.state_dict())  # undo the statistics update of that call
    got, want = _step(fast, x, weights), _step(loop, x, weights)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-12)
    for (name, pa), pb in zip(fast.named_parameters(), loop.parameters()):
        assert pb.grad is not None, name
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-9, atol=1e-10, msg=name)
    for (name, ba), bb in zip(fast.named_buffers(), loop.buffers()):
        torch.testing.assert_close(ba, bb, rtol=0, atol=1e-12, msg=name)
    fast.eval(), loop.eval()
    got, want = fast(x), loop(x)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-12)
    masks_fast, loop_masks = fast.attention_masks(x), loop.attention_masks(x)
    assert set(masks_fast) == set(loop_masks) == {t.name for t in tasks}
    for name in loop_masks:
        for a, b in zip(masks_fast[name], loop_masks[name]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------
# the wiring of the authors' code (book/authors_code.md, "MTAN's wiring"; full width)
def test_segnet_mtan_wiring_as_the_reference_code():
    with torch.device("meta"):
        model = create("mtan", [seg_task(13), TASKS["depth"], TASKS["normal"]])
    shape = lambda m: (m.g[0].in_channels, m.g[0].out_channels, m.h[0].out_channels)
    enc = [shape(stage["seg"]) for stage in model.encoder_attention]
    dec = [shape(stage["seg"]) for stage in model.decoder_attention]
    assert enc == [(64, 64, 64), (256, 128, 128), (512, 256, 256), (1024, 512, 512), (1024, 512, 512)]
    assert dec == [(1024, 512, 512), (768, 256, 256), (384, 128, 128), (192, 64, 64), (128, 64, 64)]
    convs = lambda units: [(u[0].in_channels, u[0].out_channels, u[0].kernel_size) for u in units]
    assert convs(model.encoder_f) == [(64, 128, (3, 3)), (128, 256, (3, 3)), (256, 512, (3, 3)),
                                      (512, 512, (3, 3)), (512, 512, (3, 3))]
    assert convs(model.decoder_f) == [(512, 512, (3, 3)), (512, 256, (3, 3)), (256, 128, (3, 3)),
                                      (128, 64, (3, 3)), (64, 64, (3, 3))]
    # per task and per block one module; the f units are shared (one set for all tasks)
    assert all(len(stage) == 3 for stage in list(model.encoder_attention) + list(model.decoder_attention))
    per_task = count_parameters(model.encoder_attention) + count_parameters(model.decoder_attention)
    with torch.device("meta"):
        one = create("mtan", [seg_task(13)])
    assert per_task == 3 * (count_parameters(one.encoder_attention) + count_parameters(one.decoder_attention))
    assert count_parameters(model.encoder_f) == count_parameters(one.encoder_f)


def test_mtan_and_stan_parameter_ratios_match_the_paper():
    table = parameter_table(["mtan", "stan"])
    assert set(table["architecture"]) == {"mtan", "stan"} and {"mtan", "stan"} <= set(PAPER_P)
    assert (table["difference %"].abs() < 2.0).all(), table


def test_attention_masks_per_task_and_block():
    model = tiny_mtan(width=0.125).eval()
    x = torch.rand(2, 3, 32, 64)
    masks = model.attention_masks(x)
    assert list(masks) == ["seg", "depth", "normal"]
    widths = [8, 16, 32, 64, 64, 64, 32, 16, 8, 8]
    sizes = [(32, 64), (16, 32), (8, 16), (4, 8), (2, 4), (2, 4), (4, 8), (8, 16), (16, 32), (32, 64)]
    for name, per_block in masks.items():
        assert [tuple(m.shape) for m in per_block] == [(2, c, h, w) for c, (h, w) in zip(widths, sizes)]
        assert all(((m >= 0) & (m <= 1)).all() for m in per_block)
    assert not torch.equal(masks["seg"][3], masks["depth"][3])


def test_a_task_loss_trains_its_own_attention_and_the_shared_parts_only():
    model = tiny_mtan(width=0.125)
    model(torch.rand(2, 3, 32, 32))["depth"].sum().backward()
    for stage in list(model.encoder_attention) + list(model.decoder_attention):
        # the fast path runs the tasks' modules as one grouped call: zeros, not None, for the other tasks
        assert all(p.grad is None or not p.grad.any() for p in stage["seg"].parameters())
        assert all(p.grad is not None for p in stage["depth"].parameters())
    assert all(p.grad is None for p in model.heads["seg"].parameters())
    for shared in (model.shared, model.encoder_f, model.decoder_f):
        assert all(p.grad is not None for p in shared.parameters())


def test_stan_is_one_single_task_mtan_per_task():
    stan = create("stan", DENSE, width=0.125)
    assert list(stan.nets) == ["seg", "depth", "normal"]
    assert all(isinstance(net, MTAN) and list(net.tasks) == [name] for name, net in stan.nets.items())
    one = create("mtan", [DENSE[1]], width=0.125)
    assert count_parameters(stan.nets["depth"]) == count_parameters(one)
    stan(torch.rand(2, 3, 32, 32))["seg"].sum().backward()
    assert all(p.grad is None for p in stan.nets["depth"].parameters())


def test_mtan_on_the_vgg_backbone_for_image_level_tasks():
    model = tiny_mtan(DIGITS + [Task("size", "regress", 1)], width=0.5, hidden=8)
    assert not model.has_decoder and len(model.encoder_attention) == 3 and len(model.encoder_f) == 2
    out = model(torch.rand(4, 1, 20, 28))
    assert out["left"].shape == (4, 10) and out["size"].shape == (4, 1)
    masks = model.attention_masks(torch.rand(4, 1, 20, 28))
    assert [tuple(m.shape[1:]) for m in masks["left"]] == [(8, 20, 28), (16, 10, 14), (32, 5, 7)]


def test_synchronised_batch_norms_make_mtan_run_its_modules():
    """Multi-process training swaps in a synchronised batch norm: the batched path, which calls batch norm
    functionally, would bypass it, so MTAN then runs the per-task loop (same values)."""
    from mtlutils.distributed import DistributedBatchNorm2d, convert_batchnorm

    model = tiny_mtan(width=0.125).eval()
    x = torch.rand(2, 3, 32, 32)
    expected = model(x)
    assert model._plain_batch_norms()
    converted = convert_batchnorm(copy.deepcopy(model), torch.device("cpu"))
    assert isinstance(converted.encoder_f[0][1], DistributedBatchNorm2d) and not converted._plain_batch_norms()
    got = converted(x)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("groups", [1, 3])
def test_pointwise_conv_equals_a_1x1_convolution(groups):
    """The batched matrix product computes F.conv2d's function: values and gradients (float64, gradcheck)."""
    torch.manual_seed(0)
    x = torch.randn(2, 4 * groups, 5, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6 * groups, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6 * groups, dtype=torch.float64, requires_grad=True)
    got = pointwise_conv(x, w, b, groups=groups)
    want = torch.nn.functional.conv2d(x, w, b, groups=groups)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    ramp = torch.linspace(-1, 1, want.numel(), dtype=torch.float64).view_as(want)
    grads = [torch.autograd.grad((y * ramp).sum(), (x, w, b)) for y in (got, want)]
    for g_got, g_want in zip(*grads):
        torch.testing.assert_close(g_got, g_want, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, c, d: pointwise_conv(a, c, d, groups=groups), (x, w, b))
    sliced = w[:, 1:]   # a non-contiguous weight (stacked_masks splits g's weight this way)
    torch.testing.assert_close(pointwise_conv(x[:, : 3 * groups], sliced, groups=groups),
                               torch.nn.functional.conv2d(x[:, : 3 * groups], sliced, groups=groups))


def test_pointwise_conv_stays_in_the_autocast_type_and_refuses_other_kernels():
    x, w, b = torch.randn(2, 8, 4, 4), torch.randn(6, 4, 1, 1), torch.randn(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert pointwise_conv(x, w, b, groups=2).dtype == torch.bfloat16   # the bias does not promote
    with pytest.raises(ValueError, match="1x1 weight"):
        pointwise_conv(x, torch.randn(6, 4, 3, 3), groups=2)
    with pytest.raises(ValueError, match="1x1 weight"):
        pointwise_conv(x, w, groups=3)
