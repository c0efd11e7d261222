"""Tests of gradloop.data.pipeline: the tf.data batches, their order and their options."""

from __future__ import annotations

import numpy as np
import pytest

from gradloop import data
from gradloop.errors import ConfigError, DataError

# --------------------------------------------------------------------- tf.data pipeline


def epoch_labels(ds) -> list[int]:
    return np.concatenate([y.numpy() for _, y in ds]).tolist()


def test_make_dataset_batches_and_values():
    pixels = np.broadcast_to(np.arange(10, dtype=np.uint8)[:, None, None] * 25, (10, 28, 28))  # image i is all 25*i
    x = data.prepare_images(pixels, flatten=True)
    ds = data.make_dataset(x, np.arange(10), batch_size=4, shuffle=False)
    assert len(ds) == 3
    batches = list(ds)
    assert [tuple(bx.shape) for bx, _ in batches] == [(4, 784), (4, 784), (2, 784)]
    assert batches[0][0].dtype.name == "float32" and batches[0][1].dtype.name == "int64"
    assert epoch_labels(ds) == list(range(10))
    for bx, by in batches:  # each image travels with its own label, scaled to [0, 1]
        np.testing.assert_allclose(bx.numpy()[:, 0], by.numpy() * 25 / 255, rtol=1e-6)
        assert bx.numpy().min() >= 0.0 and bx.numpy().max() <= 1.0


@pytest.mark.parametrize("n", [3, 8, 10])  # fewer than a batch, whole batches, a partial last batch
def test_batches_keep_every_dimension_of_images_and_labels(n):
    x = np.arange(n * 28 * 28, dtype=np.float32).reshape(n, 28, 28, 1)
    y = np.stack([np.arange(n), -np.arange(n)], axis=1)  # two labels per sample
    for ds in (
        data.make_dataset(x, y, batch_size=4, shuffle=True, seed=1),
        data.shuffled_epochs(x, y, batch_size=4, seed=1)(0),
    ):
        batches = list(ds)
        assert len(ds) == len(batches) == -(-n // 4)
        seen = np.concatenate([by.numpy() for _, by in batches])
        assert sorted(seen[:, 0]) == list(range(n)) and np.array_equal(seen[:, 1], -seen[:, 0])
        for bx, by in batches:
            assert bx.shape[1:] == (28, 28, 1) and by.shape[1:] == (2,)
            np.testing.assert_array_equal(bx.numpy()[:, 0, 0, 0], by.numpy()[:, 0] * 784)


def test_make_dataset_shuffles_each_epoch_deterministically():
    x, y = np.zeros((10, 3), np.float32), np.arange(10)
    ds = data.make_dataset(x, y, batch_size=4, shuffle=True, seed=7)
    first, second = epoch_labels(ds), epoch_labels(ds)
    assert sorted(first) == sorted(second) == list(range(10))  # every sample exactly once per epoch
    assert first != second
    fresh = data.make_dataset(x, y, batch_size=4, shuffle=True, seed=7)
    assert [epoch_labels(fresh), epoch_labels(fresh)] == [first, second]


def test_in_memory_pipelines_run_without_the_autotuner():
    # Its thread made an iterator's deletion wait up to as long as the iterator had run (see _untuned).
    x, y = np.zeros((10, 3), np.float32), np.arange(10)
    for ds in (
        data.make_dataset(x, y, batch_size=4, shuffle=False),
        data.make_dataset(x, y, batch_size=4, shuffle=True, seed=1),
        data.shuffled_epochs(x, y, batch_size=4, seed=1)(2),
    ):
        assert ds.options().autotune.enabled is False
        assert ds.options().experimental_optimization.apply_default_optimizations is False


def test_make_dataset_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="batch_size"):
        data.make_dataset(np.zeros((2, 3), np.float32), np.zeros(2), batch_size=0, shuffle=False)
    with pytest.raises(DataError, match="0 samples"):
        data.make_dataset(np.zeros((0, 3), np.float32), np.zeros(0), batch_size=2, shuffle=False)
    with pytest.raises(DataError, match="prepare_images"):
        data.make_dataset(np.zeros((2, 3), np.uint8), np.zeros(2), batch_size=2, shuffle=False)


def test_shuffled_epochs_orders_are_a_function_of_seed_and_epoch_alone():
    import tensorflow as tf

    x, y = np.zeros((10, 3), np.float32), np.arange(10)
    epochs = data.shuffled_epochs(x, y, batch_size=4, seed=7)
    first, second = epoch_labels(epochs(0)), epoch_labels(epochs(1))
    assert sorted(first) == sorted(second) == list(range(10)) and first != second
    assert [len(b) for b, _ in epochs(0)] == [4, 4, 2] and len(epochs(3)) == 3
    tf.random.set_seed(123)  # TensorFlow's seeds play no part: the order is numpy's
    again = data.shuffled_epochs(x, y, batch_size=4, seed=7)
    assert [epoch_labels(again(1)), epoch_labels(again(0))] == [second, first]  # any epoch, in any order
    assert first == np.random.default_rng((7, 0)).permutation(10).tolist()
    with pytest.raises(ConfigError, match="batch_size"):
        data.shuffled_epochs(x, y, batch_size=0, seed=7)
