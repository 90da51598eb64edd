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


def test_class_colours_legend_and_segmentation_maps():
    import numpy as np

    colours = plots.class_colours(7)
    assert len(colours) == 7 and len(set(colours)) == 7
    fig, ax = plt.subplots()
    labels = torch.tensor([[0, 1], [6, -1]])
    plots.show_segmentation(ax, labels, 7)
    shown = ax.images[0].get_array()
    assert np.allclose(shown[0, 0], colours[0]) and np.allclose(shown[1, 1], (0, 0, 0, 1))  # void is black
    legend = plots.add_class_legend(fig, [f"c{i}" for i in range(7)])
    assert [t.get_text() for t in legend.get_texts()][-1] == "void (no label)" and len(legend.get_texts()) == 8
    plt.close("all")


def test_point_plot_marks_means_spreads_and_diverged_groups():
    import math

    import pandas as pd

    frame = pd.DataFrame({"model": ["a"] * 3 + ["b"] * 3, "delta": [1.0, 2.0, 3.0, math.nan, math.nan, math.nan]})
    ax = plots.plot_points(frame, "model", "delta", ylabel="Δ_MTL (%)", labels={"a": "model a"})
    assert ax.get_ylabel() == "Δ_MTL (%)" and [t.get_text() for t in ax.get_xticklabels()] == ["model a", "b"]
    assert any(t.get_text() == "diverged" for t in ax.texts)
    frame["w"] = ["x", "y", "x", "y", "x", "y"]
    ax = plots.plot_points(frame, "model", "delta", hue="w")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["x", "y"]
    plt.close("all")


def test_paper_diagrams_draw():
    assert len(plots.cross_stitch_unit_diagram().axes) == 1
    assert "encoder block" in plots.mtan_block_diagram().axes[0].get_title()
    fig = plots.mtan_diagram(("seg", "depth"))
    assert sum(t.get_text() == "⊙" for t in fig.axes[0].texts) == 2 * 10
    plt.close("all")


def test_point_plot_legend_names_every_hue_even_if_absent_from_the_first_group():
    import pandas as pd

    frame = pd.DataFrame({"model": ["a", "b", "b"], "w": ["x", "x", "y"], "d": [1.0, 2.0, 3.0]})
    ax = plots.plot_points(frame, "model", "d", hue="w")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["x", "y"]


def _dense_sample(classes: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    seg = torch.randint(-1, classes, (8, 16), generator=gen)
    depth = 1 + 4 * torch.rand(1, 8, 16, generator=gen)
    depth[0, seg < 0] = 0
    normal = torch.nn.functional.normalize(torch.randn(3, 8, 16, generator=gen), dim=0)
    normal[:, seg < 0] = 0
    return {"image": torch.rand(3, 8, 16, generator=gen), "seg": seg, "depth": depth, "normal": normal}


def test_predictions_beside_truth_with_a_class_legend():
    names = [f"class {i}" for i in range(7)]
    truth = [_dense_sample(7, s) for s in range(2)]
    pred = [_dense_sample(7, s + 10) for s in range(2)]
    fig = plots.show_predictions(truth, pred, names)
    titles = [ax.get_title() for ax in fig.axes[:7]]
    assert titles == ["image", "seg: truth", "seg: prediction", "depth: truth", "depth: prediction",
                      "normal: truth", "normal: prediction"]
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == names + ["void (no label)"]
    fig = plots.show_dense_samples(truth, class_names=names)
    assert fig.legends and len(fig.legends[0].get_texts()) == 8
    plt.close("all")


def test_sfg_routing_diagram_has_three_panels():
    fig = plots.sfg_routing_diagram()
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 3 and titles[0].startswith("(a)") and "unpooling" in titles[2]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["task 1", "shared", "task 2"]
    plt.close("all")
