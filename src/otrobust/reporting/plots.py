"""Figures as PNG + SVG. Each function takes plain data, draws one figure and returns the files written.

matplotlib (a dependency of otrobust) is imported when a figure is first drawn, so that importing the package
stays fast, and used through ``matplotlib.figure.Figure``, never pyplot, so no global backend state is touched.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otrobust.errors import OtrobustError
from otrobust.store.files import atomic_write_bytes

# {panel title: {line label: [(x, accuracy %), ...]}}
Panels = dict[str, dict[str, list[tuple[float, float]]]]


def new_figure(n_panels: int, width: float = 5.2, height: float = 4.0, extra_width: float = 0.0):
    """A matplotlib ``Figure`` (object API: no pyplot state) with ``n_panels`` axes, at most 3 per row."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise OtrobustError("plots need matplotlib, which otrobust depends on: pip install matplotlib") from None
    cols = min(n_panels, 3)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(width * cols + extra_width, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


MARKERS = ("o", "s", "^", "D", "v", "P", "*", "X", "<", ">")


def _title(fig, title: str) -> None:
    """A figure title wrapped to the figure's width (about 9 characters per inch at this size)."""
    fig.suptitle(textwrap.fill(title, width=max(30, int(fig.get_figwidth() * 9))), fontsize=13)


def save_figure(fig, stem: Path, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Write ``fig`` as ``stem``.png (150 dpi) and ``stem``.svg (or the ``formats`` given), each rendered in memory
    and then written atomically, so that a failed write is one OtrobustError and never half a file. The same figure
    gives the same bytes (no date, fixed SVG ids), so a committed figure changes only when its data does."""
    import matplotlib

    stem = Path(stem)
    paths = [stem.with_suffix(f".{ext}") for ext in formats]
    for path in paths:
        buffer, fmt = io.BytesIO(), path.suffix[1:]
        with matplotlib.rc_context({"svg.hashsalt": "otrobust"}):
            fig.savefig(buffer, format=fmt, dpi=150, bbox_inches="tight",
                        metadata={"Date": None} if fmt in ("svg", "pdf") else None)
        atomic_write_bytes(path, buffer.getvalue())
    return paths


@dataclass(frozen=True, slots=True, kw_only=True)
class XAxis:
    """A line figure's x axis: its label, a log scale, the ticks to mark (None: matplotlib's), whole numbers only."""

    label: str
    log: bool = False
    ticks: Sequence[float] | None = None
    integer: bool = False


def _line_panels(panels: Panels, stem: Path, *, x: XAxis, y_label: str, title: str,
                 paper: Panels | None = None) -> list[Path]:
    """One panel per entry; ours solid with markers, the paper's (same colour) dashed; one legend outside."""
    if not panels:
        raise OtrobustError(f"nothing to plot for {title!r}")
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig, axes = new_figure(len(panels), extra_width=2.6)  # room for the legend on the right
    legend: dict[str, Any] = {}
    any_paper = False
    for ax, (panel, lines) in zip(axes, panels.items(), strict=True):
        colours = {}
        for i, (label, points) in enumerate(lines.items()):
            xs, ys = zip(*sorted(points), strict=True)
            (line,) = ax.plot(xs, ys, marker=MARKERS[i % len(MARKERS)], linewidth=1.8, markersize=5, label=label)
            colours[label] = line.get_color()
            legend.setdefault(label, line)
        for label, points in ((paper or {}).get(panel) or {}).items():
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, linestyle="--", linewidth=1.2, marker="x", markersize=4, alpha=0.8,
                    color=colours.get(label, "0.5"))
            any_paper = True
        if x.log:
            ax.set_xscale("log")
        if x.ticks is not None:
            ax.set_xticks(list(x.ticks), [f"{t:g}" for t in x.ticks])
        if x.integer:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(panel, fontsize=12)
        ax.set_xlabel(x.label, fontsize=11)
        ax.set_ylabel(y_label, fontsize=11)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=10)
    if any_paper:
        legend["ours (solid)"] = Line2D([], [], color="0.3", linewidth=1.8)
        legend["paper (dashed, same colour)"] = Line2D([], [], color="0.3", linestyle="--", marker="x")
    fig.legend(list(legend.values()), list(legend), loc="outside right center", fontsize=9, framealpha=0.9)
    _title(fig, title)
    return save_figure(fig, stem)


def plot_accuracy_vs_eps(panels: Panels, stem: Path, *, title: str = "Robust accuracy vs attack radius",
                         attack: str = "PGD", paper: Panels | None = None) -> list[Path]:
    """Robust accuracy (%) against eps, one line per method (the paper's values dashed, if given)."""
    return _line_panels(panels, stem, x=XAxis(label="attack radius ε"),
                        y_label=f"robust accuracy under {attack} (%)", title=title, paper=paper)


