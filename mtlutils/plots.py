"""Figure helpers shared by the chapters (matplotlib + seaborn, labelled axes)."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .train import History


def histories_frame(histories: Mapping[str, History]) -> pd.DataFrame:
    """One long DataFrame of several runs, with a ``model`` column holding each run's label."""
    frames = []
    for label, history in histories.items():
        frame = history.to_frame()
        frame.insert(0, "model", label)
        frames.append(frame)
    if not frames:
        raise ValueError("no histories given")
    return pd.concat(frames, ignore_index=True)


def plot_learning_curves(histories: Mapping[str, History], quantity: str = "loss",
                         splits: Sequence[str] = ("train", "val"), ylabel: str | None = None,
                         height: float = 3.0):
    """Per-task curves of ``quantity`` (``"loss"`` or a metric name) over epochs, one panel per task.

    Colour is the run (``histories`` keys), line style the split. Returns the seaborn ``FacetGrid``.
    """
    frame = histories_frame(histories)
    frame = frame[(frame["quantity"] == quantity) & frame["split"].isin(splits)]
    if frame.empty:
        raise ValueError(f"no {quantity!r} values for splits {list(splits)} in these histories")
    grid = sns.relplot(data=frame, x="epoch", y="value", hue="model", style="split", col="task", kind="line",
                       height=height, aspect=1.3, marker="o", markersize=4,
                       facet_kws={"sharey": quantity == "loss"})
    grid.set_axis_labels("epoch", ylabel or quantity)
    grid.set_titles("task: {col_name}")
    return grid


def show_images(images, titles: Sequence[str] | None = None, ncols: int = 8, scale: float = 1.4,
                cmap: str = "gray"):
    """A grid of single-channel images (tensor ``(N, 1, H, W)`` or ``(N, H, W)``) with optional titles."""
    images = images.squeeze(1) if images.dim() == 4 else images
    n = images.shape[0]
    nrows = (n + ncols - 1) // ncols
    height, width = images.shape[-2:]
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * scale * width / height, nrows * scale * 1.2),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i].cpu().numpy(), cmap=cmap, vmin=0, vmax=1)
            if titles is not None:
                ax.set_title(titles[i], fontsize=9)
    fig.tight_layout()
    return fig


def _box(ax, x: float, y: float, w: float, h: float, text: str, colour: str) -> None:
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", facecolor=colour, edgecolor="#333",
                                linewidth=1))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9)


def _arrow(ax, x0: float, y0: float, x1: float, y1: float, colour: str = "#333", style: str = "-|>") -> None:
    ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops={"arrowstyle": style, "color": colour, "lw": 1.2})


def sharing_diagrams():
    """Three schematic panels: separate single-task networks, hard sharing and soft sharing."""
    shared, task_a, task_b = "#cfd8dc", "#ffe0b2", "#c8e6c9"
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    titles = ["single-task networks", "hard parameter sharing",
              "soft parameter sharing\n(learned mixing, e.g. cross-stitch)"]
    for ax, title in zip(axes, titles):
        ax.set_xlim(0, 4)
        ax.set_ylim(0, 5.2)
        ax.axis("off")
        ax.set_title(title, fontsize=11)
    # separate networks: two columns, no links
    for ax, linked in ((axes[0], False), (axes[2], True)):
        for col, (x, colour, name) in enumerate(((0.4, task_a, "A"), (2.4, task_b, "B"))):
            _box(ax, x, 0.2, 1.2, 0.6, "x", "white")
            for level in range(3):
                _box(ax, x, 1.2 + level * 1.0, 1.2, 0.6, f"layer {level + 1}", colour)
                _arrow(ax, x + 0.6, 0.8 + level * 1.0, x + 0.6, 1.2 + level * 1.0)
            _box(ax, x, 4.3, 1.2, 0.6, f"task {name}", colour)
            _arrow(ax, x + 0.6, 3.8, x + 0.6, 4.3)
        if linked:
            for level in range(3):
                y = 1.5 + level * 1.0
                _arrow(ax, 1.6, y, 2.4, y + 0.45, colour="#1565c0")
                _arrow(ax, 2.4, y, 1.6, y + 0.45, colour="#1565c0")
    ax = axes[1]
    _box(ax, 1.4, 0.2, 1.2, 0.6, "x", "white")
    for level in range(3):
        _box(ax, 1.1, 1.2 + level * 1.0, 1.8, 0.6, f"shared layer {level + 1}", shared)
        _arrow(ax, 2.0, 0.8 + level * 1.0, 2.0, 1.2 + level * 1.0)
    _box(ax, 0.4, 4.3, 1.2, 0.6, "head A", task_a)
    _box(ax, 2.4, 4.3, 1.2, 0.6, "head B", task_b)
    _arrow(ax, 1.7, 3.8, 1.0, 4.3)
    _arrow(ax, 2.3, 3.8, 3.0, 4.3)
    fig.tight_layout()
    return fig


def normals_to_rgb(normal):
    """Unit normals ``(3, H, W)`` -> an RGB image ``(H, W, 3)`` in [0, 1] (invalid all-zero pixels black)."""
    valid = normal.abs().sum(0) > 0
    rgb = ((normal + 1) / 2).permute(1, 2, 0).clamp(0, 1)
    rgb[~valid] = 0
    return rgb.cpu().numpy()


def show_dense_samples(samples, titles: Sequence[str] | None = None, num_classes: int | None = None,
                       scale: float = 2.0):
    """One column per sample, rows: image, segmentation (void black), depth (metres), normals as RGB.

    ``samples`` is a list of dict samples with keys ``image`` and any of ``seg``, ``depth``, ``normal``.
    """
    import numpy as np

    rows = ["image"] + [k for k in ("seg", "depth", "normal") if k in samples[0]]
    fig, axes = plt.subplots(len(rows), len(samples), figsize=(scale * len(samples), scale * len(rows)),
                             squeeze=False)
    cmap = plt.get_cmap("tab20").copy()
    cmap.set_under("black")
    for j, sample in enumerate(samples):
        for i, row in enumerate(rows):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel({"image": "image", "seg": "labels", "depth": "depth (m)",
                               "normal": "normals"}[row])
            if row == "image":
                ax.imshow(sample["image"].permute(1, 2, 0).clamp(0, 1).cpu().numpy())
                if titles is not None:
                    ax.set_title(titles[j], fontsize=9)
            elif row == "seg":
                seg = sample["seg"].cpu().numpy().astype(float)
                seg[seg < 0] = -0.5
                ax.imshow(seg, cmap=cmap, vmin=-0.01, vmax=max(19, (num_classes or 20) - 1), interpolation="nearest")
            elif row == "depth":
                depth = sample["depth"][0].cpu().numpy()
                shown = np.ma.masked_where(depth <= 0, depth)
                im = ax.imshow(shown, cmap="viridis")
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            else:
                ax.imshow(normals_to_rgb(sample["normal"]))
    fig.tight_layout()
    return fig
