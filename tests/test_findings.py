"""Findings are computed, never typed: every chapter states what its runs showed in Markdown cells tagged
``findings``, and no such cell contains a literal number. Numbers and rankings reach the prose through
myst-nb ``glue`` roles (``{glue:text}`name:.1f```) or through Markdown that a code cell prints; both are
computed when the chapter runs, so they cannot go stale.

Allowed in a findings cell besides glued values: maths (``$...$``), inline code, cross-references
(``{doc}``, ``{ref}``, ``{numref}``, ``{cite}`` ...), and numbers that name things rather than measure them:
"chapter 6", "Table 2", "Eq. 3", "Section 3.2", "Exercise 4.1", "Figure 2" and a year in a citation.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

CHAPTERS = sorted((Path(__file__).parents[1] / "notebooks").glob("0*.ipynb"))
_STRIP = [
    r"\{glue(?::\w+)?\}`[^`]*`",                 # glued values
    r"\{(?:doc|ref|numref|eq|cite(?::\w+)?|download|term)\}`[^`]*`",   # cross-references
    r"\$\$.*?\$\$", r"\$[^$\n]+\$",              # maths
    r"```.*?```", r"`[^`\n]*`",                   # code
    r"\((?:[^()]*?\d{4}[a-z]?)\)",                # (Author, 2019) citations
    r"\b(?:chapter|chapters|Chapter|Table|Tables|table|Eq\.|Eqs\.|equation|Equation|Section|section|§|"
    r"Exercise|exercise|Figure|figure|Fig\.|Alg\.|Algorithm|Appendix|part|Part|step)\s*[\d.,–-]+(?:\s*(?:and|,)\s*[\d.]+)*",
    r"\b\d{4}\b(?=[a-z]?\))",                     # a year closing a citation
    r"\[[^\]]*\]\([^)]*\)",                        # link targets keep their text out
]


def findings_cells(path: Path) -> list[tuple[int, str]]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return [(i, "".join(c["source"])) for i, c in enumerate(nb["cells"])
            if c["cell_type"] == "markdown" and "findings" in c.get("metadata", {}).get("tags", [])]


def literal_numbers(text: str) -> list[str]:
    for pattern in _STRIP:
        text = re.sub(pattern, " ", text, flags=re.DOTALL)
    return re.findall(r"[-+]?\d[\d.,]*\s*%?", text)


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_every_chapter_states_its_findings_in_tagged_cells(path):
    assert findings_cells(path), f"{path.name}: no Markdown cell tagged 'findings'"


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_findings_cells_hold_no_literal_number(path):
    bad = {i: found for i, text in findings_cells(path) if (found := literal_numbers(text))}
    assert not bad, f"{path.name}: literal numbers in findings cells (cell: numbers): {bad}"


def test_the_rule_catches_a_typed_number_and_lets_computed_ones_through():
    assert literal_numbers("MTAN gains 9.3 % over single-task") == ["9.3 %"]
    assert literal_numbers("MTAN gains {glue:text}`mtan_gain:.1f` % (chapter 6, Table 2, Eq. 3)") == []
    assert literal_numbers("as $\\alpha_1 = 0.9$ in `alpha_init=(0.9, 0.1)` (Misra et al., 2016)") == []
