"""A run's history: per-epoch lists in the tutorial's names, and run.json's account of them.

    Keras' names            loss, accuracy, val_loss, val_accuracy, train_time
    the tutorial's names    train_loss, train_accuracy, val_loss, val_accuracy, train_time
                            (:func:`tutorial_history`; history.json and history.csv hold these)

Every list has one entry per epoch: an epoch that was not validated has None in its ``val_``
lists (:func:`aligned_history`). :func:`progress` is what run.json says of them after each epoch
(``epochs_done``, ``train_seconds``, ``best``), so that ``gradloop runs`` reads one small file per
run. Nothing here reads or writes a file: :class:`gradloop.run.folder.RunDir` does.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping
from typing import Any


def tutorial_history(history: Mapping[str, list[float]]) -> dict[str, list[float]]:
    """Keras names -> the tutorial's: ``loss`` -> ``train_loss``, ``val_*`` unchanged."""
    return {
        (k if k.startswith(("val_", "train_")) else f"train_{k}"): [None if v is None else float(v) for v in vs]
        for k, vs in history.items()
    }


def history_csv(history: Mapping[str, list[float]]) -> str:
    keys = list(history)
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["epoch", *keys])
    for i in range(len(history[keys[0]]) if keys else 0):
        writer.writerow([i + 1, *("" if history[k][i] is None else f"{history[k][i]:.6g}" for k in keys)])
    return out.getvalue()


def aligned_history(keras_history: Mapping[str, list[float]], validated: Callable[[int], bool]) -> dict[str, list]:
    """Keras' history with every list one entry per epoch: its ``val_`` lists, which hold the
    validated epochs only (``validated(epoch)``, from 0), get None for the others."""
    epochs = max((len(v) for k, v in keras_history.items() if not k.startswith("val_")), default=0)
    aligned = {}
    for key, values in keras_history.items():
        if key.startswith("val_") and len(values) < epochs:
            entries = iter(values)
            values = [next(entries, None) if validated(e) else None for e in range(epochs)]
        aligned[key] = list(values)
    return aligned


BEST = {"metric": "val_loss", "mode": "min"}  # what a run's best epoch is when run.json names nothing else


def progress(history: Mapping[str, list[float]], best: Any = None) -> dict[str, Any]:
    """run.json's account of the epochs in ``history`` (the tutorial's names), for ``gradloop runs``:

    epochs_done     how many there are
    train_seconds   their training passes' time (``train_time``) summed; validation not included
    best            {metric, mode, value, epoch}: the first epoch (from 1) where ``best["metric"]``
                    was highest (mode ``max``) or lowest (``min``), or without value and epoch when
                    the history has no finite value of it; when ``best`` names nothing or the
                    default (val_loss), :func:`default_best`'s measure
    """
    ok = isinstance(best, Mapping) and isinstance(best.get("metric"), str) and best.get("mode") in ("max", "min")
    spec = {"metric": best["metric"], "mode": best["mode"]} if ok else dict(BEST)
    if spec == BEST:  # nothing but the default named: a run that logs no loss is judged by its own
        spec = default_best(history)
    values = [v if _finite(v) else None for v in history.get(spec["metric"], [])]
    epochs = [i for i, v in enumerate(values) if v is not None]
    if epochs:
        pick = max if spec["mode"] == "max" else min  # both return the first of equal values: the earliest epoch
        epoch = pick(epochs, key=values.__getitem__)
        spec.update(value=values[epoch], epoch=epoch + 1)
    return {
        "epochs_done": max((len(v) for v in history.values()), default=0),
        "train_seconds": round(sum(v for v in history.get("train_time", []) if _finite(v)), 3),
        "best": spec,
    }


def default_best(history: Mapping[str, list[float]]) -> dict[str, str]:
    """What the best epoch is when nothing names it: the lowest val_loss (:data:`BEST`); for a run that logs
    no ``loss`` (a model's own step: a GAN's ``d_loss`` and ``g_loss``), the lowest of its first logged loss,
    validation's before training's."""
    if "val_loss" in history or "train_loss" in history:
        return dict(BEST)
    losses = [key for key in history if key.startswith(("val_", "train_")) and key.endswith("loss")]
    logged = sorted(losses, key=lambda key: not key.startswith("val_"))  # stable: the history's order within each
    return {"metric": logged[0], "mode": "min"} if logged else dict(BEST)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def first_metric(info: Mapping[str, Any]) -> str | None:
    """run.json's first metric other than the loss (the history's top panel), if it names one."""
    metrics = info.get("metrics")
    names = [m for m in metrics if isinstance(m, str) and m != "loss"] if isinstance(metrics, list) else []
    return names[0] if names else None
