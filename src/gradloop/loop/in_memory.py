"""Training data held in memory, batched inside the compiled step group.

    train = InMemory(x, y, batch_size=32, seed=0)      # or (x, y, sample_weight); x, y may be dicts or tuples
    trainer.fit(train, epochs=10)                       # epoch e: numpy.random.default_rng((seed, e)).permutation(n)

A tf.data pipeline hands the loop one batch per step through an iterator op,
which stops the graph around it from being one computation. Here the arrays
become tensors once, each epoch is one permutation of the rows, and a compiled
call of ``steps_per_execution`` steps gathers every batch by its index inside
itself: the whole group, gathers included, can be one XLA computation (as a
``jax.lax.scan`` over steps), see :meth:`gradloop.loop.compiled.CompiledModel.make_train_function`.
The position is the step alone, so a checkpoint holds no iterator and a resume
rebuilds the epoch's order from the seed and the epoch. The order is
``gradloop.data.shuffled_epochs``' own, so both give the same batches.

:class:`Epoch` is one epoch's order from a step on, what ``fit`` runs on where
it would run on a dataset; :meth:`Epoch.dataset` gives the very same batches as
a ``tf.data.Dataset`` (for building the model, for a distributed strategy,
which splits a dataset's batches over replicas, and for evaluation).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tensorflow as tf


class InMemory:
    """``epoch -> Epoch``: arrays (a structure of them, rows first) as the training data of ``Trainer.fit``.

    ``x``, ``y``, ``sample_weight``: numpy arrays or tensors with the same number of rows
    (``x`` and ``y`` may be dicts or tuples of them, as for ``model.fit``). Every epoch is
    shuffled with ``seed`` (``shuffle=False``: the natural order); the last batch may be partial.
    """

    def __init__(
        self, x: Any, y: Any = None, sample_weight: Any = None, *, batch_size: int, seed: int = 0, shuffle: bool = True
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        parts = tuple(part for part in (x, y, sample_weight) if part is not None)
        sizes = {int(np.shape(t)[0]) for t in tf.nest.flatten(parts)}
        if len(sizes) != 1 or 0 in sizes:
            raise ValueError(
                f"x, y and sample_weight must have the same number of rows (at least 1), got {sorted(sizes)}"
            )
        self.n = sizes.pop()
        self.batch_size, self.seed, self.shuffle = int(batch_size), seed, shuffle
        self.tensors = tf.nest.map_structure(_as_tensor, parts)  # converted once, shared by every epoch

    @property
    def steps(self) -> int:
        """Batches in an epoch, the partial last one included."""
        return math.ceil(self.n / self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng((self.seed, epoch)).permutation(self.n) if self.shuffle else np.arange(self.n)

    def __call__(self, epoch: int) -> Epoch:
        return Epoch(self, tf.constant(self.order(epoch), tf.int32), 0, self.steps)


class Epoch:
    """Steps ``start`` to ``stop`` of one epoch of :class:`InMemory` data, rows in ``order``."""

    def __init__(self, data: InMemory, order: tf.Tensor, start: int, stop: int) -> None:
        self.data, self.order, self.start, self.stop = data, order, start, stop

    @property
    def steps(self) -> int:
        return self.stop - self.start

    def skip(self, steps: int) -> Epoch:
        return Epoch(self.data, self.order, min(self.start + steps, self.stop), self.stop)

    def take(self, steps: int) -> Epoch:
        return Epoch(self.data, self.order, self.start, min(self.start + steps, self.stop))

    def batch_size_at(self, step: int) -> int:
        return min(self.data.batch_size, self.data.n - step * self.data.batch_size)

    def dataset(self) -> tf.data.Dataset:
        """The same batches as a tf.data pipeline: each gathered from the tensors by its rows."""
        b, n, tensors, order = self.data.batch_size, self.data.n, self.data.tensors, self.order

        def batch(step: tf.Tensor) -> Any:
            rows = order[step * b : tf.minimum((step + 1) * b, n)]
            return tf.nest.map_structure(lambda t: tf.gather(t, rows), tensors)

        steps = tf.data.Dataset.range(self.start, self.stop)
        return steps.map(batch).apply(tf.data.experimental.assert_cardinality(self.steps))


class Position:
    """Where ``fit`` stands in an :class:`Epoch`: the loop's iterator for in-memory data."""

    def __init__(self, epoch: Epoch) -> None:
        self.epoch, self.step = epoch, epoch.start


def element_structure(data: Any) -> Any:
    """The structure of ``data``'s batches: an :class:`Epoch`'s tensors (whole), a dataset's ``element_spec``."""
    return data.data.tensors if isinstance(data, Epoch) else data.element_spec


def first_batch(data: Any) -> Any:
    """``data``'s first batch: an :class:`Epoch`'s gathered here (its dataset would hold a copy of the
    arrays: tf.data captures tensors by value), a dataset's from an iterator."""
    if isinstance(data, Epoch):
        return gather_batch(
            data.data.tensors, data.order, tf.constant(data.start), data.data.batch_size, data.batch_size_at(data.start)
        )
    return next(iter(data.take(1)))


def as_dataset(data: Any) -> Any:
    """``data`` as a ``tf.data.Dataset``: an :class:`Epoch`'s batches, or a dataset as it is."""
    return data.dataset() if isinstance(data, Epoch) else data


def gather_batch(tensors: Any, order: tf.Tensor, step: tf.Tensor, batch_size: int, size: int) -> Any:
    """In a compiled function: batch ``step`` of the epoch, its first ``size`` rows (all ``batch_size`` of
    them but in a partial last batch) from ``step * batch_size`` on, gathered by index, so that its shape
    is static (XLA compiles one shape)."""
    rows = tf.gather(order, step * batch_size + tf.range(size))
    return tf.nest.map_structure(lambda t: tf.gather(t, rows), tensors)


def _as_tensor(array: Any) -> tf.Tensor:
    array = array if isinstance(array, tf.Tensor) else np.asarray(array)
    if isinstance(array, np.ndarray) and array.dtype == np.float64:
        array = array.astype(np.float32)  # Keras' floatx, as model.fit converts
    # A tensor converted from a numpy array leaves a second copy of it alive until a later trace frees
    # it; the identity's output owns one copy (tests/loop/test_in_memory.py measures both).
    return tf.identity(tf.convert_to_tensor(array))
