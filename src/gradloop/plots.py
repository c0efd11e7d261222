"""Figures of a run: the tutorial's history (accuracy on top, loss below, train
against validation), and the confusion matrix and per-class accuracy of the report."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from gradloop.rundir import write_atomically  # noqa: E402


def plot_history(history: Mapping[str, list[float]], path: Path) -> None:
    """Two panels sharing the epoch axis, as in the tutorial, saved as PNG."""
    fig, (acc_ax, loss_ax) = plt.subplots(2, sharex=True, figsize=(7, 6))
    for ax, name in ((acc_ax, "accuracy"), (loss_ax, "loss")):
        for split in ("train", "val"):
            values = history.get(f"{split}_{name}")
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", label=f"{split}_{name}")
        ax.set_title(f"{name.capitalize()} values")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.legend()
    loss_ax.set_xlabel("epoch")
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], classes: Sequence[int], path: Path) -> None:
    """Counts as a heat map, rows true class, columns predicted, each cell labelled."""
    counts = np.asarray(matrix)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * k, 1.0 + 0.6 * k))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(k), [str(c) for c in classes])
    ax.set_yticks(range(k), [str(c) for c in classes])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    dark = counts.max() / 2 if counts.size else 0
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, str(n), ha="center", va="center", fontsize=8, color="white" if n > dark else "black")
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)


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
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)
