"""book/_ext/chapter_exercises.py: exercises numbered per chapter ("Exercise 5.1"), on a stand-in env."""
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import yaml

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("chapter_exercises", REPO / "book" / "_ext" / "chapter_exercises.py")
chapter_exercises = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chapter_exercises)


class Title:
    def __init__(self, text):
        self.text = text

    def astext(self):
        return self.text


def fake_env(titles, numbers):
    return SimpleNamespace(titles={doc: Title(t) for doc, t in titles.items()}, toc_fignumbers=numbers)


def test_chapter_number_from_title_then_file_name():
    env = fake_env({"notebooks/05_sfg": "5. Stochastic Filter Groups", "notebooks/07_x": "Balancing the tasks",
                    "book/a": "Chapter 12: More", "book/intro": "Multi-task learning"}, {})
    number = chapter_exercises.chapter_number
    assert number(env, "notebooks/05_sfg") == 5
    assert number(env, "notebooks/07_x") == 7      # no number in the title: the file name's
    assert number(env, "book/a") == 12
    assert number(env, "book/intro") is None


def test_exercises_restart_at_one_in_each_chapter_in_page_order():
    numbers = {
        "notebooks/04_mtan": {"exercise": {"ex-a": (10,), "ex-b": (11,)}, "figure": {"f": (3,)}},
        "notebooks/05_sfg": {"exercise": {"ex-c": (12,), "ex-d": (13,), "ex-e": (14,)}},
        "book/intro": {"exercise": {"ex-z": (1,)}},
    }
    env = fake_env({"notebooks/04_mtan": "4. MTAN", "notebooks/05_sfg": "5. SFG", "book/intro": "Intro"}, numbers)
    changed = chapter_exercises.renumber_exercises(None, env)
    assert numbers["notebooks/04_mtan"]["exercise"] == {"ex-a": (4, 1), "ex-b": (4, 2)}
    assert numbers["notebooks/05_sfg"]["exercise"] == {"ex-c": (5, 1), "ex-d": (5, 2), "ex-e": (5, 3)}
    assert numbers["notebooks/04_mtan"]["figure"] == {"f": (3,)}      # other numbered things untouched
    assert numbers["book/intro"]["exercise"] == {"ex-z": (1,)}        # not a chapter: Sphinx's number
    assert sorted(changed) == ["notebooks/04_mtan", "notebooks/05_sfg"]
    assert chapter_exercises.renumber_exercises(None, env) == []      # idempotent


def test_the_book_loads_the_extension():
    config = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))["sphinx"]
    assert config["local_extensions"] == {"chapter_exercises": "book/_ext"}
    # sphinx.config.extensions replaces Jupyter Book's generated list: the extension must be in it too
    assert "chapter_exercises" in config["config"]["extensions"]
