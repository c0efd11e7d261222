"""Examples without labels, in memory: ``x`` alone, for a model that brings its own ``train_step``.

    examples = UnlabeledArrays(x)          y is None: no classes, no targets
    examples.subset(rows)                  x[rows] (the run's validation split is of x alone)
    examples.batches(order, b)             a tf.data.Dataset of ``(x,)`` batches, rows in ``order``

Each batch is a 1-tuple ``(x,)``, as ``model.fit(x)`` hands its ``train_step`` and as
``gradloop.InMemory(x)`` (no y) gathers them, so a step reads the same structure from
either (Keras' ``unpack_x_y_sample_weight`` takes it apart). Training feeds these
arrays through ``InMemory(x)`` (:func:`gradloop.data.examples.epochs`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from gradloop.errors import DataError

if TYPE_CHECKING:
    import tensorflow as tf


class UnlabeledArrays:
    """``x`` float32 ``(N, ...)`` ready for the model, and no labels (``y`` is None)."""

    y = None

    def __init__(self, x: np.ndarray) -> None:
        self.x = x

    @property
    def n(self) -> int:
        return len(self.x)

    @property
    def element_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, rows: np.ndarray) -> UnlabeledArrays:
        return UnlabeledArrays(self.x[rows])

    def batches(self, order: np.ndarray | None, batch_size: int) -> tf.data.Dataset:
        """The ``(x,)`` batches of the rows in ``order`` (None: the natural order), the last one possibly partial."""
        import tensorflow as tf

        rows = np.arange(self.n) if order is None else np.asarray(order, dtype=np.int64)
        if len(rows) == 0:
            raise DataError("cannot build a pipeline over 0 samples; pass a non-empty split")
        x, order_t, b, n = tf.constant(self.x), tf.constant(rows), int(batch_size), len(rows)

        def batch(step: tf.Tensor) -> tuple[tf.Tensor]:
            return (tf.gather(x, order_t[step * b : tf.minimum((step + 1) * b, n)]),)

        steps = math.ceil(n / b)
        return tf.data.Dataset.range(steps).map(batch).apply(tf.data.experimental.assert_cardinality(steps))
