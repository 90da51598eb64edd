"""Coursework self-checks: each passes a right answer and fails the usual mistakes; every check fails a broken
result (NaN, None, a list, a wrong shape, an exception) with a message and never raises."""
import math
import sys

import numpy as np
import pytest
import torch

from mtlutils import checks
from mtlutils.checks import CheckResult, check_close, check_shared_forward


def good(trunk, heads, x):
    features = trunk(x)
    return {name: head(features) for name, head in heads.items()}


def test_shared_forward_check_passes_a_correct_implementation(capsys):
    result = check_shared_forward(good)
    assert result.passed and result.error == 0.0
    assert capsys.readouterr().out.startswith("PASS check_shared_forward")


def test_shared_forward_check_catches_mistakes():
    def twice(trunk, heads, x):  # right values, but the trunk runs once per task
        return {name: head(trunk(x)) for name, head in heads.items()}

    def off(trunk, heads, x):
        return {k: v + 1e-6 for k, v in good(trunk, heads, x).items()}

    def missing(trunk, heads, x):
        out = good(trunk, heads, x)
        out.pop("size")
        return out

    def stub(trunk, heads, x):
        raise NotImplementedError

    def crash(trunk, heads, x):
        return trunk(x[0])  # drops the batch dimension

    assert "ran 3 times" in check_shared_forward(twice, verbose=False).message
    r = check_shared_forward(off, verbose=False)
    assert not r.passed and 5e-7 < r.error < 2e-6 and "differs" in r.message
    assert "wrong structure" in check_shared_forward(missing, verbose=False).message
    assert "not implemented" in check_shared_forward(stub, verbose=False).message
    assert "raised" in check_shared_forward(crash, verbose=False).message
    assert "must return a dict" in check_shared_forward(lambda t, h, x: 1, verbose=False).message


def test_check_close_reports_error_and_tolerance():
    r = check_close("demo", torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5]), tol=0.1, verbose=False)
    assert not r and r.error == 0.5 and "FAIL demo" in str(r) and "tolerance 1e-01" in str(r)
    assert bool(CheckResult("x", True, "ok"))


def test_miou_check():
    from mtlutils.checks import check_miou

    def good(conf):
        conf = conf.double()
        tp = conf.diag()
        union = conf.sum(0) + conf.sum(1) - tp
        return float(100 * (tp[union > 0] / union[union > 0]).mean())

    def nan_for_absent(conf):  # averages NaN of an absent class -> nan
        conf = conf.double()
        tp = conf.diag()
        return float(100 * (tp / (conf.sum(0) + conf.sum(1) - tp)).mean())

    def fraction(conf):
        return good(conf) / 100

    assert check_miou(good, verbose=False).passed
    assert not check_miou(nan_for_absent, verbose=False).passed
    assert not check_miou(fraction, verbose=False).passed
    assert "not implemented" in check_miou(lambda c: (_ for _ in ()).throw(NotImplementedError), verbose=False).message


def test_shared_forward_check_refuses_the_package_forward():
    from mtlutils.models.multitask import HardSharedNetwork

    def borrowed(trunk, heads, x):   # the package's forward on a stand-in object
        import types
        return HardSharedNetwork.forward(types.SimpleNamespace(trunk=trunk, heads=heads, check_input=lambda x: None), x)

    r = check_shared_forward(borrowed, verbose=False)
    assert not r.passed and "calls the package's HardSharedNetwork.forward" in r.message


def _good_delta(model, baseline):
    from mtlutils.metrics import HIGHER_IS_BETTER

    terms = [(1 if HIGHER_IS_BETTER[k.split("/")[-1]] else -1) * (model[k] - baseline[k]) / baseline[k] for k in model]
    return 100 * sum(terms) / len(terms)


def test_delta_mtl_check():
    from mtlutils.checks import check_delta_mtl
    from mtlutils.metrics import delta_mtl

    assert check_delta_mtl(_good_delta, verbose=False).passed
    assert "a fraction" in check_delta_mtl(lambda m, b: _good_delta(m, b) / 100, verbose=False).message

    def ignores_direction(model, baseline):
        return 100 * sum((model[k] - baseline[k]) / baseline[k] for k in model) / len(model)

    assert "lower is better" in check_delta_mtl(ignores_direction, verbose=False).message
    assert "the sign" in check_delta_mtl(lambda m, b: -_good_delta(m, b), verbose=False).message
    r = check_delta_mtl(lambda m, b: delta_mtl(m, b), verbose=False)
    assert not r.passed and "calls the package's mtlutils.metrics.delta_mtl" in r.message
    assert "not implemented" in check_delta_mtl(_stub, verbose=False).message


def _good_confusion(pred, target, classes):
    valid = target >= 0
    counts = torch.bincount(target[valid] * classes + pred[valid], minlength=classes * classes)
    return counts.reshape(classes, classes).double()   # counts as floats (NaN can then poison them in the tests)


def test_confusion_matrix_check():
    from mtlutils.checks import check_confusion_matrix
    from mtlutils.metrics import SegMetrics

    assert check_confusion_matrix(_good_confusion, verbose=False).passed

    def transposed(pred, target, classes):
        return _good_confusion(pred, target, classes).T

    def counts_void(pred, target, classes):
        t = target.clamp_min(0)
        return torch.bincount(t.reshape(-1) * classes + pred.reshape(-1), minlength=classes * classes).reshape(classes, classes)

    def borrowed(pred, target, classes):
        m = SegMetrics(classes)
        m.update(pred, target)
        return m.confusion

    assert "transposed" in check_confusion_matrix(transposed, verbose=False).message
    assert "void pixels" in check_confusion_matrix(counts_void, verbose=False).message
    r = check_confusion_matrix(borrowed, verbose=False)
    assert not r.passed and "calls the package's SegMetrics.update" in r.message
    assert "not implemented" in check_confusion_matrix(_stub, verbose=False).message


