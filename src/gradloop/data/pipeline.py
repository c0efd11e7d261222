"""The tf.data pipeline: in-memory arrays to batches, reshuffled every epoch.

TensorFlow is imported only inside these functions: importing it takes
seconds and nothing else in gradloop.data needs it, while the CLI imports
this package (through its config) to check arguments, and an argument error
must stay instant.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from gradloop.errors import ConfigError, DataError

if TYPE_CHECKING:
    import tensorflow as tf


def make_dataset(
    x: np.ndarray, y: np.ndarray, *, batch_size: int, shuffle: bool, seed: int | None = None
) -> tf.data.Dataset:
    """A tf.data pipeline of (x float32, y int64 labels or float32 targets) batches, the last one possibly partial.

    Each new iterator (epoch) reshuffles, deterministically given ``seed``: it
    draws one permutation of the indices, gathers the epoch in that order and
    slices it into batches (see :func:`_batches`). Autotuning is off, also for
    stages appended to it (see :func:`_untuned`).
    """
    import tensorflow as tf

    images, labels = _pipeline_tensors(x, y, batch_size)
    n, batch_size = len(x), int(batch_size)
    if not shuffle:
        return _untuned(_batches(images, labels, batch_size, n))
    order = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True).batch(n)  # one per iteration
    return _batches_in_order(order, images, labels, batch_size, n)


def shuffled_epochs(x: np.ndarray, y: np.ndarray, *, batch_size: int, seed: int) -> Callable[[int], tf.data.Dataset]:
    """Training data as ``epoch -> that epoch's batches`` (``Trainer.fit`` takes either).

    Epoch ``e`` is in the order ``numpy.random.default_rng((seed, e)).permutation(n)``:
    a function of the seed and the epoch alone, so any epoch's order can be
    rebuilt in a new process, which an exact resume needs. (``make_dataset``'s
    reshuffling draws each epoch's seed from tf.data's own generator, whose
    position an iterator checkpoint does not reliably restore.)
    """
    import tensorflow as tf

    images, labels = _pipeline_tensors(x, y, batch_size)  # converted once, shared by every epoch
    n, batch_size = len(x), int(batch_size)

    def epoch_batches(epoch: int) -> tf.data.Dataset:
        order = np.random.default_rng((seed, epoch)).permutation(n)
        return _batches_in_order(tf.data.Dataset.from_tensors(order), images, labels, batch_size, n)

    return epoch_batches


def batches_in_order(x: np.ndarray, y: np.ndarray, order: np.ndarray, *, batch_size: int) -> tf.data.Dataset:
    """The batches of ``x`` and ``y`` taken in ``order`` (a permutation of their rows, or some of them)."""
    import tensorflow as tf

    images, labels = _pipeline_tensors(x, y, batch_size)
    rows = np.asarray(order, dtype=np.int64)
    return _batches_in_order(tf.data.Dataset.from_tensors(rows), images, labels, int(batch_size), len(rows))


def _pipeline_tensors(x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    import tensorflow as tf

    x, targets = checked_arrays(x, y, batch_size)
    return tf.constant(np.asarray(x, dtype=np.float32)), tf.constant(targets)


def checked_arrays(x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and its targets as training takes them (float32 for regression, else int64 labels), once
    :func:`check_arrays` passes them."""
    check_arrays(x, y, batch_size)
    return x, np.asarray(y, dtype=np.float32 if np.asarray(y).dtype.kind == "f" else np.int64)


def check_arrays(x: np.ndarray, y: np.ndarray, batch_size: int) -> None:
    """Images (float32, already scaled) and as many labels, a positive batch size: else a one-line error."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if np.asarray(x).dtype.kind != "f":
        raise DataError(f"images have dtype {np.asarray(x).dtype}, expected float32; pass them through prepare_images")
    if len(x) != len(y):
        raise DataError(f"{len(x)} images but {len(y)} labels; pass matching arrays")
    if len(x) == 0:
        raise DataError("cannot build a pipeline over 0 samples; pass a non-empty split")


def _batches_in_order(
    order: tf.data.Dataset, images: tf.Tensor, labels: tf.Tensor, batch_size: int, n: int
) -> tf.data.Dataset:
    """The batches of the data gathered in ``order`` (a dataset of one permutation).

    The gather runs when an iterator starts, not now: a dataset kept for later
    (the next epoch's) holds only its order, not a copy of the data.
    """
    import tensorflow as tf

    batches = order.flat_map(lambda rows: _batches(tf.gather(images, rows), tf.gather(labels, rows), batch_size, n))
    return _untuned(batches.apply(tf.data.experimental.assert_cardinality(math.ceil(n / batch_size))))


def _untuned(batches: tf.data.Dataset) -> tf.data.Dataset:
    """``batches`` without tf.data's autotuning and default graph rewrites.

    Nothing here needs them: every stage is a slice or one gather of in-memory
    tensors. They cost, and ``fit`` pays it every epoch, since it starts and deletes
    an iterator per epoch: the rewrites run per iterator (growing with the data) and
    inject an autotuned prefetch, and the tuner's thread can make deleting an
    iterator wait for its next wake-up (figures in docs/performance.md). The options carry to stages a
    user appends (a ``.prefetch(AUTOTUNE)`` added after runs untuned); a user's own
    ``with_options`` overrides them.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.apply_default_optimizations = False
    return batches.with_options(options)


def _batches(images: tf.Tensor, labels: tf.Tensor, batch_size: int, n: int) -> tf.data.Dataset:
    """``images`` and ``labels`` (``n`` rows, already in the epoch's order) cut into batches.

    The full batches are rows of one ``[batches, batch_size, ...]`` tensor and
    the partial last batch is appended, so an element costs one slice: no
    per-sample elements (``.batch`` pulls ``batch_size`` of them per batch)
    and no function call per batch (a ``.map`` gather per batch costs a small
    step a measurable share: docs/performance.md). No prefetch either (see
    :func:`_untuned`): a slice is a copy of one batch, cheaper than handing it
    over between threads. The price is one copy of the epoch's data, gathered in its order.
    An iterator checkpoint holds a position (and ``make_dataset``'s current
    permutation), never images.
    """
    import tensorflow as tf

    full = n // batch_size * batch_size
    batches = tf.data.Dataset.from_tensor_slices(
        (
            tf.reshape(images[:full], [-1, batch_size, *images.shape[1:]]),
            tf.reshape(labels[:full], [-1, batch_size, *labels.shape[1:]]),
        )
    )
    if full < n:
        batches = batches.concatenate(tf.data.Dataset.from_tensors((images[full:], labels[full:])))
    return batches
