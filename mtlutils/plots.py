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
                       scale: float = 2.0, class_names: Sequence[str] | None = None):
    """One column per sample, rows: image, segmentation (void black), depth (metres), normals as RGB.

    ``samples`` is a list of dict samples with keys ``image`` and any of ``seg``, ``depth``, ``normal``.
    With ``class_names`` the segmentation uses :func:`class_colours` and a legend of the classes is drawn
    under the figure.
    """
    import numpy as np

    rows = ["image"] + [k for k in ("seg", "depth", "normal") if k in samples[0]]
    fig, axes = plt.subplots(len(rows), len(samples), figsize=(scale * len(samples), scale * len(rows)),
                             squeeze=False)
    cmap = plt.get_cmap("tab20").with_extremes(under="black")
    if class_names is not None:
        cmap, num_classes = class_colours(len(class_names)), len(class_names)
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
                seg[seg < 0] = -0.5 if class_names is None else -1.0
                if class_names is None:
                    ax.imshow(seg, cmap=cmap, vmin=-0.01, vmax=max(19, (num_classes or 20) - 1),
                              interpolation="nearest")
                else:
                    ax.imshow(seg, cmap=cmap, vmin=-0.5, vmax=num_classes - 0.5, interpolation="nearest")
            elif row == "depth":
                depth = sample["depth"][0].cpu().numpy()
                shown = np.ma.masked_where(depth <= 0, depth)
                im = ax.imshow(shown, cmap="viridis")
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            else:
                ax.imshow(normals_to_rgb(sample["normal"]))
    fig.tight_layout()
    if class_names is not None and "seg" in rows:
        class_legend(fig, class_names, y=0.0)
    return fig


def class_colours(num_classes: int):
    """A ``ListedColormap`` with one colour per class (tab20 up to 20 classes), black for void pixels
    (values below 0: use ``vmin=0`` and ``cmap.set_under``). The same colours in every figure and legend."""
    from matplotlib.colors import ListedColormap

    base = plt.get_cmap("tab20" if num_classes > 10 else "tab10")
    cmap = ListedColormap([base(i % base.N) for i in range(num_classes)], name=f"classes{num_classes}")
    return cmap.with_extremes(under="black")


def class_legend(fig, class_names: Sequence[str], ncol: int | None = None, void: bool = True,
                 y: float = 0.0, fontsize: int = 8):
    """A legend of class colours (:func:`class_colours`) under a figure: one patch per class, void black."""
    from matplotlib.patches import Patch

    cmap = class_colours(len(class_names))
    handles = [Patch(facecolor=cmap(i), edgecolor="#555", label=name) for i, name in enumerate(class_names)]
    if void:
        handles.append(Patch(facecolor="black", edgecolor="#555", label="void (no label)"))
    ncol = ncol or min(len(handles), 7)
    return fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, y), ncol=ncol,
                      fontsize=fontsize, frameon=False, title="classes", title_fontsize=fontsize + 1)


