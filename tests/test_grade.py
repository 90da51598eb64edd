"""tools/grade.py (``make grade``): student notebooks run in fresh kernels, every check result collected.

In ``make test`` (about a minute and a half on two busy cores): hand-made notebooks for the mechanism
(checks recorded with and without printing, nested checks counted once, crash, timeout, unreadable file,
a check that never ran), and one chapter both ways: chapter 5, the one with the most coded exercises,
FAILs every check as shipped to students and PASSes every check with its solutions. Every chapter both
ways (several minutes: the reproduction chapter alone takes minutes) runs with ``MTL_GRADE_ALL=1``.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("grade", REPO / "tools" / "grade.py")
grade = importlib.util.module_from_spec(_spec)
sys.modules["grade"] = grade
_spec.loader.exec_module(grade)

CHAPTERS = sorted((REPO / "notebooks").glob("0*.ipynb"))
STUDENT = REPO / "notebooks" / "assignments"
SAMPLE = "05_sfg.ipynb"   # three coded exercises in one notebook
ALL = os.environ.get("MTL_GRADE_ALL") == "1"


def notebook(*cells: tuple[str, str]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                for kind, src in cells]
    return nb


def write(path: Path, nb: nbformat.NotebookNode) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


GOOD_VERDICT = '''
def good(a_mean, a_std, b_mean, b_std, higher_is_better=True):
    gap = (a_mean - b_mean) if higher_is_better else (b_mean - a_mean)
    return "held" if gap > a_std + b_std else "reversed" if gap < -(a_std + b_std) else "within the spread"
'''

EXERCISES = '''# 9. A chapter for the test

```{exercise} Written first
:label: ex-written
Explain.
```
```{exercise} Not numbered
:label: ex-unnumbered
:nonumber:
Aside.
```
```{exercise} The verdict
:label: ex-verdict-test
Write it.
```'''


def test_exercises_are_numbered_per_chapter_and_found_above_their_checks():
    nb = notebook(("md", EXERCISES), ("code", "x = 1"), ("md", "```{exercise} Another\n:label: ex-last\n```"))
    where = grade.exercises_by_cell(nb, Path("anything.ipynb"))
    assert (where[0].number, where[0].label) == ("9.2", "ex-verdict-test")
    assert where[1] == where[0] and (where[2].number, where[2].label) == ("9.3", "ex-last")
    untitled = notebook(("md", "```{exercise} E\n:label: e\n```"))
    assert grade.exercises_by_cell(untitled, Path("07_balancing.ipynb"))[0].number == "7.1"
    calls = notebook(("code", "r = mu.checks.check_dwa(f)\nmu.checks.check_miou (g)"), ("code", "checks.check_dwa(h)"))
    assert grade.checks_called(calls) == {"check_dwa": 0, "check_miou": 0}
    chapters = REPO / "notebooks"
    assert grade.reference_for(Path("alice/05_sfg.ipynb"), chapters) == chapters / "05_sfg.ipynb"
    assert grade.reference_for(Path("05_sfg_alice.ipynb"), chapters) == chapters / "05_sfg.ipynb"
    assert grade.reference_for(Path("alice.ipynb"), chapters) is None


def test_checks_are_recorded_however_called_and_failures_do_not_stop_the_notebook(tmp_path):
    nb = write(tmp_path / "sub" / "09_test.ipynb", notebook(
        ("md", EXERCISES),
        ("code", "import mtlutils as mu\nfrom mtlutils.checks import check_verdict\nimport mtlutils.checks as C"),
        ("code", GOOD_VERDICT + "r = mu.checks.check_verdict(good, verbose=False)   # silent: still recorded"),
        ("code", "raise ValueError('a broken cell')"),
        ("code", "check_verdict(lambda *a, **k: 'held')   # imported by name: recorded, fails"),
        ("code", "def shared(trunk, heads, x):\n    f = trunk(x)\n    return {n: h(f) for n, h in heads.items()}\n"
                 "C.check_shared_forward(shared)"),
    ))
    reference = write(tmp_path / "ref" / "09_test.ipynb", notebook(("md", EXERCISES), ("code", "mu.checks.check_dwa(f)")))
    graded = grade.grade_notebook(nb, "sub/09_test.ipynb", timeout_s=300, reference=reference)
    rows = [(r["exercise"], r["label"], r["check"], r["status"]) for r in graded.rows]
    assert rows == [
        ("Exercise 9.2", "ex-verdict-test", "check_verdict", "PASS"),
        ("Exercise 9.2", "ex-verdict-test", "check_verdict", "FAIL"),
        # check_shared_forward calls check_close inside: one result, not two
        ("Exercise 9.2", "ex-verdict-test", "check_shared_forward", "PASS"),
        # in the reference chapter, never called here
        ("Exercise 9.2", "ex-verdict-test", "check_dwa", "NOT RUN"),
    ], graded.rows
    shared = graded.rows[2]
    assert shared["error"] == "0" and shared["tolerance"] == "1e-10" and shared["message"] == "matches the reference"
    assert "'reversed'" in graded.rows[1]["message"] or "expected" in graded.rows[1]["message"]
    assert graded.status == "ERRORS" and "cell 3: ValueError: a broken cell" in graded.message


def test_crash_timeout_and_unreadable_files_are_recorded_and_grading_goes_on(tmp_path, capsys):
    subs = tmp_path / "subs"
    write(subs / "a_crash.ipynb", notebook(("code", "import os\nos._exit(3)"), ("code", "mu.checks.check_miou(f)")))
    write(subs / "b_slow.ipynb", notebook(("code", "import time\ntime.sleep(600)")))
    (subs / "c_broken.ipynb").write_text("{not json")
    write(subs / ".ipynb_checkpoints" / "a_crash-checkpoint.ipynb", notebook(("code", "1")))
    out = tmp_path / "grades.csv"
    rows = grade.grade(subs, out, timeout_s=20, reference_dir=None)
    with out.open(newline="", encoding="utf-8") as handle:
        assert list(csv.DictReader(handle)) == [{k: str(v) for k, v in row.items()} for row in rows]
    status = {(r["notebook"], r["check"]): r for r in rows}
    assert set(status) == {("a_crash.ipynb", "check_miou"), ("a_crash.ipynb", "(notebook)"),
                           ("b_slow.ipynb", "(notebook)"), ("c_broken.ipynb", "(notebook)")}
    assert status["a_crash.ipynb", "(notebook)"]["status"] == "CRASH"
    assert status["a_crash.ipynb", "check_miou"]["status"] == "NOT RUN"
    assert "crashed" in status["a_crash.ipynb", "check_miou"]["message"]
    slow = status["b_slow.ipynb", "(notebook)"]
    assert slow["status"] == "TIMEOUT" and float(slow["seconds"]) < 120
    assert status["c_broken.ipynb", "(notebook)"]["status"] == "CRASH"
    assert "not a readable notebook" in status["c_broken.ipynb", "(notebook)"]["message"]
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("grade: 3 notebooks (1 timeout, 2 crash); 1 checks: 0 PASS, 0 FAIL, 1 NOT RUN")


def test_nothing_to_grade_is_an_error(tmp_path, capsys):
    assert grade.main([str(tmp_path)]) == 2
    assert "no notebooks" in capsys.readouterr().err


def _grade_copies(paths: list[Path], folder: Path, out: Path) -> list[dict[str, str]]:
    """Grade copies of ``paths`` (graded where they are, the kernels would run in the repository's folders)."""
    folder.mkdir()
    for path in paths:
        (folder / path.name).write_bytes(path.read_bytes())
    grade.grade(folder, out, timeout_s=900)
    with out.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _expected_checks(paths: list[Path]) -> int:
    return sum(len(grade.checks_called(json.loads(p.read_text(encoding="utf-8")))) for p in paths)


def _assert_all(rows: list[dict[str, str]], status: str, paths: list[Path]) -> None:
    checks = [r for r in rows if r["check"] != grade.NOTEBOOK_ROW]
    assert checks and all(r["status"] == status for r in checks), [(r["notebook"], r["check"], r["status"],
                                                                    r["message"]) for r in checks]
    assert len(checks) == _expected_checks(paths)
    assert all(r["exercise"].startswith("Exercise ") and r["label"] for r in checks)
    notebooks = [r for r in rows if r["check"] == grade.NOTEBOOK_ROW]
    assert len(notebooks) == len(paths) and all(r["status"] in ("RAN", "ERRORS") for r in notebooks), notebooks


@pytest.mark.parametrize("chapters", [
    pytest.param([REPO / "notebooks" / SAMPLE], id=SAMPLE),
    pytest.param(CHAPTERS, id="all-chapters",
                 marks=pytest.mark.skipif(not ALL, reason="every chapter takes minutes: MTL_GRADE_ALL=1")),
])
def test_student_notebooks_as_shipped_fail_every_check(chapters, tmp_path):
    students = [STUDENT / path.name for path in chapters]
    rows = _grade_copies(students, tmp_path / "students", tmp_path / "grades.csv")
    _assert_all(rows, "FAIL", students)
    assert all("not implemented yet" in r["message"] for r in rows if r["check"] != grade.NOTEBOOK_ROW)


@pytest.mark.parametrize("chapters", [
    pytest.param([REPO / "notebooks" / SAMPLE], id=SAMPLE),
    pytest.param(CHAPTERS, id="all-chapters",
                 marks=pytest.mark.skipif(not ALL, reason="every chapter takes minutes: MTL_GRADE_ALL=1")),
])
def test_chapters_with_their_solutions_pass_every_check(chapters, tmp_path):
    rows = _grade_copies(chapters, tmp_path / "solutions", tmp_path / "grades.csv")
    _assert_all(rows, "PASS", chapters)
