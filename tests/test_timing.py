"""mtlutils.timing: the order in which contenders are called, the rounds kept, and the summary's
statistics on hand-made numbers (no test asserts how long anything takes)."""
from __future__ import annotations

import pytest

from mtlutils import timing


def test_interleaved_rotates_the_first_contender_and_drops_the_warmup():
    calls = []
    contenders = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = timing.interleaved(contenders, rounds=3, warmup=2)
    assert calls == list("abc" "bca" "cab" "abc" "bca")        # 2 warm-up rounds, then 3 kept
    assert {name: len(v) for name, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for v in times.values() for t in v)
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


def test_seconds_measures_the_call():
    assert timing.seconds(lambda: sum(range(1000))) >= 0.0
    timing.sync("cpu")                                                # a no-op without an accelerator