def show_predictions(truth, predicted, class_names: Sequence[str], tasks: Sequence[str] = ("seg", "depth", "normal"),
                     scale: float = 1.6, title: str | None = None):
    """Ground truth beside predictions of dense tasks, one row per scene.

    ``truth`` and ``predicted`` are lists of dict samples (``image``, ``seg`` labels ``(H, W)``, ``depth``
    ``(1, H, W)`` in metres, ``normal`` ``(3, H, W)``); columns: the image, then for each of ``tasks`` its
    truth and its prediction. Segmentation uses :func:`class_colours` with a legend of ``class_names`` under
    the figure; depth shares one colour scale per row (truth and prediction) with a colour bar; normals are
    shown as RGB (xyz in [-1, 1] -> [0, 1]), invalid pixels black.
    """
    import numpy as np

    columns = [("image", None)] + [(t, which) for t in tasks for which in ("truth", "prediction")]
    height, width = truth[0]["image"].shape[-2:]
    fig, axes = plt.subplots(len(truth), len(columns), squeeze=False,
                             figsize=(scale * len(columns) * width / height * 0.9, scale * len(truth)))
    cmap = class_colours(len(class_names))
    for r, (true, pred) in enumerate(zip(truth, predicted)):
        depth_range = None
        if "depth" in tasks:
            d = true["depth"][0].cpu().numpy()
            valid = d > 0
            depth_range = (float(d[valid].min()), float(d[valid].max())) if valid.any() else (0.0, 1.0)
        for c, (task, which) in enumerate(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            sample = true if which in (None, "truth") else pred
            if r == 0:
                ax.set_title("image" if task == "image" else f"{task}: {which}", fontsize=9)
            if task == "image":
                ax.imshow(sample["image"].permute(1, 2, 0).clamp(0, 1).cpu().numpy())
            elif task == "seg":
                seg = sample["seg"].cpu().numpy().astype(float)
                seg[seg < 0] = -1.0
                ax.imshow(seg, cmap=cmap, vmin=-0.5, vmax=len(class_names) - 0.5, interpolation="nearest")
            elif task == "depth":
                d = sample["depth"][0].cpu().numpy()
                im = ax.imshow(np.ma.masked_where(true["depth"][0].cpu().numpy() <= 0, d), cmap="viridis",
                               vmin=depth_range[0], vmax=depth_range[1])
                if which == "prediction":
                    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
                    bar.ax.tick_params(labelsize=7)
                    bar.set_label("m", fontsize=7)
            elif task == "normal":
                n = sample["normal"].clone()
                n[:, true["normal"].abs().sum(0) == 0] = 0
                ax.imshow(normals_to_rgb(n))
    if "seg" in tasks:
        class_legend(fig, class_names, y=0.0)
    if title:
        fig.suptitle(title, y=1.0)
    fig.tight_layout()
    return fig


def sfg_routing_diagram():
    """SFG's routing for two tasks, in three panels: (a) which groups of layer l the kernels of each group
    of layer l+1 read (eq-sfg-routing), (b) which groups of the last layer each task head reads, (c) the
    unpooling tie of SFG-SegNet: an encoder stage's last convolution and the decoder convolution whose
    output is unpooled with that stage's pooling indices have one grouping, so channel c of the decoder is
    placed by channel c of the encoder, which belongs to the same group."""
    colours = {"1": "#ffcc80", "s": "#b0bec5", "2": "#a5d6a7"}
    names = {"1": "task 1", "s": "shared", "2": "task 2"}
    reads = {"1": ("1", "s"), "s": ("s",), "2": ("2", "s")}
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.9), gridspec_kw={"width_ratios": [1.05, 0.95, 1.3]})
    for ax in axes:
        ax.set_xlim(0, 4)
        ax.set_ylim(0, 4.4)
        ax.axis("off")
    order = ("1", "s", "2")
    ys = {"1": 3.0, "s": 1.8, "2": 0.6}
    # (a) layer l -> layer l+1
    ax = axes[0]
    ax.set_title("(a) layer l to layer l + 1", fontsize=10)
    ax.text(0.75, 4.05, "features of layer l", ha="center", fontsize=8)
    ax.text(3.2, 4.05, "kernels of layer l + 1", ha="center", fontsize=8)
    for g in order:
        _box(ax, 0.1, ys[g], 1.3, 0.6, f"$F_{{{g}}}^{{(l)}}$", colours[g])
        _box(ax, 2.55, ys[g], 1.3, 0.6, f"$G_{{{g}}}^{{(l+1)}}$", colours[g])
    for target in order:
        for source in reads[target]:
            colour = "#455a64" if source == "s" else "#e65100" if source == "1" else "#2e7d32"
            _arrow(ax, 1.45, ys[source] + 0.3, 2.5, ys[target] + 0.3, colour=colour)
    ax.text(2.0, 0.05, "task kernels read their own group and the shared one;\nshared kernels read only shared",
            ha="center", fontsize=7.5)
    # (b) last layer -> heads
    ax = axes[1]
    ax.set_title("(b) last layer L to the task heads", fontsize=10)
    ax.text(0.75, 4.05, "features of layer L", ha="center", fontsize=8)
    for g in order:
        _box(ax, 0.1, ys[g], 1.3, 0.6, f"$F_{{{g}}}^{{(L)}}$", colours[g])
    heads = {"1": 2.7, "2": 0.9}
    for t, y in heads.items():
        _box(ax, 2.6, y, 1.25, 0.6, f"head {t}", colours[t])
        for source in reads[t]:
            colour = "#455a64" if source == "s" else "#e65100" if source == "1" else "#2e7d32"
            _arrow(ax, 1.45, ys[source] + 0.3, 2.55, y + 0.3, colour=colour)
    ax.text(2.0, 0.05, "head t reads $[F_t^{(L)} \\,|\\, F_s^{(L)}]$", ha="center", fontsize=8)
    # (c) the unpooling tie
    ax = axes[2]
    ax.set_title("(c) SegNet: max-unpooling ties two layers", fontsize=10)
    groups = ["1", "s", "2", "s", "1", "2", "s"]
    x0, w = 0.35, 0.42
    ax.text(0.05, 3.55, "encoder conv\n(stage's last)", fontsize=7.5, va="center")
    ax.text(0.05, 1.0, "decoder conv\n(its output\nis unpooled)", fontsize=7.5, va="center")
    for c, g in enumerate(groups):
        x = x0 + 0.55 + c * w
        _box(ax, x, 3.25, w * 0.8, 0.5, g, colours[g])
        _box(ax, x, 0.7, w * 0.8, 0.5, g, colours[g])
        _arrow(ax, x + w * 0.4, 3.2, x + w * 0.4, 1.25, colour="#78909c", style="-|>")
    ax.text(2.3, 2.3, "pooling indices of channel c place\ndecoder channel c: same group, tied",
            ha="center", fontsize=7.5, bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    ax.text(2.3, 0.15, "untied, a shared decoder channel could be placed\nby a task-1 encoder channel: a leak",
            ha="center", fontsize=7.5, color="#c62828")
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(facecolor=colours[g], edgecolor="#333", label=names[g]) for g in order],
               loc="lower center", ncol=3, fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    return fig