def test_miou_check_refuses_seg_metrics():
    from mtlutils.checks import check_miou
    from mtlutils.metrics import SegMetrics

    def borrowed(conf):
        m = SegMetrics(conf.shape[0])
        m.confusion = conf.long()
        return m.compute()["miou"]

    r = check_miou(borrowed, verbose=False)
    assert not r.passed and "calls the package's SegMetrics" in r.message


def test_cross_stitch_backward_check_catches_the_papers_typo():
    from mtlutils.checks import check_cross_stitch_backward

    def good(alpha, x_a, x_b, grad_a, grad_b):  # Eq. 2 and the corrected Eq. 3, one alpha per layer
        grad_alpha = torch.stack([torch.stack([(grad_a * x_a).sum(), (grad_a * x_b).sum()]),
                                  torch.stack([(grad_b * x_a).sum(), (grad_b * x_b).sum()])])
        return alpha[0, 0] * grad_a + alpha[1, 0] * grad_b, alpha[0, 1] * grad_a + alpha[1, 1] * grad_b, grad_alpha

    def printed(alpha, x_a, x_b, grad_a, grad_b):  # Eq. 3 as printed: dL/dalpha_AB = dL/dx~_B * x_A
        gx_a, gx_b, grad_alpha = good(alpha, x_a, x_b, grad_a, grad_b)
        return gx_a, gx_b, grad_alpha.T

    def per_channel(alpha, x_a, x_b, grad_a, grad_b):  # forgot to sum over the channels
        gx_a, gx_b, _ = good(alpha, x_a, x_b, grad_a, grad_b)
        return gx_a, gx_b, torch.stack([torch.stack([(g * x).sum((0, 2, 3)) for x in (x_a, x_b)])
                                        for g in (grad_a, grad_b)])

    def not_transposed(alpha, x_a, x_b, grad_a, grad_b):  # Eq. 2 with alpha instead of its transpose
        _, _, grad_alpha = good(alpha, x_a, x_b, grad_a, grad_b)
        return alpha[0, 0] * grad_a + alpha[0, 1] * grad_b, alpha[1, 0] * grad_a + alpha[1, 1] * grad_b, grad_alpha

    def stub(*args):
        raise NotImplementedError

    result = check_cross_stitch_backward(good, verbose=False)
    assert result.passed and result.error < 1e-12, result
    typo = check_cross_stitch_backward(printed, verbose=False)
    assert not typo.passed and "printed in the paper" in typo.message
    assert "sum over the channels" in check_cross_stitch_backward(per_channel, verbose=False).message
    wrong = check_cross_stitch_backward(not_transposed, verbose=False)
    assert not wrong.passed and wrong.error > 1e-3
    assert "not implemented" in check_cross_stitch_backward(stub, verbose=False).message
    assert "must return a tuple" in check_cross_stitch_backward(lambda *a: a[0], verbose=False).message


def test_dwa_check():
    from mtlutils.checks import check_dwa

    def good(history, temperature):
        k = history.shape[1]
        if history.shape[0] < 2:
            return torch.ones(k, dtype=torch.float64)
        return k * torch.softmax(history[-1] / history[-2] / temperature, dim=0)

    def inverted(history, temperature):  # ratio upside down: favours the fastest-falling task
        k = history.shape[1]
        if history.shape[0] < 2:
            return torch.ones(k, dtype=torch.float64)
        return k * torch.softmax(history[-2] / history[-1] / temperature, dim=0)

    def no_warmup(history, temperature):  # uses DWA from the second epoch on (ratio against epoch 0 = 1)
        k = history.shape[1]
        if history.shape[0] < 1:
            return torch.ones(k, dtype=torch.float64)
        before = history[-2] if history.shape[0] > 1 else torch.ones(k, dtype=torch.float64)
        return k * torch.softmax(history[-1] / before / temperature, dim=0)

    def sums_to_one(history, temperature):
        return good(history, temperature) / history.shape[1]

    assert check_dwa(good, verbose=False).passed
    for wrong in (inverted, no_warmup, sums_to_one):
        result = check_dwa(wrong, verbose=False)
        assert not result.passed and result.error > 1e-3, wrong.__name__
    assert "expected 2 weights" in check_dwa(lambda h, t: torch.tensor(1.0), verbose=False).message
    assert "not implemented" in check_dwa(lambda h, t: (_ for _ in ()).throw(NotImplementedError), verbose=False).message


def test_attention_check():
    from mtlutils.checks import check_attention

    def good(module, u, p, prev=None):
        x = u if prev is None else torch.cat([u, prev], dim=1)
        mask = module.h(module.g(x))
        return mask, mask * p

    def swapped(module, u, p, prev=None):  # [prev; u] instead of [u; prev]
        x = u if prev is None else torch.cat([prev, u], dim=1)
        mask = module.h(module.g(x))
        return mask, mask * p

    def additive(module, u, p, prev=None):  # residual instead of multiplicative attention
        mask, _ = good(module, u, p, prev)
        return mask, mask + p

    def uses_the_package(module, u, p, prev=None):
        return module.mask(u, prev), module(u, p, prev)

    result = check_attention(good, verbose=False)
    assert result.passed and result.error < 1e-12
    for wrong in (swapped, additive):
        result = check_attention(wrong, verbose=False)
        assert not result.passed and result.error > 1e-3, wrong.__name__
    assert "module's own mask" in check_attention(uses_the_package, verbose=False).message
    assert "(mask, attended)" in check_attention(lambda m, u, p, prev=None: u, verbose=False).message
    assert "not implemented" in check_attention(lambda *a: (_ for _ in ()).throw(NotImplementedError),
                                                verbose=False).message


