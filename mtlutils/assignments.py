"""Student versions of the chapters: ``python -m mtlutils.assignments`` (``make assignments``).

A chapter is the solution notebook. Its markers:

* code between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` becomes a stub
  (``# YOUR CODE HERE`` + ``raise NotImplementedError``) at the marker's indentation;
* code between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` is removed;
* markdown cells that open or close a gated solution (``{solution-start}`` / ``{solution-end}``) are
  removed, and so are ``{solution}`` directive blocks inside markdown cells and cells tagged
  ``solution``;
* all outputs and execution counts are cleared.

Markers are exact: after stripping, any text left in a student cell that looks like a marker or a
solution directive (case-insensitive: ``###BEGIN SOLUTION``, ``## begin solution``, ``END HIDDEN TESTS``,
``{solution}`` indented, after a space (```` ``` {solution} ````) or with an unclosed fence, a cell tagged
``Solution``) raises :class:`MarkerError` naming the chapter, the cell and the line, so that a typo in a
chapter can never leak a solution into the student version.

The result goes to ``notebooks/assignments/<chapter>.ipynb``, never edited by hand.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
from pathlib import Path
from typing import Any

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
STUB = 'raise NotImplementedError("exercise: replace this line with your code")'
# a sphinx-exercise solution directive: `{solution}`, or the gates `{solution-start}` / `{solution-end}`
# around solution cells; the opening fence, its options and body, then the same fence closing it
SOLUTION_BLOCK = re.compile(r"^(?P<fence>```+|:::+)\{solution(?P<gate>-start|-end)?\}.*?^(?P=fence)[ \t]*$\n?",
                            re.MULTILINE | re.DOTALL)
# what a marker or directive looks like, loosely: whatever of it survives stripping is a leak
MARKER_LIKE = re.compile(r"\b(?:begin|end)[ \t_-]*(?:solution|hidden[ \t_-]*tests?)\b", re.IGNORECASE)
DIRECTIVE_LIKE = re.compile(r"\{\s*solution\b[^}\n]*\}", re.IGNORECASE)
REPO = Path(__file__).resolve().parents[1]


class MarkerError(ValueError):
    """Unbalanced, nested or malformed solution/hidden-test markers or solution directives in a chapter."""


def leftover_markers(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of every line of ``text`` that looks like a solution or hidden-test marker
    or a solution directive (case-insensitive); empty for a clean student cell."""
    return [(number, line) for number, line in enumerate(text.splitlines(), start=1)
            if MARKER_LIKE.search(line) or DIRECTIVE_LIKE.search(line)]


def _check_leftovers(source: str, where: str) -> None:
    """Raise :class:`MarkerError` if stripped ``source`` still holds something marker- or directive-like."""
    found = leftover_markers(source)
    if not found:
        return
    number, line = found[0]
    if DIRECTIVE_LIKE.search(line):
        fix = ("a solution directive must open at the start of a line with ```{solution} or :::{solution} "
               "(no indentation, no space before the brace) and be closed by the same fence")
    else:
        fix = (f"markers must be exactly {BEGIN_SOLUTION!r} / {END_SOLUTION!r} or {BEGIN_HIDDEN!r} / "
               f"{END_HIDDEN!r}, each alone on its line")
    more = f" (and {len(found) - 1} more such lines)" if len(found) > 1 else ""
    raise MarkerError(f"{where}: after stripping, line {number} still looks like a solution marker or "
                      f"directive: {line.strip()!r}{more}; it would leak into the student version. Fix the "
                      f"chapter: {fix}.")


def _is_solution_tag(tag: Any) -> bool:
    return isinstance(tag, str) and tag.strip().lower() == "solution"


