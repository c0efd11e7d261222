"""Figures of a run: the tutorial's history (a metric on top, loss below, train against
validation); for the report, a classifier's confusion matrix and per-class accuracy, or a
regression's predicted-against-true and residual plots.

Each ``plot_*`` writes one PNG, whole or not at all (:func:`gradloop.atomic.write_atomically`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from gradloop.atomic import write_atomically  # noqa: E402

_NOT_METRICS = ("loss", "time")  # history columns that are not the model's metrics
_TITLES = {"accuracy": "Accuracy values", "loss": "Loss values"}  # the tutorial's


def top_metric(history: Mapping[str, list[float]], metric: str | None = None) -> str | None:
    """The metric of the history's top panel: ``metric`` when the history has it, else the first
    ``train_X``/``val_X`` in the history's order that is not loss or time; None when there is none.

    Pass ``metric`` (run.json's ``metrics[0]``) when the order matters: history files list
    their columns alphabetically, not in the order ``--metrics`` gave them."""
    names = [key.split("_", 1)[1] for key in history if key.startswith(("train_", "val_"))]
    if metric is not None and metric in names:
        return metric
    return next((name for name in names if name not in _NOT_METRICS), None)


def history_figure(history: Mapping[str, list[float]], *, metric: str | None = None) -> Figure:
    """The history's panels sharing the epoch axis: :func:`top_metric` on top (when there is one),
    loss below, each with its train and val curves. The caller closes the figure."""
    top = top_metric(history, metric)
    names = [top, "loss"] if top else ["loss"]
    fig, axes = plt.subplots(len(names), sharex=True, figsize=(7, 6), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        for split in ("train", "val"):
            values = history.get(f"{split}_{name}")
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", label=f"{split}_{name}")
        ax.set_title(_TITLES.get(name, f"{name} values"))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    axes[-1, 0].set_xlabel("epoch")
    fig.tight_layout()
    return fig


def plot_history(history: Mapping[str, list[float]], path: Path, *, metric: str | None = None) -> str | None:
    """:func:`history_figure`, saved as PNG; returns the top panel's metric (None: loss alone)."""
    fig = history_figure(history, metric=metric)
    _save(fig, path)
    return top_metric(history, metric)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], classes: Sequence, path: Path) -> None:
    """Counts as a heat map, rows true class, columns predicted, each cell labelled
    (up to 30 classes; beyond that the figure stops growing and the colours alone tell)."""
    counts = np.asarray(matrix)
    k = len(classes)
    side = min(0.6 * k, 18.0)  # inches: 100 classes would otherwise make a 6000-pixel image
    fig, ax = plt.subplots(figsize=(1.2 + side, 1.0 + side))
    ax.imshow(counts, cmap="Blues")
    labels = [str(c) for c in classes]
    fontsize = None if k <= 30 else 5
    ax.set_xticks(range(k), labels, fontsize=fontsize, rotation=0 if k <= 30 else 90)
    ax.set_yticks(range(k), labels, fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 30:
        dark = counts.max() / 2 if counts.size else 0
        for (i, j), n in np.ndenumerate(counts):
            ax.text(j, i, str(n), ha="center", va="center", fontsize=8, color="white" if n > dark else "black")
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    _save(fig, path)


def plot_per_class_accuracy(accuracy: Mapping[str, float | None], path: Path) -> None:
    """One bar per class; a class with no samples has no bar."""
    names = list(accuracy)
    values = [accuracy[n] if accuracy[n] is not None else 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(names) + 2), 3))
    ax.bar(names, values, color="tab:blue")
    ax.set_ylim(0, 1)
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy")
    ax.set_title("Per-class accuracy")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_predicted_vs_true(true: Sequence[float], predicted: Sequence[float], path: Path) -> None:
    """One point per sample, with the line y = x that a perfect model's points lie on."""
    true, predicted = np.asarray(true, dtype=float), np.asarray(predicted, dtype=float)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(true, predicted, s=12, alpha=0.6, color="tab:blue")
    both = np.concatenate([true, predicted])
    low, high = (both.min(), both.max()) if both.size else (0.0, 1.0)
    ax.plot([low, high], [low, high], color="tab:red", linewidth=1, label="predicted = true")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title("Predicted against true")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_residuals(true: Sequence[float], predicted: Sequence[float], path: Path) -> None:
    """Residual (predicted - true) against predicted, with the zero line: a pattern around it
    (a slope, a funnel) is error the model has not captured."""
    true, predicted = np.asarray(true, dtype=float), np.asarray(predicted, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(predicted, predicted - true, s=12, alpha=0.6, color="tab:blue")
    ax.axhline(0.0, color="tab:red", linewidth=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("residual (predicted - true)")
    ax.set_title("Residuals")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Figure, path: Path) -> None:
    try:
        write_atomically(Path(path), lambda tmp: fig.savefig(tmp, dpi=100))
    finally:
        plt.close(fig)