# chapter 3: the cross-stitch unit as an autograd.Function (two tasks per channel; T tasks stacked)
class _Stitch2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, alpha, x_a, x_b):
        ctx.save_for_backward(alpha, x_a, x_b)
        a = alpha[:, :, :, None, None]
        return a[0, 0] * x_a + a[0, 1] * x_b, a[1, 0] * x_a + a[1, 1] * x_b

    @staticmethod
    def backward(ctx, g_a, g_b):
        alpha, x_a, x_b = ctx.saved_tensors
        a, dims = alpha[:, :, :, None, None], (0, 2, 3)
        grad_alpha = torch.stack([torch.stack([(g_a * x_a).sum(dims), (g_a * x_b).sum(dims)]),
                                  torch.stack([(g_b * x_a).sum(dims), (g_b * x_b).sum(dims)])])
        return grad_alpha, a[0, 0] * g_a + a[1, 0] * g_b, a[0, 1] * g_a + a[1, 1] * g_b


def _stitch_indices(alpha):
    return ("ijc", "nc...") if alpha.dim() == 3 else ("ij", "n...")


class _StitchT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, alpha, x):
        ctx.save_for_backward(alpha, x)
        a, s = _stitch_indices(alpha)
        return torch.einsum(f"{a},j{s}->i{s}", alpha, x)

    @staticmethod
    def backward(ctx, g):
        alpha, x = ctx.saved_tensors
        a, s = _stitch_indices(alpha)
        return torch.einsum(f"i{s},j{s}->{a}", g, x), torch.einsum(f"{a},i{s}->j{s}", alpha, g)


def test_cross_stitch_unit_check():
    from mtlutils.checks import check_cross_stitch_unit
    from mtlutils.layers import CrossStitchFunction
    from mtlutils.layers.cross_stitch import cross_stitch

    class Printed(_Stitch2):  # Eq. 3 as printed: the gradients of alpha_AB and alpha_BA swapped
        @staticmethod
        def backward(ctx, g_a, g_b):
            grad_alpha, grad_x_a, grad_x_b = _Stitch2.backward(ctx, g_a, g_b)
            return grad_alpha.transpose(0, 1), grad_x_a, grad_x_b

    class NotTransposed(_Stitch2):  # Eq. 2 with alpha instead of its transpose
        @staticmethod
        def backward(ctx, g_a, g_b):
            grad_alpha, _, _ = _Stitch2.backward(ctx, g_a, g_b)
            alpha = ctx.saved_tensors[0][:, :, :, None, None]
            return grad_alpha, alpha[0, 0] * g_a + alpha[0, 1] * g_b, alpha[1, 0] * g_a + alpha[1, 1] * g_b

    class Package(torch.autograd.Function):  # hands the work to the package
        @staticmethod
        def forward(ctx, alpha, x_a, x_b):
            return tuple(cross_stitch(alpha, [x_a, x_b]))

    class Stub(torch.autograd.Function):
        @staticmethod
        def forward(ctx, alpha, x_a, x_b):
            raise NotImplementedError

    result = check_cross_stitch_unit(_Stitch2, verbose=False)
    assert result.passed and result.error < 1e-12, result
    assert "printed in the paper" in check_cross_stitch_unit(Printed, verbose=False).message
    assert "Eq. 2" in check_cross_stitch_unit(NotTransposed, verbose=False).message
    for cheat in (Package, CrossStitchFunction):
        assert "calls the package's" in check_cross_stitch_unit(cheat, verbose=False).message
    assert "not implemented" in check_cross_stitch_unit(Stub, verbose=False).message
    assert "expected a torch.autograd.Function" in check_cross_stitch_unit(_Stitch2.apply, verbose=False).message
    assert sys.getprofile() is None


def test_cross_stitch_tasks_check():
    from mtlutils.checks import check_cross_stitch_tasks

    class ChannelsKept(_StitchT):  # per layer, the gradient of alpha must sum over the channels too
        @staticmethod
        def backward(ctx, g):
            alpha, x = ctx.saved_tensors
            grad_alpha, grad_x = _StitchT.backward(ctx, g)
            if alpha.dim() == 2:
                grad_alpha = torch.einsum("inc...,jnc...->ijc", g, x)
            return grad_alpha, grad_x

    class TwoTasksOnly(torch.autograd.Function):
        @staticmethod
        def forward(ctx, alpha, x):
            return torch.stack([alpha[0, 0] * x[0] + alpha[0, 1] * x[1], alpha[1, 0] * x[0] + alpha[1, 1] * x[1]])

    result = check_cross_stitch_tasks(_StitchT, verbose=False)
    assert result.passed and result.error < 1e-12, result
    assert "alpha's shape" in check_cross_stitch_tasks(ChannelsKept, verbose=False).message
    assert not check_cross_stitch_tasks(TwoTasksOnly, verbose=False).passed
    assert not check_cross_stitch_tasks(_Stitch2, verbose=False).passed


class _Attention(torch.nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        nn = torch.nn
        self.g = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels), nn.ReLU())
        self.h = nn.Sequential(nn.Conv2d(out_channels, out_channels, 1), nn.BatchNorm2d(out_channels),
                               nn.Sigmoid())

    def forward(self, u, p, prev=None):
        mask = self.h(self.g(u if prev is None else torch.cat([u, prev], dim=1)))
        return mask * p, mask


