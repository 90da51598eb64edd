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
    With ``class_names`` a legend of the class colours (:func:`add_class_legend`) is drawn under the figure.
    """
    import numpy as np

    rows = ["image"] + [k for k in ("seg", "depth", "normal") if k in samples[0]]
    height, width = samples[0]["image"].shape[-2:]
    aspect = min(1.0, max(0.5, height / width + 0.1))   # wide images need less height per row
    fig, axes = plt.subplots(len(rows), len(samples),
                             figsize=(scale * len(samples), scale * len(rows) * aspect), squeeze=False)
    cmap = plt.get_cmap("tab20").with_extremes(under="black")
    num_classes = len(class_names) if class_names is not None else num_classes
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
    if class_names is not None and "seg" in rows:
        add_class_legend(fig, class_names)
    return fig


# ---------------------------------------------------------------------------------------------------
# segmentation colours, shared by every figure of labels or predictions
def class_colours(num_classes: int):
    """The RGBA colour of every class ``0 .. num_classes - 1`` as :func:`show_dense_samples` and
    :func:`show_segmentation` draw it (``tab20``; void pixels, label -1, are black)."""
    import matplotlib.colors as mcolors

    cmap = plt.get_cmap("tab20")
    norm = mcolors.Normalize(vmin=-0.01, vmax=max(19, num_classes - 1))
    return [cmap(norm(c)) for c in range(num_classes)]


def add_class_legend(fig, class_names: Sequence[str], ncol: int | None = None, fontsize: int = 8,
                     loc: str = "upper center", bbox_to_anchor=(0.5, 0.0), **kwargs):
    """A legend of class colours (as the segmentation panels draw them) just under a figure."""
    from matplotlib.patches import Patch

    colours = class_colours(len(class_names))
    handles = [Patch(facecolor=colours[c], edgecolor="#555", label=name) for c, name in enumerate(class_names)]
    handles.append(Patch(facecolor="black", edgecolor="#555", label="void (no label)"))
    ncol = ncol or min(len(handles), 7)
    return fig.legend(handles=handles, loc=loc, ncol=ncol, fontsize=fontsize, frameon=False,
                      bbox_to_anchor=bbox_to_anchor, **kwargs)


def show_segmentation(ax, labels, num_classes: int) -> None:
    """Draw a label map ``(H, W)`` (ground truth or prediction; -1 = void, black) in the class colours."""
    import numpy as np

    values = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
    colours = np.array(class_colours(num_classes) + [(0.0, 0.0, 0.0, 1.0)])
    index = np.where(values < 0, num_classes, values).astype(int)
    ax.imshow(colours[index], interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


# ---------------------------------------------------------------------------------------------------
# results over seeds
def plot_points(frame: pd.DataFrame, x: str, y: str, hue: str | None = None, order: Sequence[str] | None = None,
                hue_order: Sequence[str] | None = None, labels: Mapping[str, str] | None = None, ax=None,
                ylabel: str | None = None, zero_line: bool = True, dodge: float = 0.22):
    """Every run as a dot and the mean ± standard deviation over seeds as a point with error bars, per
    ``x`` (and per ``hue``, side by side). ``labels`` renames the ``x`` ticks. Returns the axes.

    ``frame`` has one row per run (e.g. :func:`mtlutils.tables.deltas_per_run`); rows whose ``y`` is not
    finite (diverged runs) are left out, and a group without any finite value is marked "diverged"."""
    import numpy as np

    if ax is None:
        _, ax = plt.subplots(figsize=(9, 3.6))
    order = list(order) if order is not None else list(dict.fromkeys(frame[x]))
    hues = [None] if hue is None else (list(hue_order) if hue_order is not None else list(dict.fromkeys(frame[hue])))
    width = dodge * (len(hues) - 1)
    labelled: set = set()
    for k, h in enumerate(hues):
        colour = f"C{k}"
        offset = -width / 2 + dodge * k if len(hues) > 1 else 0.0
        for i, key in enumerate(order):
            rows = frame[frame[x] == key] if h is None else frame[(frame[x] == key) & (frame[hue] == h)]
            if rows.empty:
                continue
            values = rows[y].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            if not len(values):
                ax.text(i + offset, 0, "diverged", rotation=90, ha="center", va="bottom", fontsize=7, color=colour)
                continue
            ax.scatter(np.full(len(values), i + offset - 0.06), values, s=14, alpha=0.45, color=colour)
            spread = values.std(ddof=1) if len(values) > 1 else 0.0
            label = str(h) if h is not None and h not in labelled else None
            labelled.add(h)
            ax.errorbar(i + offset + 0.04, values.mean(), yerr=spread, fmt="o", color=colour, capsize=4,
                        label=label)
    if zero_line:
        ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(order)), [(labels or {}).get(k, k) for k in order], rotation=25, ha="right")
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_ylabel(ylabel or y)
    if hue is not None:
        ax.legend(title=hue, fontsize=8, title_fontsize=8)
    return ax


# ---------------------------------------------------------------------------------------------------
# diagrams of the papers' building blocks
def cross_stitch_unit_diagram():
    """One cross-stitch unit between two task networks: layer l of networks A and B, the 2×2 mixing of
    their activation maps by α (Eq. 1), and layer l + 1 reading the mixtures."""
    task_a, task_b, unit = "#ffe0b2", "#c8e6c9", "#1565c0"
    fig, ax = plt.subplots(figsize=(9.5, 3.6))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 4.2)
    ax.axis("off")
    for y, colour, name in ((3.0, task_a, "A"), (0.6, task_b, "B")):
        _box(ax, 0.2, y, 1.5, 0.6, f"network {name}\nlayer $l$", colour)
        _box(ax, 2.3, y, 1.1, 0.6, f"$x_{name}$", "white")
        _box(ax, 6.6, y, 1.1, 0.6, rf"$\tilde x_{name}$", "white")
        _box(ax, 8.3, y, 1.5, 0.6, f"network {name}\nlayer $l+1$", colour)
        _arrow(ax, 1.7, y + 0.3, 2.3, y + 0.3)
        _arrow(ax, 7.7, y + 0.3, 8.3, y + 0.3)
    # the four weighted paths x_j -> x~_i
    paths = [((3.4, 3.3), (6.6, 3.3), r"$\alpha_{AA}$", (5.0, 3.45)),
             ((3.4, 0.9), (6.6, 0.9), r"$\alpha_{BB}$", (5.0, 0.55)),
             ((3.4, 3.2), (6.6, 1.0), r"$\alpha_{BA}$", (4.1, 2.45)),
             ((3.4, 1.0), (6.6, 3.2), r"$\alpha_{AB}$", (4.1, 1.45))]
    for (x0, y0), (x1, y1), label, (tx, ty) in paths:
        _arrow(ax, x0, y0, x1, y1, colour=unit)
        ax.text(tx, ty, label, color=unit, fontsize=10, ha="center", va="center",
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    ax.text(5.0, 4.0, r"cross-stitch unit: $\tilde x_A = \alpha_{AA} x_A + \alpha_{AB} x_B$,  "
                      r"$\tilde x_B = \alpha_{BA} x_A + \alpha_{BB} x_B$", ha="center", fontsize=10, color=unit)
    ax.text(5.0, 0.1, "at every location, one 2×2 matrix per channel (or one per layer)", ha="center",
            fontsize=9, color="#555")
    fig.tight_layout()
    return fig


def mtan_block_diagram():
    """One encoder block j of MTAN: the shared block (top) and task i's attention path (bottom): the mask
    from [u; f(â^(j-1))] through g and h, multiplying the block's last feature p (eq-mtan-attend)."""
    fig, ax = plt.subplots(figsize=(10, 3.4))
    ax.set_xlim(0, 11)
    ax.set_ylim(-0.1, 3.6)
    ax.axis("off")
    shared, task = "#cfd8dc", "#ffe0b2"
    _box(ax, 0.2, 2.6, 1.6, 0.6, "block input", "white")
    _box(ax, 2.3, 2.6, 1.6, 0.6, "first conv: $u^{(j)}$", shared)
    _box(ax, 4.4, 2.6, 1.6, 0.6, "last conv: $p^{(j)}$", shared)
    _box(ax, 6.5, 2.6, 1.6, 0.6, "max pool", shared)
    for x0, x1 in ((1.8, 2.3), (3.9, 4.4), (6.0, 6.5)):
        _arrow(ax, x0, 2.9, x1, 2.9)
    _arrow(ax, 8.1, 2.9, 8.6, 2.9)
    ax.text(8.7, 2.9, "shared block $j+1$", va="center", fontsize=9)
    _box(ax, 0.2, 0.4, 1.5, 0.6, r"$\hat a_i^{(j-1)}$", task)
    _box(ax, 2.1, 0.4, 1.9, 0.6, "$f^{(j)}$: 3×3, pool\n(shared weights)", shared)
    _box(ax, 4.5, 0.4, 1.5, 0.6, "$g$: 1×1 conv\nBN, ReLU", task)
    _box(ax, 6.4, 0.4, 1.5, 0.6, "$h$: 1×1 conv\nBN, sigmoid", task)
    _box(ax, 8.3, 0.4, 0.9, 0.6, r"$\odot$", task)
    _box(ax, 9.7, 0.4, 1.1, 0.6, r"$\hat a_i^{(j)}$", task)
    _arrow(ax, 1.7, 0.7, 2.1, 0.7)
    _arrow(ax, 4.0, 0.7, 4.5, 0.7)
    _arrow(ax, 6.0, 0.7, 6.4, 0.7)
    _arrow(ax, 7.9, 0.7, 8.3, 0.7)
    ax.text(8.1, 0.12, "mask $a_i^{(j)}$", fontsize=8, ha="center")
    _arrow(ax, 9.2, 0.7, 9.7, 0.7)
    _arrow(ax, 3.1, 2.6, 4.9, 1.0)            # u joins g's input (concatenated)
    ax.text(3.55, 1.55, "concat $u^{(j)}$", fontsize=8)
    _arrow(ax, 5.2, 2.6, 8.75, 1.0)           # p is what the mask multiplies
    ax.text(7.25, 1.95, "$p^{(j)}$", fontsize=9)
    ax.text(10.25, 1.15, "to block $j+1$\n(via $f^{(j+1)}$)", fontsize=8, ha="center")
    ax.set_title("one encoder block of MTAN: shared network (top), attention path of task i (bottom)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def mtan_diagram(tasks: Sequence[str] = ("seg", "depth", "normal"), blocks: int = 5):
    """The whole MTAN on SegNet: the shared encoder–decoder (middle row), each task's chain of attention
    modules at every encoder and decoder block (one row per task), and the task heads."""
    import numpy as np

    shared, colours = "#cfd8dc", ["#ffe0b2", "#c8e6c9", "#bbdefb", "#f8bbd0", "#d1c4e9"]
    n = 2 * blocks
    fig, ax = plt.subplots(figsize=(13, 1.6 + 1.1 * len(tasks)))
    top = 1.2 * len(tasks) + 0.6
    ax.set_xlim(-1.6, n * 1.15 + 1.8)
    ax.set_ylim(top - 1.2 * len(tasks) - 0.15, top + 0.9)
    ax.axis("off")
    xs = np.arange(n) * 1.15
    names = [f"enc {j + 1}" for j in range(blocks)] + [f"dec {blocks - k}" for k in range(blocks)]
    for k, (x, name) in enumerate(zip(xs, names)):
        _box(ax, x, top, 0.85, 0.55, name, shared)
        if k < n - 1:
            label = "pool" if k < blocks - 1 else ("" if k == blocks - 1 else "unpool")
            _arrow(ax, x + 0.85, top + 0.27, x + 1.15, top + 0.27)
            if label:
                ax.text(x + 1.0, top + 0.62, label, fontsize=6.5, ha="center", color="#555")
    ax.text(-0.15, top + 0.27, "shared\nSegNet", ha="right", va="center", fontsize=9)
    ax.text(xs[blocks - 1] + 1.0, top + 0.62, "pool | unpool", fontsize=6.5, ha="center", color="#555")
    for t, task in enumerate(tasks):
        y = top - 1.2 * (t + 1)
        colour = colours[t % len(colours)]
        ax.text(-0.15, y + 0.22, f"{task}\nattention", ha="right", va="center", fontsize=9)
        for k, x in enumerate(xs):
            ax.add_patch(plt.Circle((x + 0.42, y + 0.22), 0.2, facecolor=colour, edgecolor="#333", lw=1))
            ax.text(x + 0.42, y + 0.22, "⊙", ha="center", va="center", fontsize=9)
            if t == 0:   # the shared features feed every task's module of this block (drawn once, dashed)
                ax.plot([x + 0.42, x + 0.42], [top, y + 0.42], color="#90a4ae", lw=0.8, ls="--", zorder=0)
            if k < n - 1:
                _arrow(ax, x + 0.62, y + 0.22, x + 1.15 + 0.22, y + 0.22)
                ax.text(x + 0.9, y + 0.32, "$f$", fontsize=7, ha="center", color="#555")
        _box(ax, xs[-1] + 1.15, y, 0.9, 0.45, f"{task}\nhead", colour)
        _arrow(ax, xs[-1] + 0.62, y + 0.22, xs[-1] + 1.15, y + 0.22)
    for k, x in enumerate(xs):   # dashed verticals reach the lower task rows too
        ax.plot([x + 0.42, x + 0.42], [top - 1.2 * len(tasks) + 0.42, top - 1.2 + 0.02], color="#90a4ae",
                lw=0.8, ls="--", zorder=0)
    ax.set_title("MTAN: one shared SegNet (top). Per task, an attention module ⊙ at every encoder and decoder "
                 "block,\nwhose mask selects from that block's shared features (dashed); a shared 3×3 unit f "
                 "(with pooling or up-sampling) carries the attended features on; a head per task", fontsize=9.5)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------
# dense predictions beside the ground truth, and SFG's routing
def show_predictions(truth, predicted, class_names: Sequence[str], tasks: Sequence[str] = ("seg", "depth", "normal"),
                     scale: float = 1.6, title: str | None = None):
    """Ground truth beside predictions of dense tasks, one row per scene.

    ``truth`` and ``predicted`` are lists of dict samples (``image``, ``seg`` labels ``(H, W)``, ``depth``
    ``(1, H, W)`` in metres, ``normal`` ``(3, H, W)``); columns: the image, then for each of ``tasks`` its
    truth and its prediction. Segmentation is drawn by :func:`show_segmentation` in the class colours, with
    a legend of ``class_names`` under the figure (:func:`add_class_legend`); depth shares one colour scale per
    row (truth and prediction) with a colour bar; normals are shown as RGB (xyz in [-1, 1] -> [0, 1]),
    invalid pixels black.
    """
    import numpy as np

    columns = [("image", None)] + [(t, which) for t in tasks for which in ("truth", "prediction")]
    height, width = truth[0]["image"].shape[-2:]
    fig, axes = plt.subplots(len(truth), len(columns), squeeze=False,
                             figsize=(scale * len(columns) * width / height * 0.9, scale * len(truth)))
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
                show_segmentation(ax, sample["seg"], len(class_names))
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
        add_class_legend(fig, class_names)
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
