"""The coursework mechanism: student versions, stubs, hidden tests, no solution leaks, checks."""
import json
import re
from pathlib import Path

import pytest
import torch

from mtlutils import assignments, checks
from mtlutils.assignments import MarkerError, solution_regions, strip_code, student_version

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((REPO / "notebooks").glob("*.ipynb"))


def load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_strip_code_stubs_solutions_keeps_indentation_and_drops_hidden_tests():
    code = ("def f(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION\n"
            "r = check(f)\n### BEGIN HIDDEN TESTS\nassert r.passed\n### END HIDDEN TESTS\n")
    out = strip_code(code)
    assert "return 2 * x" not in out and "assert r.passed" not in out
    assert "    # YOUR CODE HERE\n    raise NotImplementedError(" in out
    assert out.startswith("def f(x):") and "r = check(f)" in out
    namespace = {}
    exec(out.replace("r = check(f)", ""), namespace)
    with pytest.raises(NotImplementedError):
        namespace["f"](1)


@pytest.mark.parametrize("bad", ["### BEGIN SOLUTION\nx = 1\n",
                                 "### END SOLUTION\n",
                                 "### BEGIN SOLUTION\n### BEGIN HIDDEN TESTS\n### END HIDDEN TESTS\n### END SOLUTION\n",
                                 "### BEGIN HIDDEN TESTS\n### END SOLUTION\n"])
def test_unbalanced_markers_are_errors(bad):
    with pytest.raises(MarkerError):
        strip_code(bad, where="test")


def test_markdown_solutions_and_tagged_cells_are_removed_other_text_kept():
    nb = {"cells": [
        {"cell_type": "markdown", "metadata": {}, "source": "```{exercise} E\n:label: e\nDo it.\n```\n\n"
                                                          "```{solution} e\n:class: dropdown\nSECRET ANSWER\n```\nafter"},
        {"cell_type": "markdown", "metadata": {}, "source": "## Keep this heading\n\n```{solution-start} e\n"
                                                          ":class: dropdown\n```\nSECRET INTRO"},
        {"cell_type": "code", "metadata": {}, "source": "def f():\n    ### BEGIN SOLUTION\n    return 'SECRET'\n"
                                                      "    ### END SOLUTION", "outputs": [{"output_type": "stream"}],
         "execution_count": 3},
        {"cell_type": "code", "metadata": {}, "source": "print('SECRET DEMO')", "outputs": [], "execution_count": 4},
        {"cell_type": "markdown", "metadata": {}, "source": "SECRET EXPLANATION"},
        {"cell_type": "markdown", "metadata": {"tags": ["solution"]}, "source": "SECRET TEXT"},
        {"cell_type": "markdown", "metadata": {}, "source": ":::{solution-end}\n:::\nKeep the rest"},
        {"cell_type": "code", "metadata": {}, "source": "x = 1", "outputs": [], "execution_count": 5},
    ], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    out = student_version(nb)
    text = json.dumps(out)
    assert "SECRET" not in text and "solution-start" not in text and "solution-end" not in text
    for kept in ("Do it.", "after", "Keep this heading", "Keep the rest", "x = 1", "raise NotImplementedError"):
        assert kept in text, kept
    code = [c for c in out["cells"] if c["cell_type"] == "code"]
    assert len(code) == 2 and code[0]["outputs"] == [] and code[0]["execution_count"] is None
    assert nb["cells"][2]["outputs"], "the input notebook must not be changed"
    with pytest.raises(MarkerError, match="no {solution-end}"):
        student_version({"cells": nb["cells"][:3], "metadata": {}})


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_no_solution_text_leaks_into_the_student_version(chapter):
    nb = load(chapter)
    student = json.dumps(student_version(nb, chapter.stem))
    regions = solution_regions(nb)
    assert regions, f"{chapter.name} has no coding exercise"
    for region in regions:
        for line in region.splitlines():
            code = line.strip()
            if len(code) > 12:  # trivial lines such as 'return out' may legitimately appear elsewhere
                assert json.dumps(code)[1:-1] not in student, f"solution line leaks: {code!r}"
    assert "BEGIN HIDDEN TESTS" not in student and "{solution-start}" not in student


def _exercise_pairs(nb):
    """(function definition cell source, check function name, argument) for every check call."""
    cells = [source(c) for c in nb["cells"] if c["cell_type"] == "code"]
    pairs = []
    for i, src in enumerate(cells):
        for name, arg in re.findall(r"checks\.(check_\w+)\((\w+)", src):
            definition = next(c for c in reversed(cells[:i]) if re.search(rf"^def {arg}\(", c, re.M))
            pairs.append((definition, name, arg))
    return pairs


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_each_check_passes_on_the_solution_and_fails_on_the_stub(chapter):
    nb = load(chapter)
    pairs = _exercise_pairs(nb)
    assert pairs, f"{chapter.name} has no checked exercise"
    for definition, check_name, arg in pairs:
        check = getattr(checks, check_name)
        solved, stub = {}, {}
        exec(compile(definition, f"{chapter.stem}:solution", "exec"), solved)
        exec(compile(strip_code(definition), f"{chapter.stem}:stub", "exec"), stub)
        assert check(solved[arg], verbose=False).passed, f"{check_name} fails on the chapter's solution"
        result = check(stub[arg], verbose=False)
        assert not result.passed and "not implemented" in result.message


def test_committed_student_versions_are_up_to_date(tmp_path):
    written = assignments.generate(CHAPTERS, tmp_path)
    for path in written:
        committed = REPO / "notebooks" / "assignments" / path.name
        assert committed.exists(), f"run 'make assignments': {committed} is missing"
        assert committed.read_text(encoding="utf-8") == path.read_text(encoding="utf-8"), \
            f"run 'make assignments': {committed.name} is older than its chapter"
