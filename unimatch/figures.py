"""The figures a person would rather look at than numbers: training curves (PNG and the CSV files `dvc plots`
reads), confusion matrices, and atomic PNG writes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry involved

from unimatch.utils.atomic import atomic_write

from .tracking.naming import PSEUDO_METRICS, VAL_METRICS

_CURVE_PANELS = (  # (title, x label, metric keys)
    ("loss", "iteration", ("train/loss", "train/loss_labeled", "train/loss_unlabeled")),
    ("mask ratio (confident pixels)", "iteration", ("train/mask_ratio",)),
    ("learning rate (encoder)", "iteration", ("train/lr",)),
    ("validation mIoU (%)", "epoch", VAL_METRICS),
    ("pseudo labels vs unlabeled ground truth (%)", "epoch", PSEUDO_METRICS),
)


def plot_training_curves(history: Mapping[str, list[tuple[int, float]]], path: str | Path) -> Path:
    """A 2x3 PNG of loss, mask ratio, learning rate (vs iteration), validation mIoU and the teacher's
    pseudo-label quality on unlabeled ground truth (vs epoch).

    ``history`` maps metric name -> [(step, value)], with iterations as steps for ``train/*`` and
    epochs for ``val/miou_*``."""

    fig = Figure(figsize=(15, 7), layout="constrained")
    axes = list(fig.subplots(2, 3).flat)
    axes[len(_CURVE_PANELS)].set_axis_off()
    for ax, (title, xlabel, keys) in zip(axes, _CURVE_PANELS):
        ax.set(title=title, xlabel=xlabel)
        drawn = [key for key in keys if history.get(key)]
        for key in drawn:
            steps, values = zip(*history[key], strict=True)
            ax.plot(steps, values, marker="o" if xlabel == "epoch" else None, label=key)
        if drawn:
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    return save_figure(fig, path)


def write_curves(history: Mapping[str, list[tuple[int, float]]], folder: str | Path) -> list[Path]:
    """The history as two CSV tables (atomically): ``training.csv`` (one row per logged iteration: loss,
    mask ratio, lr) and ``validation.csv`` (one row per evaluated epoch: mIoU, pseudo-label quality).
    Column names are the metric names after the slash."""

    folder = Path(folder)
    written = []
    for name, index, prefixes in (
        ("training", "iteration", ("train/",)),
        ("validation", "epoch", ("val/miou", "pseudo/")),
    ):
        series = {
            key.split("/", 1)[1]: pd.Series(dict(points))
            for key, points in history.items()
            if key.startswith(prefixes) and points
        }
        if series:
            table = pd.DataFrame(series).rename_axis(index).sort_index()
            written.append(atomic_write(folder / f"{name}.csv", lambda file, t=table: file.write(t.to_csv().encode())))
    return written


def plot_confusion_matrix(confusion: np.ndarray, class_names: list[str], path: str | Path) -> Path:
    """A PNG of the row-normalised confusion matrix (rows: ground truth), annotated when readable."""

    confusion = np.asarray(confusion, dtype=np.float64)
    totals = confusion.sum(axis=1, keepdims=True)
    norm = np.divide(confusion, totals, out=np.zeros_like(confusion), where=totals > 0)
    n = len(class_names)
    side = max(4.0, 0.45 * n + 2.5)
    fig = Figure(figsize=(side, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set(
        xticks=range(n),
        yticks=range(n),
        xlabel="predicted",
        ylabel="ground truth",
        title="confusion matrix (each row sums to 1)",
    )
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticklabels(class_names)
    if n <= 30:  # beyond that the numbers overlap and only the colours are readable
        for (row, col), value in np.ndenumerate(norm):
            ax.text(
                col,
                row,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if value > 0.5 else "black",
            )
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Atomically, like checkpoints and reports: a crash mid-save never leaves a truncated image."""
    path = Path(path)
    return atomic_write(path, lambda file: fig.savefig(file, format=path.suffix.lstrip(".") or "png", dpi=120))


def plot_seed_means(table: pd.DataFrame, path: str | Path, title: str, xlabel: str) -> Path:
    """A bar per row of ``table`` at its ``mean`` column, a dot per ``seed *`` column (Tables 15-17's layout)."""
    fig = Figure(figsize=(6, 3.5))
    axis = fig.subplots()
    means = table["mean"]
    seed_columns = [c for c in table.columns if c.startswith("seed")]
    axis.barh(means.index, means.values, color="tab:blue")
    for row, name in enumerate(means.index):
        axis.scatter(table.loc[name, seed_columns].values, [row] * len(seed_columns), color="black", s=12)
    axis.set_xlabel(f"{xlabel} — bars: mean, dots: seeds")
    axis.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_sweep_curves(values: pd.DataFrame, path: str | Path, ylabel: str) -> Path | None:
    """Figs. 5-6 as the paper draws them: one panel per swept key (a row of ``values``, the table of means
    whose columns are the swept values), the value on the x axis and the score on the y axis, each point
    labelled. None when no row has a value."""
    curves = [(str(label), row.dropna()) for label, row in values.iterrows() if row.notna().any()]
    if not curves:
        return None
    fig = Figure(figsize=(4.5 * len(curves), 3.8), layout="constrained")
    for ax, (label, row) in zip(np.atleast_1d(fig.subplots(1, len(curves))), curves):
        points = sorted((float(value), score) for value, score in row.items())
        ax.plot(*zip(*points), marker="o")
        for x, y in points:
            ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize="small")
        ax.set(xlabel=label, ylabel=ylabel)
        ax.grid(alpha=0.3)
    return save_figure(fig, path)
