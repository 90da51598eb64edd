import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mtlutils import plots  # noqa: E402
from mtlutils.train import History  # noqa: E402


def history(offset: float) -> History:
    rows = [{"epoch": float(e), "weight/a": 1.0, "train/a/loss": 1.0 / e + offset,
             "val/a/loss": 1.2 / e + offset, "val/a/accuracy": 50.0 + e} for e in (1, 2, 3)]
    return History(rows=rows, seconds=[0.1] * 3)


def test_histories_frame_labels_each_run():
    frame = plots.histories_frame({"x": history(0.0), "y": history(0.5)})
    assert set(frame["model"]) == {"x", "y"} and len(frame) == 2 * 3 * 4
    with pytest.raises(ValueError, match="no histories"):
        plots.histories_frame({})


def test_learning_curves_have_labelled_axes():
    grid = plots.plot_learning_curves({"x": history(0.0)}, quantity="loss", ylabel="cross-entropy")
    ax = grid.axes.flat[0]
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "cross-entropy" and ax.get_title() == "task: a"
    assert len(ax.lines) >= 2  # train and val
    plt.close("all")
    with pytest.raises(ValueError, match="no 'mae' values"):
        plots.plot_learning_curves({"x": history(0.0)}, quantity="mae")


def test_image_grid_and_diagrams_draw():
    fig = plots.show_images(torch.rand(5, 1, 8, 12), titles=list("abcde"), ncols=3)
    assert len(fig.axes) == 6 and fig.axes[0].get_title() == "a"
    fig = plots.sharing_diagrams()
    assert [ax.get_title().split("\n")[0] for ax in fig.axes] == [
        "single-task networks", "hard parameter sharing", "soft parameter sharing"]
    plt.close("all")
