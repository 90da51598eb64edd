"""The chapters' code fits the rendered page: no code-cell line is over 88 characters.

Only the chapters directly under ``notebooks/`` are checked: the student versions in
``notebooks/assignments/`` are generated from them (``make assignments``) and inherit
their wrapping. The package ``mtlutils/`` is not checked (many of its lines are longer).
"""
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((REPO / "notebooks").glob("*.ipynb"))
MAX_WIDTH = 88


def long_lines(notebook: dict, width: int = MAX_WIDTH) -> list[tuple[int, int, int]]:
    """``(cell index, line number from 1, length)`` of every code-cell line longer
    than ``width``."""
    found = []
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = cell["source"]
        source = "".join(source) if isinstance(source, list) else source
        for number, line in enumerate(source.splitlines(), start=1):
            if len(line) > width:
                found.append((index, number, len(line)))
    return found


def test_there_are_chapters():
    assert CHAPTERS


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_code_lines_fit_in_88_columns(chapter):
    found = long_lines(json.loads(chapter.read_text(encoding="utf-8")))
    report = "\n".join(
        f"  {chapter.name} cell {index} line {number}: {length} characters"
        for index, number, length in found)
    assert not found, (f"{len(found)} code line(s) longer than {MAX_WIDTH} characters "
                       f"(wrap them):\n{report}")


def test_the_rule_names_cell_line_and_length():
    nb = {"cells": [{"cell_type": "markdown", "source": "x" * 200},
                    {"cell_type": "code",
                     "source": ["ok = 1\n", "y = '" + "z" * 90 + "'"]},
                    {"cell_type": "code", "source": "a" * MAX_WIDTH}]}
    assert long_lines(nb) == [(1, 2, 96)]
