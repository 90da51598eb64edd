import pytest
import torch

import mtlutils as mu
from mtlutils.models import ARCHS, count_parameters, create, width_for_budget
from mtlutils.tasks import Task

from conftest import small_model

TASKS = [Task("left", "class", 10), Task("right", "class", 10), Task("size", "regress", 1)]


@pytest.mark.parametrize("arch", sorted(set(ARCHS) - {"dense"}))  # dense needs SegNet: test_dense_models
def test_forward_returns_one_prediction_per_task(arch):
    model = small_model(arch, TASKS)
    out = model(torch.rand(3, 1, 20, 28))
    assert set(out) == {"left", "right", "size"}
    assert out["left"].shape == (3, 10) and out["size"].shape == (3, 1)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown architecture 'mtan2'; valid choices: \[.*'single', 'split'"):
        create("mtan2", TASKS)
    with pytest.raises(ValueError, match="unknown backbone 'resnet'.*vgg"):
        create("split", TASKS, backbone="resnet")


@pytest.mark.parametrize("width", [0, -0.5, float("nan"), float("inf"), "wide", None])
def test_bad_width_is_an_error_not_a_one_channel_network(width):
    for arch in ("split", "cross_stitch"):
        with pytest.raises(ValueError, match=r"width .*must be a finite number > 0, got"):
            create(arch, TASKS, width=width)
    with pytest.raises(ValueError, match="width"):
        create("mtan", [mu.tasks.seg_task(3), mu.TASKS["depth"]], width=width)
    with pytest.raises(ValueError, match="width"):
        mu.models.vgg.VGGTrunk(width=width)
    assert create("split", TASKS, width=0.01) is not None               # tiny but positive is fine


@pytest.mark.parametrize("shape", [(3, 20, 28), (3, 3, 20, 28), (3, 1, 4, 4)])
def test_wrong_input_shape_says_what_was_expected(shape):
    model = small_model("split", TASKS)
    with pytest.raises(ValueError, match=r"expects a float tensor of shape \(N, 1, H, W\) with H, W >= 8"):
        model(torch.rand(*shape))
    with pytest.raises(ValueError, match="dtype"):
        model(torch.zeros(2, 1, 20, 28, dtype=torch.long))


def test_single_task_networks_are_independent():
    """A task's prediction of `single` depends on its own network only."""
    model = small_model("single", TASKS).eval()
    x = torch.rand(4, 1, 20, 28)
    before = model(x)
    with torch.no_grad():
        for p in list(model.trunks["right"].parameters()) + list(model.heads["right"].parameters()):
            p.add_(torch.randn_like(p))
    after = model(x)
    assert torch.equal(before["left"], after["left"]) and torch.equal(before["size"], after["size"])
    assert not torch.equal(before["right"], after["right"])
    # and one task's loss sends no gradient into another task's network
    model.zero_grad()
    model(x)["left"].sum().backward()
    assert all(p.grad is None for p in model.trunks["right"].parameters())


def test_split_shares_the_trunk_and_separates_the_heads():
    model = small_model("split", TASKS)
    model(torch.rand(4, 1, 20, 28))["left"].sum().backward()
    assert all(p.grad is not None for p in model.trunk.parameters())
    assert all(p.grad is None for p in model.heads["right"].parameters())


def test_parameter_counts_and_budget_matching():
    two = [Task("left", "class", 10), Task("right", "class", 10)]
    single = count_parameters(create("single", two))
    split = count_parameters(create("split", two))
    heads = sum(count_parameters(h) for h in create("split", two).heads.values())
    assert single == 2 * (split - heads) + heads  # two trunks vs one
    width = width_for_budget("split", two, single)
    assert abs(count_parameters(create("split", two, width=width)) / single - 1) < 0.02
    with pytest.raises(ValueError, match="cannot reach"):
        width_for_budget("split", two, 10**10, high=1.0)


def test_models_are_deterministic_given_the_seed():
    a, b = small_model("split", TASKS, seed=7), small_model("split", TASKS, seed=7)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("arch", ["single", "split", "mtan", "cross_stitch", "dense", "sfg"])
def test_output_bias_starts_dense_and_image_level_heads_at_the_given_mean(arch):
    """Task.output_bias sets the head's last bias and draws no random numbers (same weights otherwise)."""
    from mtlutils.tasks import with_output_bias

    dense = [mu.tasks.seg_task(3), mu.TASKS["depth"]]
    torch.manual_seed(0)
    plain = mu.models.create(arch, dense, width=0.0625)
    torch.manual_seed(0)
    biased = mu.models.create(arch, [dense[0], with_output_bias(mu.TASKS["depth"], 4.2)], width=0.0625)
    a, b = plain.state_dict(), biased.state_dict()
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    assert changed and all("depth" in k and k.endswith("bias") for k in changed), changed
    plain.eval(), biased.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        shift = biased(x)["depth"] - plain(x)["depth"]
    assert torch.allclose(shift, torch.full_like(shift, 4.2), atol=1e-5)
    torch.manual_seed(0)
    mlp = mu.models.create("split", [with_output_bias(mu.TASKS["sum"], 0.5), mu.TASKS["left"]], width=0.25)
    assert torch.all(mlp.heads["sum"].net[-1].bias == 0.5)


def test_output_bias_is_only_for_regression_kinds():
    from mtlutils.tasks import with_output_bias

    with pytest.raises(ValueError, match="output_bias"):
        with_output_bias(mu.TASKS["left"], 1.0)
    with pytest.raises(ValueError, match="finite"):
        with_output_bias(mu.TASKS["depth"], float("nan"))


def test_every_architecture_has_a_label():
    from mtlutils.models import ARCHS, LABELS
    assert set(LABELS) == set(ARCHS)
