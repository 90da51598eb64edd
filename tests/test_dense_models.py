"""SegNet, the dense architectures, the dense task losses and the parameter table."""
import math

import pytest
import torch

from mtlutils.models import ARCHS, count_parameters, create
from mtlutils.models.params import PAPER_P, SEGNET_13, parameter_table
from mtlutils.tasks import TASKS, Task, seg_task

DENSE = [seg_task(5), TASKS["depth"], TASKS["normal"]]


def tiny(arch, tasks=DENSE, seed=0, **kw):
    torch.manual_seed(seed)
    return create(arch, tasks, width=0.125, **kw)


def test_segnet_has_the_reference_parameter_count():
    with torch.device("meta"):
        assert count_parameters(create("single", [seg_task(13)])) == SEGNET_13 == 24_981_069


def test_parameter_table_matches_the_paper_within_2_percent():
    table = parameter_table()
    checked = table.dropna(subset=["paper #P"])
    assert set(checked["architecture"]) == set(PAPER_P) & set(ARCHS)  # every paper entry that exists here
    assert (checked["difference %"].abs() < 2.0).all(), checked


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_dense_forward_shapes_and_activations(arch):
    model = tiny(arch)  # train mode: an untrained deep net in eval mode can output norms below 1e-12
    out = model(torch.rand(2, 3, 32, 64))
    assert out["seg"].shape == (2, 5, 32, 64) and out["depth"].shape == (2, 1, 32, 64)
    assert torch.allclose(out["seg"].exp().sum(1), torch.ones(2, 32, 64), atol=1e-5)  # log-probabilities
    assert torch.allclose(out["normal"].norm(dim=1), torch.ones(2, 32, 64), atol=1e-5)  # unit normals


def test_wide_and_deep_variants():
    wide, deep, base = tiny("split_wide"), tiny("split_deep"), tiny("split")
    assert wide.trunk.widths[-1] == 2 * base.trunk.widths[-1]
    convs = lambda m: sum(isinstance(x, torch.nn.Conv2d) for x in m.trunk.modules())
    assert convs(deep) == 2 * convs(base) == 52


def test_segnet_needs_sizes_divisible_by_32():
    model = tiny("split")
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.rand(1, 3, 48, 64))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(torch.rand(1, 1, 64, 64))


def test_dense_task_networks_get_gradient_only_from_their_task():
    model = tiny("dense")
    model(torch.rand(2, 3, 32, 32))["depth"].sum().backward()
    assert all(p.grad is None for p in model.trunks["seg"].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.trunks["depth"].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.shared.parameters())
    with pytest.raises(ValueError, match="side inputs"):
        create("dense", [TASKS["left"], TASKS["right"]])


def test_backbone_choice_from_task_kinds():
    assert hasattr(tiny("split").trunk, "stage_inputs")  # segnet for dense tasks
    with pytest.raises(ValueError, match="mix image-level and dense"):
        create("split", [TASKS["left"], TASKS["depth"]])


def test_seg_loss_ignores_void_by_hand():
    task = seg_task(2)
    logp = torch.log(torch.tensor([[0.9, 0.2], [0.1, 0.8]])).reshape(1, 2, 1, 2)  # 2 pixels
    target = torch.tensor([[[0, -1]]])
    assert task.loss(logp, target).item() == pytest.approx(-math.log(0.9), rel=1e-6)
    all_void = task.loss(logp.requires_grad_(), torch.full((1, 1, 2), -1))
    assert all_void.item() == 0.0 and all_void.requires_grad


def test_depth_loss_is_l1_over_valid_pixels_by_hand():
    pred = torch.tensor([1.0, 2.0, 5.0, 0.5]).reshape(1, 1, 2, 2)
    target = torch.tensor([1.5, 0.0, 3.0, 0.0]).reshape(1, 1, 2, 2)  # two valid pixels
    assert TASKS["depth"].loss(pred, target).item() == pytest.approx((0.5 + 2.0) / 2)


def test_normal_loss_is_one_minus_mean_cosine_by_hand():
    pred = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).T.reshape(1, 3, 1, 3)
    target = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 3)
    # pixel 1: cos 1; pixel 2: cos 0; pixel 3 invalid -> 1 - (1 + 0) / 2
    assert TASKS["normal"].loss(pred, target).item() == pytest.approx(0.5)


def test_dense_task_validation():
    with pytest.raises(ValueError, match="has 1 output channel"):
        Task("depth", "depth", 3)
    with pytest.raises(ValueError, match="has 3 output channel"):
        Task("n", "normal", 1)


def test_dense_task_networks_last_decoder_stage_is_the_authors_128_128_64():
    """The MTAN authors' Dense: each task network's full-resolution decoder stage reads [task ; shared]
    (2 x 64 channels) and keeps that width until its last conv: 128->128->64. SegNet itself is unchanged."""
    with torch.device("meta"):
        dense = create("dense", [seg_task(13), TASKS["depth"], TASKS["normal"]])
        single = create("single", [seg_task(13)])
    widths = lambda stage: [(u[0].in_channels, u[0].out_channels) for u in stage]  # noqa: E731
    assert widths(dense.trunks["seg"].decoder[-1]) == [(128, 128), (128, 64)]
    assert widths(dense.trunks["seg"].decoder[-2]) == [(256, 64), (64, 64)]   # the other stages: as before
    assert widths(dense.shared.decoder[-1]) == widths(single.trunks["seg"].decoder[-1]) == [(64, 64), (64, 64)]
