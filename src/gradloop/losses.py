"""The loss and metrics a Trainer is given, read the way ``model.compile`` reads them.

Two things differ from taking them as they come:

- the loss is used *summed* over the batch and divided by the global batch
  size (see :mod:`gradloop.distribute`), which is the batch mean on one
  device and each replica's exact share of it under a strategy;
- ``"accuracy"`` means the accuracy that fits the loss (sparse labels get
  ``SparseCategoricalAccuracy``), as in ``model.compile(metrics=["accuracy"])``.
"""

from __future__ import annotations

import copy
from typing import Any

import keras
import tensorflow as tf


def summed(loss: Any) -> Any:
    """``loss`` summed over the batch instead of averaged."""
    if isinstance(loss, keras.losses.Loss):
        total = copy.copy(loss)
        total.reduction = "sum"
        return total
    return lambda y, y_pred: tf.reduce_sum(loss(y, y_pred))


def resolve_metric(metric: keras.metrics.Metric | str, loss: Any) -> keras.metrics.Metric:
    """A metric object for ``metric``; ``"accuracy"``/``"acc"`` chosen by the loss."""
    if not isinstance(metric, str) or metric.lower() not in ("accuracy", "acc"):
        resolved = keras.metrics.get(metric)
        if isinstance(resolved, keras.metrics.Metric):
            if isinstance(metric, str):
                resolved.name = metric  # "mae" is history's "mae", as in model.compile, not "mean_absolute_error"
            return resolved
        # A function such as "mae"'s: averaged over the epoch, named as given, as model.compile does.
        return keras.metrics.MeanMetricWrapper(resolved, name=metric if isinstance(metric, str) else resolved.__name__)
    if isinstance(loss, keras.losses.SparseCategoricalCrossentropy):
        return keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    if isinstance(loss, keras.losses.CategoricalCrossentropy):
        return keras.metrics.CategoricalAccuracy(name="accuracy")
    if isinstance(loss, keras.losses.BinaryCrossentropy):
        return keras.metrics.BinaryAccuracy(name="accuracy")
    return keras.metrics.Accuracy(name="accuracy")