def test_attention_module_check():
    from mtlutils.checks import check_attention_module
    from mtlutils.layers import AttentionModule

    class Swapped(_Attention):   # [prev; u] instead of [u; prev]
        def forward(self, u, p, prev=None):
            return super().forward(u, p, None) if prev is None else super().forward(prev, p, u)

    class NoNorm(_Attention):    # batch norm left out of h
        def forward(self, u, p, prev=None):
            mask = torch.sigmoid(self.h[0](self.g(u if prev is None else torch.cat([u, prev], dim=1))))
            return mask * p, mask

    class Wrapper(torch.nn.Module):  # builds the package's module
        def __init__(self, in_channels, out_channels):
            super().__init__()
            self.inner = AttentionModule(in_channels, out_channels)

    class OtherNames(torch.nn.Module):
        def __init__(self, in_channels, out_channels):
            super().__init__()
            self.conv = torch.nn.Conv2d(in_channels, out_channels, 1)

    result = check_attention_module(_Attention, verbose=False)
    assert result.passed and result.error < 1e-12, result
    for wrong in (Swapped, NoNorm):
        result = check_attention_module(wrong, verbose=False)
        assert not result.passed and result.error > 1e-3, wrong.__name__
    assert "calls the package's AttentionModule" in check_attention_module(Wrapper, verbose=False).message
    assert "subclasses the package's" in check_attention_module(AttentionModule, verbose=False).message
    assert "do not match AttentionModule's" in check_attention_module(OtherNames, verbose=False).message
    assert "expected an nn.Module class" in check_attention_module(_Attention(2, 2), verbose=False).message
    assert sys.getprofile() is None


def test_chapter_3_and_4_checks_refuse_the_package():
    from mtlutils.layers.cross_stitch import CrossStitchFunction
    from mtlutils.weighting import DWA, dwa_weights

    def stitch_by_autograd(alpha, x_a, x_b, grad_a, grad_b):
        inputs = [t.requires_grad_() for t in (alpha, x_a, x_b)]
        grads = torch.autograd.grad(CrossStitchFunction.apply(*inputs), inputs, (grad_a, grad_b))
        return grads[1], grads[2], grads[0]

    def dwa_by_weighting(history, temperature):
        weighting = DWA([str(k) for k in range(history.shape[1])], temperature)
        for row in history.tolist():
            weighting.end_epoch({str(k): v for k, v in enumerate(row)})
        return torch.tensor(list(weighting.weights().values()), dtype=torch.float64)

    assert "calls the package's" in checks.check_cross_stitch_backward(stitch_by_autograd, verbose=False).message
    assert "calls the package's weighting.dwa_weights" in checks.check_dwa(dwa_weights, verbose=False).message
    assert "calls the package's DWA" in checks.check_dwa(dwa_by_weighting, verbose=False).message
    assert sys.getprofile() is None


# chapter 5: stochastic filter groups
def _gumbel(logits, tau, hard, noise_on=lambda v: v, divide=True, straight_through=True, guard=True):
    if guard and not tau > 0:
        raise ValueError("tau must be > 0")
    u = torch.rand_like(logits).clamp(1e-20, 1 - 1e-7)
    y = torch.softmax((noise_on(logits) - torch.log(-torch.log(u))) / (tau if divide else 1.0), dim=-1)
    if not hard:
        return y
    y_hard = torch.nn.functional.one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype)
    return y_hard - y.detach() + y if straight_through else y_hard


def test_gumbel_softmax_check():
    from mtlutils.checks import check_gumbel_softmax

    def stub(logits, tau, hard):
        raise NotImplementedError

    assert check_gumbel_softmax(_gumbel, verbose=False).passed
    assert "mean of soft samples" in check_gumbel_softmax(
        lambda l, t, h: _gumbel(l, t, h, noise_on=lambda v: v.softmax(-1)), verbose=False).message
    assert "tau -> 0" in check_gumbel_softmax(lambda l, t, h: _gumbel(l, t, h, divide=t == 1.0 or h),
                                              verbose=False).message
    assert "no gradient" in check_gumbel_softmax(lambda l, t, h: _gumbel(l, t, h, straight_through=False),
                                                 verbose=False).message
    assert "must raise ValueError" in check_gumbel_softmax(lambda l, t, h: _gumbel(l, t, h, guard=False),
                                                           verbose=False).message
    assert "not implemented" in check_gumbel_softmax(stub, verbose=False).message


def _route(x, weight, z_out, z_in, shared_reads_all=False, tasks_read_shared=True):
    groups = z_out.shape[1]
    s = groups - 1
    out = 0
    for i in range(groups):
        if i == s:
            reads = torch.ones_like(z_in[:, 0]) if shared_reads_all else z_in[:, s]
        else:
            reads = z_in[:, i] + (z_in[:, s] if tasks_read_shared else 0)
        conv = torch.nn.functional.conv2d(x * reads[None, :, None, None], weight, padding=1)
        out = out + z_out[:, i][None, :, None, None] * conv
    return out


def test_filter_group_routing_check():
    from mtlutils.checks import check_filter_group_routing

    assert check_filter_group_routing(_route, verbose=False).passed
    assert "differs" in check_filter_group_routing(lambda *a: _route(*a, shared_reads_all=True), verbose=False).message
    assert "differs" in check_filter_group_routing(lambda *a: _route(*a, tasks_read_shared=False),
                                                   verbose=False).message
    assert "gradient of z_out" in check_filter_group_routing(
        lambda x, w, zo, zi: _route(x, w, zo.detach(), zi), verbose=False).message
    assert "not implemented" in check_filter_group_routing(
        lambda *a: (_ for _ in ()).throw(NotImplementedError), verbose=False).message


