import sys

from mtlutils.progress import Progress


def test_disabled_progress_prints_nothing(capsys):
    with Progress(total=10, desc="x", enabled=False) as bar:
        bar.update(3, loss=0.5)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert bar.n == 3


def test_terminal_progress_uses_tqdm_and_shows_postfix(capsys):
    with Progress(total=4, desc="epoch 1/1", enabled=True) as bar:
        for _ in range(4):
            bar.update(1, left=0.25)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "4/4" in err and "left=0.25" in err


def test_text_rendering_is_a_single_line():
    bar = Progress(total=8, desc="run", enabled=False)
    bar.update(4, loss=0.123456)
    text = str(bar)
    assert "\n" not in text and text.startswith("run: ") and " 50% 4/8 " in text and "loss=0.1235" in text
    html = bar._html()
    assert html.count("<div") == 1 and "50%" in html and "width:50.0%" in html


def test_progress_variable_silences_bars(monkeypatch, capsys):
    monkeypatch.setenv("MTL_PROGRESS", "0")
    with Progress(total=2) as bar:
        bar.update(2)
    assert capsys.readouterr().err == ""
