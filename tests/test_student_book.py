"""tools/student_book.py: the student edition's source has no instructors' page, and the check catches one."""
import importlib.util
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("student_book", REPO / "tools" / "student_book.py")
student_book = importlib.util.module_from_spec(_spec)
sys.modules["student_book"] = student_book
_spec.loader.exec_module(student_book)


def toc_files(toc) -> list[str]:
    if isinstance(toc, list):
        return [f for item in toc for f in toc_files(item)]
    if isinstance(toc, dict):
        own = [str(toc["file"])] if "file" in toc else []
        return own + [f for key, value in toc.items() if key != "file" for f in toc_files(value)]
    return []


def test_the_instructors_page_is_in_the_book_but_not_in_the_student_edition(tmp_path):
    full = yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf-8"))
    for page in student_book.INSTRUCTOR_PAGES:
        assert (REPO / f"{page}.md").is_file() and page in toc_files(full)
    src = tmp_path / "student_src"
    student_book.make_source(src)
    toc = yaml.safe_load((src / "_toc.yml").read_text(encoding="utf-8"))
    files = toc_files(toc)
    for page in student_book.INSTRUCTOR_PAGES:
        assert page not in files
        assert not list((src / page).parent.glob(Path(page).name + ".*")), f"{page} copied into the student edition"
    # everything else of the book is still there, and every page of the toc exists (the build needs it)
    assert sorted(files) == sorted(f for f in toc_files(full) if f not in student_book.INSTRUCTOR_PAGES)
    for file in files:
        assert list(src.glob(file + ".*")), f"{file} in the student toc but not in its source"
    # no page of the student edition links to a page it does not have
    for path in list((src / "book").glob("*.md")) + list((src / "notebooks").glob("*.ipynb")):
        text = path.read_text(encoding="utf-8")
        for page in student_book.INSTRUCTOR_PAGES:
            name = Path(page).name
            assert not re.search(rf"(\{{doc\}}`[^`]*{name}`|\]\([^)]*{name}(\.md)?[)#])", text), \
                f"{path.relative_to(src)} links to {page}, which the student edition does not have"


def test_the_check_fails_on_an_instructors_page_in_the_html(tmp_path, capsys):
    html = tmp_path / "html"
    (html / "book").mkdir(parents=True)
    (html / "notebooks").mkdir()
    (html / "book" / "instructors.html").write_text("<p>rubric</p>")
    assert student_book.check_html(html) == 1
    assert "book/instructors: an instructors' page in the student edition" in capsys.readouterr().out