def test_chapter5_checks_refuse_the_package_and_torch():
    from mtlutils.checks import check_filter_group_routing, check_gumbel_softmax
    from mtlutils.layers import gumbel_softmax
    from mtlutils.layers.filter_groups import filter_group_conv, filter_group_conv_masked

    for sampler, label in [(lambda l, t, h: gumbel_softmax(l, tau=t, hard=h), "mtlutils.layers.gumbel_softmax"),
                           (lambda l, t, h: torch.nn.functional.gumbel_softmax(l, tau=t, hard=h),
                            "torch.nn.functional.gumbel_softmax")]:
        r = check_gumbel_softmax(sampler, verbose=False)
        assert not r.passed and f"calls the package's {label}" in r.message, r.message
    for route in (lambda x, w, zo, zi: filter_group_conv_masked(x, w, None, zo, zi),
                  lambda x, w, zo, zi: filter_group_conv(x, w, None, zo, zi)):
        r = check_filter_group_routing(route, verbose=False)
        assert not r.passed and "calls the package's mtlutils.layers.filter_groups" in r.message, r.message


def test_authors_frequencies_check():
    from mtlutils.checks import check_authors_frequencies

    def draws(p, n, log=False):
        v = p.clamp_min(1e-12).log() if log else p
        g = -torch.log(-torch.log(torch.rand(n, len(p), dtype=p.dtype).clamp(1e-12, 1 - 1e-12)))
        return (v + g).argmax(1).bincount(minlength=len(p)).double() / n

    assert check_authors_frequencies(draws, verbose=False).passed
    wrong = check_authors_frequencies(lambda p, n: draws(p, n, log=True), verbose=False)
    assert not wrong.passed and "add the noise to p, not log p" in wrong.message
    assert "one frequency per group" in check_authors_frequencies(lambda p, n: torch.ones(2), verbose=False).message


def _chapter_solution(p, n):
    """The solution of chapter 5's exercise, as the chapter writes it."""
    info = torch.finfo(p.dtype)
    u = torch.rand(n, len(p), dtype=p.dtype).clamp(info.tiny, 1 - info.eps)
    winners = (p - torch.log(-torch.log(u))).argmax(dim=1)
    return winners.bincount(minlength=len(p)).to(p.dtype) / n


def test_authors_frequencies_check_wants_draws():
    """The reported case: softmax(p) itself passed ('0.0 std errors at worst') without sampling."""
    from mtlutils.checks import check_authors_frequencies
    from mtlutils.layers import gumbel_softmax

    def stub(p, n):
        raise NotImplementedError

    def fixed_draws(p, n):          # draws, but the same ones at every call
        gen = torch.Generator().manual_seed(0)
        u = torch.rand(n, len(p), dtype=p.dtype, generator=gen).clamp(1e-12, 1 - 1e-12)
        return (p - torch.log(-torch.log(u))).argmax(1).bincount(minlength=len(p)).double() / n

    assert check_authors_frequencies(_chapter_solution, verbose=False).passed
    shortcut = check_authors_frequencies(lambda p, n: torch.softmax(p, 0), verbose=False)
    assert not shortcut.passed and "softmax(p) itself" in shortcut.message, shortcut.message
    nearly = check_authors_frequencies(lambda p, n: torch.softmax(p, 0) * (1 + 1e-9), verbose=False)
    assert not nearly.passed and "multiples of 1/n" in nearly.message, nearly.message
    def rounded_softmax(p, n):      # counts that sum to n, but no draws
        counts = (torch.softmax(p, 0) * n).round()
        counts[-1] = n - counts[:-1].sum()
        return counts / n

    rounded = check_authors_frequencies(rounded_softmax, verbose=False)
    assert not rounded.passed and "different random seeds" in rounded.message, rounded.message
    fixed = check_authors_frequencies(fixed_draws, verbose=False)
    assert not fixed.passed and "different random seeds" in fixed.message, fixed.message
    assert "not implemented" in check_authors_frequencies(stub, verbose=False).message
    ready_made = check_authors_frequencies(
        lambda p, n: gumbel_softmax(p.expand(n, len(p)), hard=True).sum(0) / n, verbose=False)
    assert not ready_made.passed and "calls the package's mtlutils.layers.gumbel_softmax" in ready_made.message
    torch_made = check_authors_frequencies(
        lambda p, n: torch.nn.functional.gumbel_softmax(p.expand(n, len(p)), hard=True).sum(0) / n, verbose=False)
    assert not torch_made.passed and "torch.nn.functional.gumbel_softmax" in torch_made.message


