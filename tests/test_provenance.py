"""The repeat rule: exact equality only where every fingerprint item matches, else the seeds' spread."""
import math

import pytest

from mtlutils import provenance as P


def _result(metrics, **fp_changes):
    fingerprint = {"cpu": "CPU X (6/143/8)", "isa": "avx2 avx512f", "cpu_capability": "AVX512",
                   "torch": "2.13.0+cpu", "torch_build": "abc", "numpy": "2.0", "threads": 1, "processes": 1,
                   "device": "cpu", "code": "c0de"}
    fingerprint.update(fp_changes)
    return {"metrics": dict(metrics), "fingerprint": fingerprint, "git_commit": "1234"}


SEEDS = [_result({"miou": 19.5, "err": 0.91}), _result({"miou": 21.7, "err": 0.83})]


def test_matching_fingerprints_demand_equality():
    committed = _result({"miou": 19.5, "err": 0.91})
    assert P.compare_repeat(committed, _result({"miou": 19.5, "err": 0.91}), SEEDS).passed
    check = P.compare_repeat(committed, _result({"miou": 19.5 + 1e-9, "err": 0.91}), SEEDS)
    assert check.rule == "exact" and not check.passed          # within the spread, but not equal
    assert check.reasons == ["all recorded items match"]
    assert "exact rule" in check.explain() and "FAIL" in check.explain()


@pytest.mark.parametrize("key,value", [("cpu", "CPU Y (6/167/1)"), ("isa", "avx2"), ("threads", 2),
                                       ("torch_build", "def"), ("code", "beef"), ("device", "cuda:0"),
                                       ("processes", 2), ("numpy", "2.1"), ("torch", "2.14.0")])
def test_any_mismatch_uses_the_seed_spread(key, value):
    committed = _result({"miou": 19.5, "err": 0.91})
    repeat = _result({"miou": 17.8, "err": 0.94}, **{key: value})
    check = P.compare_repeat(committed, repeat, SEEDS)
    assert check.rule == "tolerance" and check.passed
    assert any(r.startswith(key + ":") for r in check.reasons)
    # 2 x std of (19.5, 21.7) is 3.11; a repeat 3.2 away is outside
    assert not P.compare_repeat(committed, _result({"miou": 16.3, "err": 0.91}, **{key: value}), SEEDS).passed


def test_unrecorded_fingerprint_uses_the_tolerance_rule():
    old = {"metrics": {"miou": 19.5, "err": 0.91}, "git_commit": "24fe164+dirty"}
    check = P.compare_repeat(old, _result({"miou": 19.5, "err": 0.91}), SEEDS)
    assert check.rule == "tolerance" and "no fingerprint" in check.reasons[0]


def test_single_seed_falls_back_to_a_relative_tolerance():
    committed = _result({"miou": 20.0})
    other = _result({"miou": 21.9}, cpu="elsewhere")
    assert P.compare_repeat(committed, other, [committed], rel_tol=0.10).passed
    assert not P.compare_repeat(committed, _result({"miou": 22.1}, cpu="elsewhere"), [committed]).passed


def test_non_finite_and_missing_metrics_fail():
    committed = _result({"miou": 20.0, "err": 0.9})
    assert not P.compare_repeat(committed, _result({"miou": math.nan, "err": 0.9}, cpu="x"), SEEDS).passed
    assert not P.compare_repeat(committed, _result({"miou": 20.0}), SEEDS).passed


def test_fingerprint_records_what_equality_depends_on():
    fp = P.fingerprint("cpu", 1)
    assert set(P.EXACT_KEYS) <= set(fp)
    assert fp["threads"] >= 1 and len(fp["code"]) == 16 and fp["torch_build"]
    assert "smep" not in fp["isa"].split()
    assert P.code_hash() == fp["code"]          # stable within one process


def test_dirty_ignores_result_files_but_not_code(tmp_path):
    """A finished grid rewrites its summary.csv: that must not mark later runs ``+dirty``; code must."""
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results" / "g").mkdir(parents=True)
    (tmp_path / "results" / "g" / "summary.csv").write_text("a\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
    clean = P._read_git_commit(tmp_path)
    assert len(clean) == 40 and not clean.endswith("+dirty")
    (tmp_path / "results" / "g" / "summary.csv").write_text("a\nb\n")
    assert P._read_git_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert P._read_git_commit(tmp_path) == clean + "+dirty"
