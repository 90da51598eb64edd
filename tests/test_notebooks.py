"""Hygiene of the chapters: stored without outputs, the standard kernel, one title, tidy markers."""
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((REPO / "notebooks").glob("*.ipynb"))
STUDENT = sorted((REPO / "notebooks" / "assignments").glob("*.ipynb"))


def test_there_are_chapters_and_all_are_in_the_toc():
    toc = (REPO / "_toc.yml").read_text()
    assert CHAPTERS
    for path in CHAPTERS:
        assert f"notebooks/{path.stem}" in toc, f"{path.name} is not in _toc.yml"


@pytest.mark.parametrize("path", CHAPTERS + STUDENT, ids=lambda p: p.name)
def test_stored_without_outputs_with_python3_kernel(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name} has stored outputs"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_one_title_and_profile_read_in_one_cell(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    text = lambda c: "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
    titles = [line for c in nb["cells"] if c["cell_type"] == "markdown" for line in text(c).splitlines()
              if line.startswith("# ")]
    assert len(titles) == 1, titles
    readers = [c for c in nb["cells"] if c["cell_type"] == "code" and "by_profile(" in text(c)]
    assert len(readers) == 1, "a chapter reads the profile once, in one cell"