def test_verdict_check():
    from mtlutils.checks import check_verdict

    def good(a_mean, a_std, b_mean, b_std, higher_is_better=True):
        gap = (a_mean - b_mean) if higher_is_better else (b_mean - a_mean)
        return "held" if gap > a_std + b_std else "reversed" if gap < -(a_std + b_std) else "within the spread"

    def ignores_direction(a_mean, a_std, b_mean, b_std, higher_is_better=True):
        return good(a_mean, a_std, b_mean, b_std)

    def inclusive(a_mean, a_std, b_mean, b_std, higher_is_better=True):
        gap = (a_mean - b_mean) if higher_is_better else (b_mean - a_mean)
        return "held" if gap >= a_std + b_std else "reversed" if gap <= -(a_std + b_std) else "within the spread"

    def one_std(a_mean, a_std, b_mean, b_std, higher_is_better=True):
        return good(a_mean, a_std, b_mean, 0.0, higher_is_better)

    assert check_verdict(good, verbose=False).passed
    from mtlutils import tables
    from mtlutils.experiments import verdict
    for cases in [(2.0, 0.5, 1.0, 0.25), (1.0, 0.5, 2.0, 0.25), (1.5, 0.25, 1.0, 0.25), (1.0, 0.1, 1.5, 0.2)]:
        for higher in (True, False):       # the rule chapter 6 uses agrees with the reference
            assert verdict(*cases, higher_is_better=higher) == good(*cases, higher_is_better=higher)
    # ... and the check refuses a solution that calls it, by any route
    for caller in (verdict, lambda *a, **k: tables.verdict(*a, **k), lambda *a, **k: verdict(*a, **k)):
        result = check_verdict(caller, verbose=False)
        assert not result.passed and "calls the package's mtlutils.tables.verdict" in result.message
    assert not check_verdict(lambda *a, **k: float("nan"), verbose=False).passed
    assert not check_verdict(lambda *a, **k: None, verbose=False).passed
    for wrong in (ignores_direction, inclusive, one_std):
        assert not check_verdict(wrong, verbose=False).passed, wrong.__name__


# ---------------------------------------------------------------------------------------------------
# chapter 7: each check passes the solution, fails the stub, the usual mistakes and a student function that
# calls the package's implementation (by any route)

def _good_min_norm_two(g1, g2):
    diff = g1 - g2
    denom = diff @ diff
    if denom == 0:
        return torch.tensor([0.5, 0.5], dtype=g1.dtype)
    a1 = ((g2 - g1) @ g2 / denom).clamp(0.0, 1.0)
    return torch.stack([a1, 1 - a1])


def _good_pcgrad(grads, order):
    out = grads.clone()
    for i, others in enumerate(order):
        for j in others:
            dot = out[i] @ grads[j]
            if dot < 0:
                out[i] = out[i] - dot / (grads[j] @ grads[j]) * grads[j]
    return out


def _good_gradnorm_loss(w, grad_norms, losses, initial_losses, alpha):
    g = w * grad_norms
    ratio = losses / initial_losses
    target = (g.mean() * (ratio / ratio.mean()) ** alpha).detach()
    return (g - target).abs().sum()


def _stub(*args, **kwargs):
    raise NotImplementedError("exercise: replace this line with your code")


def test_min_norm_two_check():
    from mtlutils.checks import check_min_norm_two
    from mtlutils.weighting import MGDA, solvers
    from mtlutils.weighting.solvers import min_norm_two as imported_early

    assert check_min_norm_two(_good_min_norm_two, verbose=False).passed
    assert "not implemented" in check_min_norm_two(_stub, verbose=False).message

    def unclipped(g1, g2):
        a1 = (g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2))
        return torch.stack([a1, 1 - a1])

    def unguarded(g1, g2):  # 0 / 0 for identical gradients
        a1 = ((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2))).clamp(0, 1)
        return torch.stack([a1, 1 - a1])

    def swapped(g1, g2):
        return _good_min_norm_two(g1, g2).flip(0)

    def float32(g1, g2):
        return _good_min_norm_two(g1.float(), g2.float())

    assert "not on the simplex" in check_min_norm_two(unclipped, verbose=False).message
    r = check_min_norm_two(unguarded, verbose=False)
    assert not r.passed and "non-finite" in r.message and "[1.0, 2.0]" in r.message
    assert "swap" in check_min_norm_two(swapped, verbose=False).message
    assert not check_min_norm_two(float32, verbose=False).passed
    callers = {"module": lambda g1, g2: solvers.min_norm_two(g1, g2),
               "imported early": lambda g1, g2: imported_early(g1, g2),
               "general solver": lambda g1, g2: solvers.min_norm(torch.stack([g1, g2])),
               "the weighting": lambda g1, g2: MGDA(["a", "b"], normalization="none").weights_from(
                   torch.stack([g1, g2]), torch.ones(2, dtype=g1.dtype))}
    for how, caller in callers.items():
        r = check_min_norm_two(caller, verbose=False)
        assert not r.passed and "calls the package's" in r.message, (how, r)
    assert sys.getprofile() is None


def test_pcgrad_check():
    from mtlutils.checks import check_pcgrad
    from mtlutils.weighting import PCGrad, solvers

    assert check_pcgrad(_good_pcgrad, verbose=False).passed
    assert "not implemented" in check_pcgrad(_stub, verbose=False).message

    def always(grads, order):  # projects without a conflict
        out = grads.clone()
        for i, others in enumerate(order):
            for j in others:
                out[i] = out[i] - (out[i] @ grads[j]) / (grads[j] @ grads[j]) * grads[j]
        return out

    def against_projected(grads, order):  # projects onto the others' already projected gradients
        out = grads.clone()
        for i, others in enumerate(order):
            for j in others:
                dot = out[i] @ out[j]
                if dot < 0:
                    out[i] = out[i] - dot / (out[j] @ out[j]) * out[j]
        return out

    def in_place(grads, order):
        for i, others in enumerate(order):
            for j in others:
                dot = grads[i] @ grads[j]
                if dot < 0:
                    grads[i] -= dot / (grads[j] @ grads[j]) * grads[j]
        return grads

    def ignores_order(grads, order):
        return _good_pcgrad(grads, [sorted(o) for o in order])

    def summed(grads, order):
        return _good_pcgrad(grads, order).sum(0)

    assert "no conflict here" in check_pcgrad(always, verbose=False).message
    assert not check_pcgrad(against_projected, verbose=False).passed
    assert "in place" in check_pcgrad(in_place, verbose=False).message
    assert not check_pcgrad(ignores_order, verbose=False).passed
    assert "one row per task" in check_pcgrad(summed, verbose=False).message
    callers = {"module": lambda grads, order: solvers.pcgrad(grads, order=order),
               "the weighting": lambda grads, order: PCGrad([str(i) for i in range(len(grads))]).combine_gradients(grads)[0]}
    for how, caller in callers.items():
        r = check_pcgrad(caller, verbose=False)
        assert not r.passed and "calls the package's" in r.message, (how, r)
    assert sys.getprofile() is None