def plot_accuracy_vs_steps(panels: Panels, stem: Path, *, title: str = "Robust accuracy vs PGD steps",
                           paper: Panels | None = None) -> list[Path]:
    """Robust accuracy (%) against the number of PGD steps, one line per method."""
    return _line_panels(panels, stem, x=XAxis(label="PGD steps", integer=True), y_label="robust accuracy (%)",
                        title=title, paper=paper)


def plot_accuracy_vs_beta(panels: Panels, stem: Path, *, title: str = "Accuracy vs OT weight β") -> list[Path]:
    """Accuracy (%) against the OT weight β on a log axis; one line per metric (clean, PGD…)."""
    betas = sorted({x for lines in panels.values() for pts in lines.values() for x, _ in pts})
    return _line_panels(panels, stem, x=XAxis(label="OT weight β (log scale)", log=True, ticks=betas),
                        y_label="accuracy (%)", title=title)


def plot_tsne(panels: dict[str, dict[str, Any]], stem: Path, *, class_names: Sequence[str] | None = None,
              title: str = "t-SNE of penultimate features: clean (o) and adversarial (x)",
              perplexity: float = 30.0, seed: int = 0) -> list[Path]:
    """Figure 6: per panel, t-SNE of clean features (circles) and adversarial features (crosses), coloured by
    true class. Each panel dict holds ``z_clean (N, D)``, ``z_adv (N, D)``, ``y (N,)`` as numpy arrays."""
    import numpy as np
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    if not panels:
        raise OtrobustError("nothing to plot for the t-SNE figure")
    fig, axes = new_figure(len(panels), width=5.6, height=5.2)
    from matplotlib import colormaps  # after _figure, which explains a missing matplotlib

    handles = {}
    for ax, (name, d) in zip(axes, panels.items(), strict=True):
        z = np.concatenate([d["z_clean"], d["z_adv"]]).astype(np.float64)
        y = np.asarray(d["y"])
        n = len(y)
        # One OpenMP thread: Barnes-Hut t-SNE on a few thousand points gains little from more, and on a
        # shared machine its spinning threads can make it 30x slower.
        with threadpool_limits(limits=1):
            emb = TSNE(n_components=2, perplexity=min(perplexity, max(2.0, (2 * n - 1) / 3)), init="pca",
                       random_state=seed).fit_transform(z)
        classes = sorted(set(y.tolist()))
        cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
        for i, c in enumerate(classes):
            sel = y == c
            colour = cmap(i % cmap.N)
            label = class_names[c] if class_names is not None and c < len(class_names) else str(c)
            h = ax.scatter(emb[:n][sel, 0], emb[:n][sel, 1], s=10, color=colour, marker="o", alpha=0.7,
                           linewidths=0)
            ax.scatter(emb[n:][sel, 0], emb[n:][sel, 1], s=14, color=colour, marker="x", alpha=0.7, linewidths=0.8)
            handles.setdefault(label, h)
        ax.set_title(name, fontsize=12)
        ax.set_xlabel("t-SNE 1st dim", fontsize=11)
        ax.set_ylabel("t-SNE 2nd dim", fontsize=11)
        ax.tick_params(labelsize=9)
    from matplotlib.lines import Line2D

    shapes = [Line2D([], [], color="0.3", marker="o", linestyle="", label="clean"),
              Line2D([], [], color="0.3", marker="x", linestyle="", label="adversarial")]
    fig.legend([*shapes, *handles.values()], ["clean", "adversarial", *handles], loc="outside right center",
               fontsize=9, title="marker / class", markerscale=1.5)
    _title(fig, title)
    return save_figure(fig, stem)


# (metrics.jsonl key, axis label, scale): the panels of a learning-curve figure
CURVE_METRICS = (("val_clean", "validation clean accuracy (%)", 100.0),
                 ("val_pgd", "validation PGD accuracy (%)", 100.0),
                 ("train_loss", "training loss", 1.0))
OT_CURVE = ("ot", "OT term (training mean)", 1.0)


