"""The prerequisites page is in the book; the instructors' page covers every exercise of chapters 1-7."""
import json
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
LABEL = re.compile(r"^(?:```+|:::+)\{exercise(?:-start)?\}[^\n]*\n(?:[ \t]*:[\w-]+:[^\n]*\n)*", re.MULTILINE)


def exercise_labels(path: Path) -> list[str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    labels = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        for match in LABEL.finditer(text):
            found = re.search(r":label:\s*(\S+)", match.group(0))
            assert found, f"{path.name}: an exercise without a label: {match.group(0)[:60]!r}"
            labels.append(found.group(1))
    return labels


def test_prerequisites_page_is_under_getting_started():
    toc = yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf-8"))
    getting_started = next(part for part in toc["parts"] if part["caption"] == "Getting started")
    assert {"file": "book/prerequisites"} in getting_started["chapters"]
    text = (REPO / "book" / "prerequisites.md").read_text(encoding="utf-8")
    for topic in ("torch.autograd.Function", "KL divergence", "Gumbel-max", "simplex"):
        assert topic in text, topic


def test_instructors_page_covers_every_exercise_of_chapters_1_to_6():
    page = (REPO / "book" / "instructors.md").read_text(encoding="utf-8")
    chapters = [p for p in sorted((REPO / "notebooks").glob("0[1-6]_*.ipynb"))]
    assert len(chapters) == 6
    missing = []
    for chapter in chapters:
        labels = exercise_labels(chapter)
        assert labels, f"{chapter.name} has no exercise"
        for label in labels:
            # each exercise appears in its chapter's summary table and in its own paragraph
            if page.count(f"{{numref}}`{label}`") < 2:
                missing.append(f"{chapter.stem}: {label}")
    assert not missing, f"exercises without an entry (table row and paragraph) on book/instructors.md: {missing}"
    assert "## Chapter 7: Balancing the tasks" in page
    assert "### Project A" in page and "### Project B" in page


def test_instructors_page_covers_every_exercise_of_chapter_7():
    # chapter 7 numbers its exercises by hand (":nonumber:"), so the page cites them as {ref}`7.1 <label>`
    page = (REPO / "book" / "instructors.md").read_text(encoding="utf-8")
    (chapter,) = sorted((REPO / "notebooks").glob("07_*.ipynb"))
    labels = exercise_labels(chapter)
    assert labels, f"{chapter.name} has no exercise"
    missing = [label for label in labels
               if len(re.findall(r"\{ref\}`[^`<]*<" + re.escape(label) + r">`", page)) < 2]
    assert not missing, f"chapter 7 exercises without a table row and a paragraph on book/instructors.md: {missing}"
