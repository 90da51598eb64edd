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
    """(definition cell source, check function name, argument) for every check call; the argument is a
    function or a class (an autograd.Function or nn.Module the chapter builds from scratch)."""
    cells = [source(c) for c in nb["cells"] if c["cell_type"] == "code"]
    pairs = []
    for i, src in enumerate(cells):
        for name, arg in re.findall(r"checks\.(check_\w+)\((\w+)", src):
            definition = next(c for c in reversed(cells[:i]) if re.search(rf"^(?:def|class) {arg}\b", c, re.M))
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


# --- leaks: anything marker- or directive-like that survives stripping is an error naming the cell -----------

def _nb(*cells):
    out = []
    for kind, src, *tags in cells:
        cell = {"cell_type": kind, "metadata": {"tags": tags[0]} if tags else {}, "source": src}
        if kind == "code":
            cell.update(outputs=[], execution_count=None)
        out.append(cell)
    return {"cells": out, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


CODE_LEAKS = {
    "no space": "def f():\n    ###BEGIN SOLUTION\n    return 'SECRET'\n    ###END SOLUTION\n",
    "two hashes": "def f():\n    ## BEGIN SOLUTION\n    return 'SECRET'\n    ## END SOLUTION\n",
    "lower case": "def f():\n    ### begin solution\n    return 'SECRET'\n    ### end solution\n",
    "trailing comment": "def f():\n    ### BEGIN SOLUTION  # the answer\n    return 'SECRET'\n",
    "hidden tests typo": "r = 1\n### BEGIN HIDDEN TEST\nassert SECRET\n### END HIDDEN TEST\n",
    "underscores": "def f():\n    # BEGIN_SOLUTION\n    return 'SECRET'\n    # END_SOLUTION\n",
}
MARKDOWN_LEAKS = {
    "indented directive": "Text.\n\n  ```{solution} e\n  SECRET\n  ```\n",
    "unclosed fence": "```{solution} e\n:class: dropdown\nSECRET ANSWER\n",
    "space before the brace": "``` {solution} e\nSECRET\n```\n",
    "colon fence with a space": "::: {solution} e\nSECRET\n:::\n",
    "capitalised": "```{Solution} e\nSECRET\n```\n",
    "closed by a longer fence": "```{solution} e\nSECRET\n````\n",
    "marker in prose": "Below, ### BEGIN SOLUTION opens the answer: SECRET",
}


@pytest.mark.parametrize("form", sorted(CODE_LEAKS))
def test_malformed_code_markers_raise_naming_the_cell(form):
    nb = _nb(("markdown", "Intro"), ("code", "import math"), ("code", CODE_LEAKS[form]))
    with pytest.raises(MarkerError, match=r"ch7 cell 2 \(code\): after stripping, line \d+ still looks like"):
        student_version(nb, "ch7")


@pytest.mark.parametrize("form", sorted(MARKDOWN_LEAKS))
def test_malformed_solution_directives_raise_naming_the_cell(form):
    nb = _nb(("markdown", "Intro"), ("markdown", MARKDOWN_LEAKS[form]), ("code", "x = 1"))
    with pytest.raises(MarkerError, match=r"ch7 cell 1 \(markdown\).*looks like a solution marker or directive"):
        student_version(nb, "ch7")


@pytest.mark.parametrize("tag", ["Solution", " SOLUTION ", "solution"])
def test_solution_tags_are_case_insensitive(tag):
    out = json.dumps(student_version(_nb(("markdown", "SECRET", [tag]), ("code", "x = 1"))))
    assert "SECRET" not in out and "x = 1" in out


def test_well_formed_markers_and_ordinary_words_pass():
    nb = _nb(("markdown", "At full resolution the solution of the exercise is below.\n\n"
                          "```{solution} e\nSECRET\n```\n\n:::{solution} f\nSECRET\n:::\nKept: append, legend."),
             ("code", "def f():\n    ### BEGIN SOLUTION\n    return 'SECRET'\n    ### END SOLUTION\n"))
    out = json.dumps(student_version(nb))
    assert "SECRET" not in out and "full resolution" in out and "Kept: append, legend." in out


def test_leftover_markers_lists_lines():
    assert assignments.leftover_markers("a\n## BEGIN SOLUTION\nb\n  ```{solution}\n") == \
        [(2, "## BEGIN SOLUTION"), (4, "  ```{solution}")]
    assert assignments.leftover_markers("resolution; solutions; the end") == []


def test_student_html_check_flags_markers_and_directives(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("student_book", REPO / "tools" / "student_book.py")
    student_book = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(student_book)
    pages = tmp_path / "notebooks"
    pages.mkdir()
    for chapter in CHAPTERS:
        cells = student_version(load(chapter), chapter.stem)["cells"]
        body = "".join(f"<pre>{source(c)}</pre>" for c in cells)
        (pages / f"{chapter.stem}.html").write_text(f"<html><script>var x = 'begin solution';</script>{body}</html>",
                                                    encoding="utf-8")
    assert student_book.check_html(tmp_path) == 0
    page = pages / f"{CHAPTERS[0].stem}.html"
    page.write_text(page.read_text(encoding="utf-8") + "\n<p>``` {solution} ex-1</p>\n<p>## Begin Solution</p>\n",
                    encoding="utf-8")
    assert student_book.check_html(tmp_path) == 1
    out = capsys.readouterr().out
    assert "solution marker or directive in the student page: '``` {solution} ex-1'" in out
    assert "'## Begin Solution'" in out and "2 problems" in out