def plot_learning_curves(histories: dict[str, list[dict[str, Any]]], stem: Path, *,
                         title: str = "Learning curves", metrics: Sequence[tuple[str, str, float]] = CURVE_METRICS,
                         formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Per-epoch curves of each run (from its metrics.jsonl), one panel per entry of ``metrics``: by default
    validation clean / PGD accuracy and training loss."""
    histories = {k: v for k, v in histories.items() if v}
    if not histories:
        raise OtrobustError("no run has a finished epoch to plot")
    from matplotlib.ticker import MaxNLocator

    fig, axes = new_figure(len(metrics), width=4.8, height=3.8, extra_width=2.6)
    last_epoch = max(r["epoch"] for records in histories.values() for r in records)
    for ax, (key, label, scale) in zip(axes, metrics, strict=True):
        for run, records in histories.items():
            points = [(r["epoch"], scale * r[key]) for r in records if isinstance(r.get(key), (int, float))]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=run)
        ax.set_xlabel("epoch", fontsize=11)
        ax.set_ylabel(label, fontsize=11)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=10)
        if last_epoch <= 12:  # MaxNLocator falls back to fractional ticks when the range holds few integers
            ax.set_xticks(range(1, last_epoch + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.5, last_epoch + 0.5)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=9, framealpha=0.9)
    _title(fig, title)
    return save_figure(fig, stem, formats)


def plot_plateau(panels: dict[str, dict[str, list[tuple[int, float]]]], stem: Path, *, first_epoch: int = 3,
                 last: int = 3, title: str = "Validation PGD accuracy by epoch",
                 formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Whether runs have stopped improving: one panel per run (``{panel: {line label: [(epoch, accuracy %)]}}``,
    a line per seed), from ``first_epoch`` on so that a warm-up does not squash the scale, with the last ``last``
    epochs shaded (the window a plateau is judged on; 0: none)."""
    panels = {k: {s: pts for s, pts in v.items() if pts} for k, v in panels.items()}
    panels = {k: v for k, v in panels.items() if v}
    if not panels:
        raise OtrobustError("no run has a finished epoch to plot")
    from matplotlib.ticker import MaxNLocator

    fig, axes = new_figure(len(panels), width=4.4, height=3.4)
    for ax, (name, lines) in zip(axes, panels.items(), strict=True):
        end = max(e for pts in lines.values() for e, _ in pts)
        for i, (label, pts) in enumerate(lines.items()):
            pts = sorted(p for p in pts if p[0] >= first_epoch) or sorted(pts)
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker=MARKERS[i % len(MARKERS)], markersize=3, linewidth=1.3, label=label)
        if last:
            ax.axvspan(end - last + 0.5, end + 0.5, color="0.85", alpha=0.5, linewidth=0)
        ax.set_title(name, fontsize=11)
        ax.set_xlabel("epoch", fontsize=10)
        ax.set_ylabel("validation PGD accuracy (%)", fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=9)
        ax.legend(fontsize=8, loc="lower right")
    _title(fig, title)
    return save_figure(fig, stem, formats)


@dataclass(frozen=True, slots=True, kw_only=True)
class Estimate:
    """One line of :func:`plot_estimates`: a measured difference (``mean``, its interval ``low``–``high``, None when
    there is none, and the ``points`` it averages), the ``target`` it is tested against, and a ``note`` (a verdict)."""

    label: str
    mean: float
    low: float | None
    high: float | None
    points: Sequence[float]
    target: float
    note: str


def plot_estimates(estimates: Sequence[Estimate], stem: Path, *, x_label: str, target_label: str,
                   title: str, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Measured differences against the values claimed for them, one line each: the mean with its interval, the
    individual points (e.g. seeds) behind it, the claimed ``target`` and the ``note`` beside it; 0 marked."""
    if not estimates:
        raise OtrobustError("no estimate to plot")
    fig, (ax,) = new_figure(1, width=8.0, height=0.9 + 0.75 * len(estimates))
    ys = range(len(estimates))[::-1]
    for y, e in zip(ys, estimates, strict=True):
        if e.low is not None and e.high is not None:
            ax.plot([e.low, e.high], [y, y], color="C0", linewidth=2.2, solid_capstyle="butt",
                    label="ours: interval (its level on the right)" if y == ys[0] else None)
        ax.scatter(list(e.points), [y + 0.18] * len(e.points), s=14, color="0.45", zorder=3,
                   label="ours: each seed" if y == ys[0] else None)
        ax.scatter([e.mean], [y], s=40, color="C0", zorder=4, label="ours: mean" if y == ys[0] else None)
        ax.scatter([e.target], [y], s=60, marker="D", color="C3", zorder=4, label=target_label if y == ys[0] else None)
        ax.annotate(e.note, (1.01, y), xycoords=("axes fraction", "data"), va="center", fontsize=9)
    ax.axvline(0.0, color="0.3", linewidth=0.8)
    ax.set_yticks(list(ys), [e.label for e in estimates], fontsize=9)
    ax.set_ylim(-0.7, len(estimates) - 0.3)
    ax.set_xlabel(x_label, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="x", labelsize=9)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2 - 0.3 / len(estimates)), ncol=4)
    _title(fig, title)
    return save_figure(fig, stem, formats)
