"""Figures of a run: the tutorial's history (a metric on top, loss below, train against
validation), and a figure per other logged value (a GAN's ``d_loss`` and ``g_loss``); for the
report, a classifier's confusion matrix and per-class accuracy, or a regression's
predicted-against-true and residual plots; for ``gradloop compare``, runs' learning curves overlaid.

Each ``plot_*`` writes one PNG, whole or not at all (:func:`gradloop.atomic.write_atomically`).
"""

from __future__ import annotations

import functools
import io
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

if "ipykernel" not in sys.modules:  # files only on servers and CI; a Jupyter kernel keeps its inline figures
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from gradloop.atomic import write_atomically  # noqa: E402
from gradloop.loop.state import validates  # noqa: E402
from gradloop.run.history import aligned_history, tutorial_history  # noqa: E402

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


def history_panels(history: Mapping[str, list[float]], metric: str | None = None, *, every: bool = False) -> list[str]:
    """The names :func:`history_figure` draws a panel of, top to bottom: the tutorial's two,
    :func:`top_metric` and loss; with ``every`` (a model's own train_step, whose logs are its own: a
    GAN's ``d_loss``, ``g_loss``), every logged value: the top metric, the others, the losses. Time is no panel."""
    names = list(dict.fromkeys(key.split("_", 1)[1] for key in history if key.startswith(("train_", "val_"))))
    names = [name for name in names if name != "time"]
    top = top_metric(history, metric)
    if not every:
        return [top, "loss"] if top else ["loss"]
    metrics = [name for name in names if "loss" not in name and name != top]
    losses = sorted((name for name in names if "loss" in name and name != top), key=lambda name: name == "loss")
    return [*([top] if top else []), *metrics, *losses] or ["loss"]


