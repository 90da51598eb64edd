import importlib

import pytest
import torch

import mtlutils as mu
from mtlutils import config


def test_by_profile_picks_and_falls_back():
    assert config.by_profile(quick=1, full=2, profile="quick") == 1
    assert config.by_profile(quick=1, full=2, profile="full") == 2
    assert config.by_profile(quick=1, full=2, profile="paper") == 2
    assert config.by_profile(quick=1, full=2, paper=3, profile="paper") == 3
    with pytest.raises(ValueError, match="unknown profile"):
        config.by_profile(quick=1, full=2, profile="fast")


def test_bad_profile_variable_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("MTL_PROFILE", "turbo")
    with pytest.raises(ValueError, match="MTL_PROFILE='turbo'.*quick"):
        config._read_profile()


def test_profile_under_make_test_is_quick():
    # make test sets MTL_PROFILE=quick; the module reads it once at import
    importlib.reload(config)
    assert config.PROFILE in config.PROFILES


def test_get_device_default_and_override(monkeypatch):
    monkeypatch.delenv("MTL_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else None
    device = config.get_device()
    if expected:
        assert device.type == expected
    assert device.type in ("cuda", "mps", "cpu")
    monkeypatch.setenv("MTL_DEVICE", "cpu")
    assert config.get_device() == torch.device("cpu")
    assert config.get_device("cpu") == torch.device("cpu")


def test_seed_everything_repeats_random_streams():
    mu.seed_everything(123)
    a = (torch.rand(3), __import__("numpy").random.rand(2), __import__("random").random())
    mu.seed_everything(123)
    b = (torch.rand(3), __import__("numpy").random.rand(2), __import__("random").random())
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all() and a[2] == b[2]
    assert torch.are_deterministic_algorithms_enabled()
    with pytest.raises(ValueError):
        mu.seed_everything(-1)


def test_filling_new_memory_is_off_and_changes_no_result():
    """seed_everything turns off deterministic mode's NaN fill of new tensors (a cost, no effect on results):
    a few training steps of MTAN give the same numbers, bit for bit, with the fill and without it."""
    tasks = [mu.TASKS["depth"], mu.TASKS["normal"]]

    def train(fill: bool) -> list[torch.Tensor]:
        mu.seed_everything(0)
        assert torch.utils.deterministic.fill_uninitialized_memory is False
        torch.utils.deterministic.fill_uninitialized_memory = fill
        model = mu.models.create("mtan", tasks, width=0.0625)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        x = torch.rand(4, 3, 32, 32)
        targets = {t.name: torch.rand_like(model(x)[t.name]) for t in tasks}
        for _ in range(3):
            out = model(x)
            loss = sum(t.loss(out[t.name], targets[t.name]) for t in tasks)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()] + [b.clone() for b in model.buffers()]

    try:
        filled, unfilled = train(True), train(False)
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = False
    assert all(torch.equal(a, b) for a, b in zip(filled, unfilled))