def test_gradnorm_loss_check():
    from mtlutils.checks import check_gradnorm_loss
    from mtlutils.weighting import GradNorm

    assert check_gradnorm_loss(_good_gradnorm_loss, verbose=False).passed
    assert "not implemented" in check_gradnorm_loss(_stub, verbose=False).message

    def target_not_detached(w, grad_norms, losses, initial_losses, alpha):  # the classic bug
        g = w * grad_norms
        ratio = losses / initial_losses
        return (g - g.mean() * (ratio / ratio.mean()) ** alpha).abs().sum()

    def all_detached(w, grad_norms, losses, initial_losses, alpha):
        return _good_gradnorm_loss(w, grad_norms, losses, initial_losses, alpha).detach()

    def raw_ratio(w, grad_norms, losses, initial_losses, alpha):  # r = L̃ without dividing by its mean
        g = w * grad_norms
        return (g - (g.mean() * (losses / initial_losses) ** alpha).detach()).abs().sum()

    def squared(w, grad_norms, losses, initial_losses, alpha):
        g = w * grad_norms
        ratio = losses / initial_losses
        return ((g - (g.mean() * (ratio / ratio.mean()) ** alpha).detach()) ** 2).sum()

    r = check_gradnorm_loss(target_not_detached, verbose=False)
    assert not r.passed and "detach" in r.message and "value is right" in r.message
    assert "no gradient reaches w" in check_gradnorm_loss(all_detached, verbose=False).message
    assert not check_gradnorm_loss(raw_ratio, verbose=False).passed
    assert not check_gradnorm_loss(squared, verbose=False).passed

    def caller(w, grad_norms, losses, initial_losses, alpha):
        weighting = GradNorm([str(i) for i in range(len(w))], alpha=alpha)
        weighting.w.data.copy_(w.detach().float())
        weighting.initial_losses.copy_(initial_losses)
        return weighting.gradnorm_loss(grad_norms.float(), losses.float())

    r = check_gradnorm_loss(caller, verbose=False)
    assert not r.passed and "calls the package's GradNorm.gradnorm_loss" in r.message
    assert sys.getprofile() is None


def test_a_watched_check_restores_a_previous_profiler():
    from mtlutils.checks import check_pcgrad

    seen = []

    def profiler(frame, event, arg):
        seen.append(event)

    sys.setprofile(profiler)
    try:
        assert check_pcgrad(_good_pcgrad, verbose=False).passed
        assert sys.getprofile() is profiler
    finally:
        sys.setprofile(None)


# ---------------------------------------------------------------------------------------------------
# every check against broken student functions: a FAIL that says what is wrong, never an exception

def _good_miou(conf):
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    return float(100 * (tp[union > 0] / union[union > 0]).mean())


def _good_stitch(alpha, x_a, x_b, grad_a, grad_b):
    grad_alpha = torch.stack([torch.stack([(grad_a * x_a).sum(), (grad_a * x_b).sum()]),
                              torch.stack([(grad_b * x_a).sum(), (grad_b * x_b).sum()])])
    return alpha[0, 0] * grad_a + alpha[1, 0] * grad_b, alpha[0, 1] * grad_a + alpha[1, 1] * grad_b, grad_alpha


def _good_dwa(history, temperature):
    k = history.shape[1]
    if history.shape[0] < 2:
        return torch.ones(k, dtype=torch.float64)
    return k * torch.softmax(history[-1] / history[-2] / temperature, dim=0)


def _good_attend(module, u, p, prev=None):
    mask = module.h(module.g(u if prev is None else torch.cat([u, prev], dim=1)))
    return mask, mask * p


def _good_frequencies(p, n):
    g = -torch.log(-torch.log(torch.rand(n, len(p), dtype=p.dtype).clamp(1e-12, 1 - 1e-12)))
    return (p + g).argmax(1).bincount(minlength=len(p)).double() / n


def _good_verdict(a_mean, a_std, b_mean, b_std, higher_is_better=True):
    gap = (a_mean - b_mean) if higher_is_better else (b_mean - a_mean)
    return "held" if gap > a_std + b_std else "reversed" if gap < -(a_std + b_std) else "within the spread"


GOOD = {"check_shared_forward": good, "check_delta_mtl": _good_delta, "check_confusion_matrix": _good_confusion,
        "check_miou": _good_miou, "check_cross_stitch_backward": _good_stitch,
        "check_dwa": _good_dwa, "check_attention": _good_attend, "check_gumbel_softmax": _gumbel,
        "check_filter_group_routing": _route, "check_authors_frequencies": _good_frequencies,
        "check_verdict": _good_verdict, "check_min_norm_two": _good_min_norm_two, "check_pcgrad": _good_pcgrad,
        "check_gradnorm_loss": _good_gradnorm_loss, "check_cross_stitch_unit": _Stitch2,
        "check_cross_stitch_tasks": _StitchT, "check_attention_module": _Attention}