def _source(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def strip_code(source: str, where: str = "cell") -> str:
    """Replace solution regions by stubs and drop hidden-test regions of one code cell's source."""
    out: list[str] = []
    state = None  # None, "solution" or "hidden"
    for line in source.splitlines(keepends=True):
        marker = line.strip()
        if marker in (BEGIN_SOLUTION, BEGIN_HIDDEN):
            if state is not None:
                raise MarkerError(f"{where}: {marker!r} inside an open {state} region")
            state = "solution" if marker == BEGIN_SOLUTION else "hidden"
            if state == "solution":
                indent = line[: len(line) - len(line.lstrip())]
                out.append(f"{indent}# YOUR CODE HERE\n{indent}{STUB}\n")
            continue
        if marker in (END_SOLUTION, END_HIDDEN):
            expected = "solution" if marker == END_SOLUTION else "hidden"
            if state != expected:
                raise MarkerError(f"{where}: {marker!r} without a matching BEGIN")
            state = None
            continue
        if state is None:
            out.append(line)
    if state is not None:
        raise MarkerError(f"{where}: {state} region not closed")
    return "".join(out).rstrip("\n")


def _strip_markdown(source: str, inside_gate: bool) -> tuple[str, bool]:
    """Remove solution directives from one markdown cell; text between a start and an end gate goes too.

    Returns the kept text and whether a gated solution is still open after this cell.
    """
    kept, pos = [], 0
    for match in SOLUTION_BLOCK.finditer(source):
        if not inside_gate:
            kept.append(source[pos:match.start()])
        gate = match.group("gate")
        if gate == "-start":
            inside_gate = True
        elif gate == "-end":
            inside_gate = False
        pos = match.end()
    if not inside_gate:
        kept.append(source[pos:])
    return "".join(kept).strip("\n"), inside_gate


def student_version(notebook: dict[str, Any], name: str = "chapter") -> dict[str, Any]:
    """The student version of a chapter notebook (a new dict; the input is not changed).

    Inside a gated solution (between ``{solution-start}`` and ``{solution-end}``) markdown is removed,
    code cells with solution markers are kept as stubs, and code cells without markers are removed.
    """
    nb = copy.deepcopy(notebook)
    cells = []
    inside_gate = False
    for index, cell in enumerate(nb["cells"]):
        source = _source(cell)
        where = f"{name} cell {index}"
        tags = cell.get("metadata", {}).get("tags", [])
        if any(_is_solution_tag(tag) for tag in tags):
            continue
        if cell["cell_type"] == "markdown":
            source, inside_gate = _strip_markdown(source, inside_gate)
        elif cell["cell_type"] == "code":
            if inside_gate and BEGIN_SOLUTION not in source:
                continue
            source = strip_code(source, where=where)
            cell["outputs"] = []
            cell["execution_count"] = None
        if not source.strip():
            continue
        _check_leftovers(source, f"{where} ({cell['cell_type']})")
        cell["source"] = source
        cells.append(cell)
    if inside_gate:
        raise MarkerError(f"{name}: a {{solution-start}} has no {{solution-end}}")
    header = {"cell_type": "markdown", "metadata": {}, "id": "student-version-header",
              "source": f"*Student version of `{name}.ipynb`, generated by `make assignments`: do not edit; "
                        f"edit the chapter and regenerate. Fill in every `# YOUR CODE HERE` and run the "
                        f"`mtlutils.checks` cell after it.*"}
    nb["cells"] = [header] + cells
    return nb


def solution_regions(notebook: dict[str, Any]) -> list[str]:
    """The text of every solution region of a chapter (for leak tests)."""
    regions = []
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        inside, lines = False, []
        for line in _source(cell).splitlines():
            if line.strip() == BEGIN_SOLUTION:
                inside, lines = True, []
            elif line.strip() == END_SOLUTION:
                inside = False
                regions.append("\n".join(lines))
            elif inside:
                lines.append(line)
    return regions


def generate(chapters: list[Path] | None = None, out_dir: Path | None = None) -> list[Path]:
    """Write the student version of every chapter (default: ``notebooks/*.ipynb``); return the paths."""
    chapters = chapters if chapters is not None else sorted((REPO / "notebooks").glob("*.ipynb"))
    out_dir = out_dir or REPO / "notebooks" / "assignments"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in chapters:
        notebook = json.loads(path.read_text(encoding="utf-8"))
        student = student_version(notebook, name=path.stem)
        target = out_dir / path.name
        target.write_text(json.dumps(student, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", type=Path, help="chapter notebooks (default: notebooks/*.ipynb)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: notebooks/assignments)")
    args = parser.parse_args(argv)
    for path in generate(args.chapters or None, args.out):
        print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


if __name__ == "__main__":
    main()
