"""What every source hands a run: examples by index, and their batches in a given order.

    examples.n, examples.y            how many, and every target (in memory: splits and classes need them)
    examples.subset(rows)             the examples at ``rows``, in that order
    examples.batches(order, b)        a tf.data.Dataset of (x, y) batches of the examples in ``order``
    examples.element_shape            one example's x shape (what the model takes)

Two kinds exist: :class:`ArrayExamples` (the data in memory, batches gathered
from tensors) and ``images.ImageFiles`` (paths in memory, pixels decoded from
disk inside the pipeline). Training draws each epoch's order from the seed and
the epoch alone (:func:`epochs`), so any epoch is rebuilt exactly on resume.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np

from gradloop.data import pipeline

if TYPE_CHECKING:
    import tensorflow as tf

    from gradloop.loop.in_memory import InMemory


class Examples(Protocol):
    y: np.ndarray

    @property
    def n(self) -> int: ...

    @property
    def element_shape(self) -> tuple[int, ...]: ...

    def subset(self, rows: np.ndarray) -> Examples: ...

    def batches(self, order: np.ndarray | None, batch_size: int) -> tf.data.Dataset: ...


class ArrayExamples:
    """Examples held in memory: ``x`` float32 (N, ...) ready for the model, ``y`` int64 labels or float32 targets."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def element_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, rows: np.ndarray) -> ArrayExamples:
        return ArrayExamples(self.x[rows], self.y[rows])

    def batches(self, order: np.ndarray | None, batch_size: int) -> tf.data.Dataset:
        if order is None:
            return pipeline.make_dataset(self.x, self.y, batch_size=batch_size, shuffle=False)
        return pipeline.batches_in_order(self.x, self.y, order, batch_size=batch_size)


def epochs(examples: Examples, *, batch_size: int, seed: int) -> Callable[[int], tf.data.Dataset | InMemory]:
    """Training data as ``epoch -> that epoch's batches``, epoch ``e`` in the order
    ``numpy.random.default_rng((seed, e)).permutation(n)`` (as :func:`pipeline.shuffled_epochs`).
    In memory: :class:`gradloop.loop.in_memory.InMemory`, whose step groups gather their batches themselves."""
    if isinstance(examples, ArrayExamples):
        from gradloop.loop.in_memory import InMemory

        x, targets = pipeline.checked_arrays(examples.x, examples.y, batch_size)
        return InMemory(x, targets, batch_size=batch_size, seed=seed)
    if getattr(examples, "y", 0) is None and hasattr(examples, "x"):  # x alone in memory (sources.unlabeled)
        from gradloop.loop.in_memory import InMemory

        return InMemory(examples.x, batch_size=batch_size, seed=seed)
    return lambda epoch: examples.batches(np.random.default_rng((seed, epoch)).permutation(examples.n), batch_size)
