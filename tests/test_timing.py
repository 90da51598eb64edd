"""mtlutils.timing: the order in which contenders are called, the rounds kept, and the summary's
statistics on hand-made numbers (no test asserts how long anything takes)."""
from __future__ import annotations

import pytest

from mtlutils import timing


def test_interleaved_calls_each_contender_once_per_round_in_fresh_orders():
    calls = []
    contenders = {name: (lambda name=name: calls.append(name)) for name in "abcd"}
    times = timing.interleaved(contenders, rounds=30, warmup=2)
    rounds = [calls[i:i + 4] for i in range(0, len(calls), 4)]
    assert len(rounds) == 32 and all(sorted(r) == list("abcd") for r in rounds)
    assert len({r[0] for r in rounds}) == 4                      # every contender goes first sometimes
    after_a = {r[r.index("a") + 1] for r in rounds if r[-1] != "a"}
    assert len(after_a) > 1                                      # nobody always follows the same one
    assert {name: len(v) for name, v in times.items()} == {n: 30 for n in "abcd"}   # warm-up dropped
    assert all(t >= 0 for v in times.values() for t in v)
    again = []
    timing.interleaved({n: (lambda n=n: again.append(n)) for n in "abcd"}, rounds=30, warmup=2)
    assert again == calls                                        # the orders come from the seed
    with pytest.raises(ValueError, match="no contenders"):
        timing.interleaved({}, rounds=1)
    with pytest.raises(ValueError, match="rounds"):
        timing.interleaved(contenders, rounds=0)


def test_summary_on_hand_made_times():
    table = timing.summary({"slow": [3.0, 1.0, 2.0, 4.0], "fast": [1.0, 1.0, 0.5, 1.5]},
                           reference="fast", scale=1000, unit="ms")
    assert table.loc["slow", "median (ms)"] == pytest.approx(2500.0)
    assert table.loc["fast", "median (ms)"] == pytest.approx(1000.0)
    assert table.loc["slow", "25% (ms)"] == pytest.approx(1750.0)      # linear interpolation
    assert table.loc["slow", "fastest (ms)"] == 1000.0 and table.loc["slow", "slowest (ms)"] == 4000.0
    assert table.loc["slow", "median / fast"] == pytest.approx(2.5)
    assert table.loc["fast", "rounds"] == 4
    with pytest.raises(KeyError, match="reference"):
        timing.summary({"a": [1.0]}, reference="b")


def test_seconds_synchronises_the_given_device_before_and_after(monkeypatch):
    waited = []
    monkeypatch.setattr(timing.torch.cuda, "synchronize", lambda device=None: waited.append(device))
    ran = []
    assert timing.seconds(lambda: ran.append(1), device="cuda:1") >= 0.0
    assert ran == [1] and waited == [timing.torch.device("cuda:1")] * 2
    waited.clear()
    timing.seconds(lambda: None, device="cpu")
    assert waited == []                                                 # nothing to wait for on a CPU
    with pytest.raises(ValueError, match="at least one time"):
        timing.summary({"a": []})
    with pytest.raises(ValueError, match="at least one time"):
        timing.summary({})