def test_every_public_check_is_covered():
    public = {n for n in dir(checks) if n.startswith("check_") and n != "check_close"}
    assert public == set(GOOD)


def _map(value, fn):
    """Apply ``fn`` to every tensor (and number) inside a result."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map(v, fn) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_map(v, fn) for v in value)
    if isinstance(value, float):
        return float(fn(torch.tensor(value, dtype=torch.float64)))
    return value


def _poison(value, bad):
    if isinstance(value, str):
        return bad
    return _map(value, lambda t: t * bad if t.is_floating_point() else t)


def _as_lists(value):
    if isinstance(value, torch.Tensor):
        return value.detach().tolist()
    if isinstance(value, (dict, tuple)):
        return [_as_lists(v) for v in (value.values() if isinstance(value, dict) else value)]
    return [value]


def _reshaped(value):
    if isinstance(value, (float, str)):
        return torch.zeros(3)
    return _map(value, lambda t: t[..., :-1] if t.dim() and t.shape[-1] > 1 else t.expand(2, *t.shape))


def _numpy(value):
    return np.array(value) if isinstance(value, str) else _map(value, lambda t: t.detach().numpy())


def _raise(value):
    raise RuntimeError("student bug")


BAD = {"nan": (lambda v: _poison(v, math.nan), "non-finite"), "inf": (lambda v: _poison(v, math.inf), "non-finite"),
       "none": (lambda v: None, "expected"), "list": (_as_lists, "expected"), "wrong shape": (_reshaped, "expected"),
       "numpy": (_numpy, "expected"), "string": (lambda v: "oops", "expected"),
       "raises": (_raise, "raised RuntimeError: student bug")}


def _broken(good_fn, transform, from_call):
    if isinstance(good_fn, type):
        return _broken_class(good_fn, transform, from_call)
    calls = []

    def student(*args, **kwargs):
        calls.append(1)
        out = good_fn(*args, **kwargs)
        return transform(out) if len(calls) >= from_call else out
    return student


def _broken_class(good_cls, transform, from_call):
    """A student's class (an autograd.Function or an nn.Module) whose forward returns ``transform`` of the
    right outputs from its ``from_call``-th call on."""
    calls = []

    if issubclass(good_cls, torch.autograd.Function):
        class Student(good_cls):
            @staticmethod
            def forward(ctx, *args):
                calls.append(1)
                out = good_cls.forward(ctx, *args)
                return transform(out) if len(calls) >= from_call else out
        return Student

    class StudentModule(good_cls):
        def forward(self, *args, **kwargs):
            calls.append(1)
            out = super().forward(*args, **kwargs)
            return transform(out) if len(calls) >= from_call else out
    return StudentModule


@pytest.mark.parametrize("from_call", [1, 2], ids=["first call", "later calls"])
@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize("check_name", sorted(GOOD))
def test_checks_fail_broken_results_with_a_message_and_never_raise(check_name, bad, from_call, capsys):
    check = getattr(checks, check_name)
    transform, says = BAD[bad]
    result = check(_broken(GOOD[check_name], transform, from_call), verbose=True)   # must not raise
    printed = capsys.readouterr().out
    if (from_call == 2 and check_name == "check_shared_forward") or (bad == "numpy" and check_name in ("check_miou", "check_delta_mtl")):
        assert result.passed  # one call only, so no broken later call; a NumPy float is a number
        return
    if bad in ("nan", "inf") and check_name == "check_verdict":
        says = "expected"  # a verdict is a string: a number is the wrong type
    if bad == "numpy" and check_name == "check_verdict":
        says = "expected"
    assert isinstance(result, CheckResult) and not result.passed, result
    assert says in result.message, result.message
    assert printed.startswith(f"FAIL {check_name}") and "max error 0," not in printed


def test_nan_results_were_passed_before():
    """The reported cases: NaN dropped by max (attention), a NaN z-score (authors' sampler), and a
    failed cross-stitch check that said 'max error 0'."""
    nan_attention = checks.check_attention(lambda m, u, p, prev=None: _poison(_good_attend(m, u, p, prev), math.nan),
                                           verbose=False)
    assert not nan_attention.passed and "non-finite" in nan_attention.message
    nan_freq = checks.check_authors_frequencies(lambda p, n: torch.full((len(p),), math.nan), verbose=False)
    assert not nan_freq.passed and "non-finite" in nan_freq.message
    stitch = checks.check_cross_stitch_backward(lambda *a: _poison(_good_stitch(*a), math.nan), verbose=False)
    assert not stitch.passed and "non-finite" in stitch.message and "max error 0" not in str(stitch)
    counts = checks.check_authors_frequencies(lambda p, n: _good_frequencies(p, n) * n, verbose=False)
    assert not counts.passed and "summing to 1" in counts.message                # counts, not frequencies


def test_check_close_reports_non_finite_and_odd_structures():
    r = check_close("demo", {"a": torch.tensor([1.0, math.nan])}, {"a": torch.zeros(2)}, tol=1.0, verbose=False)
    assert not r and "non-finite" in r.message and "'a'" in r.message
    r = check_close("demo", {"a": None}, {"a": torch.zeros(2)}, tol=1.0, verbose=False)
    assert not r and "expected {'a': (2,)}" in r.message
    r = check_close("demo", [0.0, 0.0], torch.zeros(2), tol=1.0, verbose=False)
    assert not r and "got list, expected (2,)" in r.message