def history_figure(
    history: Mapping[str, list[float]] | Any, *, metric: str | None = None, every: bool = False
) -> Figure:
    """The history's panels sharing the epoch axis (:func:`history_panels`): :func:`top_metric` on top
    (when there is one), loss below (``every``: every logged value), each with its train and val curves.
    The caller closes the figure (in Jupyter, a cell ending in ``history_figure(trainer.fit(...))`` shows
    it). ``history``: lists by Keras' names (``loss``) or the tutorial's (``train_loss``), or the History
    ``fit`` returns, whose shorter ``val_`` lists (``validation_freq``) are drawn at the epochs they were measured."""
    if hasattr(history, "history"):
        validated = functools.partial(validates, validation_freq=getattr(history, "validation_freq", 1))
        history = aligned_history(history.history, validated)
    history = tutorial_history(history)
    names = history_panels(history, metric, every=every)
    fig, axes = plt.subplots(len(names), sharex=True, figsize=(7, 3 * max(2, len(names))), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        for split in ("train", "val"):
            points = _measured(history.get(f"{split}_{name}") or [])
            if points:
                ax.plot(*zip(*points), marker="o", label=f"{split}_{name}")
        _epoch_axes(ax, _TITLES.get(name, f"{name} values"))
        if ax.lines:
            ax.legend()
    axes[-1, 0].set_xlabel("epoch")
    fig.tight_layout()
    return fig


def _measured(values: Sequence[float | None]) -> list[tuple[int, float]]:
    """(epoch from 1, value) of the epochs that have one: validation every N epochs leaves the others null."""
    return [(epoch, value) for epoch, value in enumerate(values, start=1) if value is not None]


def _epoch_axes(ax, title: str) -> None:
    ax.set_title(title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.grid(alpha=0.3)


def plot_history(
    history: Mapping[str, list[float]], path: Path, *, metric: str | None = None, every: bool = False
) -> str | None:
    """:func:`history_figure`, saved as PNG; returns the top panel's metric (None: loss alone)."""
    fig = history_figure(history, metric=metric, every=every)
    _save(fig, path)
    return top_metric(history, metric)


def logged_names(history: Mapping[str, list[float]]) -> list[str]:
    """Every value the run logged, once, in the history's order: ``d_loss`` of ``train_d_loss`` and
    ``val_d_loss`` (whatever a model's own step returns), not the epoch's ``time``."""
    names = [key.split("_", 1)[1] for key in history if key.startswith(("train_", "val_"))]
    return [name for name in dict.fromkeys(names) if name != "time"]


def logged_figure(history: Mapping[str, list[float]], name: str) -> Figure:
    """One logged value per epoch: its ``train_`` and ``val_`` curves (those the history has). The
    caller closes the figure."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for split in ("train", "val"):
        points = _measured(history.get(f"{split}_{name}") or [])
        if points:
            ax.plot(*zip(*points), marker="o", label=f"{split}_{name}")
    _epoch_axes(ax, _TITLES.get(name, f"{name} values"))
    ax.set_xlabel("epoch")
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    return fig


def plot_logged(history: Mapping[str, list[float]], name: str, path: Path) -> None:
    """:func:`logged_figure`, saved as PNG."""
    _save(logged_figure(history, name), path)


# --------------------------------------------------------------------- runs side by side (gradloop compare)

_RUN_LINESTYLES = ("-", "--", ":", "-.")  # with ten colours: 40 runs drawn apart


def compared_metrics(histories: Sequence[Mapping[str, list[float]]], metrics: Sequence[str | None] = ()) -> list[str]:
    """The rows of :func:`compare_figure`: each run's :func:`top_metric` (given its run.json metric from
    ``metrics``) in the runs' order, then the other metrics any run has, by name, then loss."""
    names = {key.split("_", 1)[1] for history in histories for key in history if key.startswith(("train_", "val_"))}
    tops = [top_metric(history, metric) for history, metric in zip(histories, [*metrics, *[None] * len(histories)])]
    ordered = dict.fromkeys([*(t for t in tops if t), *sorted(names - set(_NOT_METRICS))])
    return [*ordered, *(["loss"] if "loss" in names else [])]


def compare_figure(histories: Mapping[str, Mapping[str, list[float]]], metrics: Sequence[str]) -> Figure:
    """Runs' learning curves overlaid: a row per metric, training on the left and validation on the
    right on one y scale, a colour per run and one legend above. The caller closes the figure."""
    fig, axes = plt.subplots(
        len(metrics),
        2,
        sharex=True,
        sharey="row",
        figsize=(11, 1.2 + 3 * len(metrics)),
        squeeze=False,
        layout="constrained",
    )
    for row, name in zip(axes, metrics):
        for ax, split in zip(row, ("train", "val")):
            for i, history in enumerate(histories.values()):
                points = _measured(history.get(f"{split}_{name}") or [])
                if points:
                    ax.plot(
                        *zip(*points),
                        marker="o",
                        markersize=3,
                        color=f"C{i % 10}",
                        linestyle=_RUN_LINESTYLES[i // 10 % len(_RUN_LINESTYLES)],
                        label=f"run {i}",
                    )
            _epoch_axes(ax, f"{split}_{name}")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    lines = {line.get_label(): line for ax in axes.flat for line in ax.lines}  # each run's line, from any panel
    names = [name.replace("$", r"\$") for name in histories]  # a run named a$b$ is text, not mathtext
    drawn = [(lines[f"run {i}"], name) for i, name in enumerate(names) if f"run {i}" in lines]
    if drawn:
        fig.legend(*zip(*drawn), loc="outside upper center", ncols=min(4, len(drawn)), fontsize=9)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (as :func:`_save` writes it), for a page to embed; the figure is closed."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, dpi=100)
    finally:
        plt.close(fig)
    return buffer.getvalue()


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


# --------------------------------------------------------------------- lr-find and sweeps


def plot_lr_range(
    lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float], path: Path, *, suggestion: float | None
) -> None:
    """The range test's loss against the learning rate (log axis): each step's loss faint, the
    smoothed loss bold, the suggested rate marked."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(lrs, losses, color="tab:blue", alpha=0.3, linewidth=1, label="loss per step")
    ax.plot(lrs, smoothed, color="tab:blue", linewidth=2, label="smoothed loss")
    if suggestion is not None:
        ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested lr {suggestion:.2g}")
    ax.set_xscale("log")
    if len(smoothed) and np.all(np.isfinite(smoothed)):  # the last steps' spikes would flatten the curve
        ax.set_ylim(min(0.0, float(np.min(losses))), 1.5 * float(np.max(smoothed)))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("Learning-rate range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def trial_values_figure(values: Mapping[int, tuple[float, str]], metric: str) -> Figure:
    """Each sweep trial's ``metric`` (trial number -> (value, state)), a point coloured by its state
    (complete or pruned). The caller closes the figure."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for state, colour in {"complete": "tab:blue", "pruned": "tab:orange"}.items():
        points = [(n, v) for n, (v, s) in values.items() if s == state]
        if points:
            ax.scatter(*zip(*points), color=colour, label=state, zorder=3)
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} of each trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers
    ax.grid(alpha=0.3)
    if ax.collections:
        ax.legend()
    fig.tight_layout()
    return fig


def importances_figure(importances: Mapping[str, float]) -> Figure:
    """One horizontal bar per option, the most important on top: its share of the variance of the
    metric across the trials (Optuna's fANOVA). The caller closes the figure."""
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 1.0 + 0.4 * len(names)))
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlim(0, 1)
    ax.set_xlabel("importance")
    ax.set_title("Option importances")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _save(fig: Figure, path: Path) -> None:
    try:
        write_atomically(Path(path), lambda tmp: fig.savefig(tmp, dpi=100))
    finally:
        plt.close(fig)
