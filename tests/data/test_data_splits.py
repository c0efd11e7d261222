"""Tests of gradloop.data.builtin.splits: a run's splits are exactly the ones training and evaluation built
themselves."""

from __future__ import annotations

import numpy as np
import pytest
from test_data_idx import random_split

from gradloop import data
from gradloop.errors import ConfigError, DataError


def raw_data(n_train: int | None = 60, n_test: int | None = 50) -> data.RawData:
    """A source as the readers return it (int64 labels, every class present); a split of None samples is absent."""

    def split(n: int | None, seed: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        if n is None:
            return None, None
        images, _ = random_split(n, seed)
        return images, np.random.default_rng(seed).permutation(np.arange(n) % 10)

    return data.RawData(*split(n_train, 11), *split(n_test, 12), source="made here")


def assert_same_split(got: tuple[np.ndarray, np.ndarray], expected: tuple[np.ndarray, np.ndarray]) -> None:
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("classes", [(3, 1, 7), "0-9", None])
@pytest.mark.parametrize("val_fraction", [0, 1 / 6, 0.5])
def test_run_splits_equal_select_classes_then_split_train_val(classes, val_fraction):
    raw = raw_data()
    splits = data.run_splits(raw, classes=classes, val_fraction=val_fraction, seed=5)
    x, y = data.select_classes(raw.x_train, raw.y_train, classes)
    train, val = data.split_train_val(x, y, val_fraction=val_fraction, seed=5)
    assert_same_split(splits.train, train)
    assert_same_split(splits.val, val)
    assert_same_split(splits.test, data.select_classes(raw.x_test, raw.y_test, classes))
    assert splits.source == "made here"
    assert splits.train[0].dtype == np.uint8 and splits.train[1].dtype == np.int64  # unscaled, remapped
    for name in ("train", "val", "test"):
        assert splits.get(name) is getattr(splits, name)


def test_run_splits_then_scaling_equals_training_s_order():
    # Training scaled the selected images before splitting; scaling after the split gives the same bits.
    raw = raw_data(n_train=90)
    x, y = data.select_classes(raw.x_train, raw.y_train, (0, 1, 2))
    x = data.prepare_images(x, flatten=True)
    train, val = data.split_train_val(x, y, val_fraction=0.2, seed=3)
    splits = data.run_splits(raw, classes=(0, 1, 2), val_fraction=0.2, seed=3)
    for got, expected in ((splits.train, train), (splits.val, val)):
        assert_same_split((data.prepare_images(got[0], flatten=True), got[1]), expected)


def test_run_splits_on_mnist_sample_has_no_test_split():
    raw = data.load_mnist_sample()
    splits = data.run_splits(raw, classes=(0, 1), val_fraction=0.1, seed=0)
    assert splits.test is None and splits.get("test") is None
    assert len(splits.train[0]) + len(splits.val[0]) == 1000 and len(splits.val[0]) == 100
    assert sorted(set(splits.train[1].tolist())) == [0, 1]
    assert splits.source == raw.source


def test_run_splits_without_a_training_split():
    raw = raw_data(n_train=None)
    splits = data.run_splits(raw, classes=(4, 2), val_fraction=0.1, seed=0)
    assert splits.train is None and splits.val is None
    assert splits.get("train") is None and splits.get("val") is None
    assert_same_split(splits.test, data.select_classes(raw.x_test, raw.y_test, (4, 2)))


def test_run_splits_val_fraction_zero_gives_an_empty_val_split():
    splits = data.run_splits(raw_data(), classes=None, val_fraction=0, seed=0)
    assert len(splits.train[0]) == 60
    assert splits.val[0].shape == (0, 28, 28) and splits.val[1].shape == (0,)


def test_run_splits_raises_what_select_classes_and_split_train_val_raise_for_the_split_asked_for():
    raw = raw_data()
    with pytest.raises(ConfigError, match="out of range"):
        data.run_splits(raw, classes=(0, 10), val_fraction=0.1, seed=0).train
    with pytest.raises(ConfigError, match=r"in \[0, 1\)"):
        data.run_splits(raw, classes=(0, 1), val_fraction=1.0, seed=0).val
    only_zeros_and_ones = data.RawData(
        raw.x_train[:4], np.array([0, 1, 0, 1]), raw.x_test, raw.y_test, source="made here"
    )
    splits = data.run_splits(only_zeros_and_ones, classes=(0, 1, 2), val_fraction=0, seed=0)
    assert len(splits.test[1]) == (np.isin(raw.y_test, (0, 1, 2))).sum()  # the test split has every class
    with pytest.raises(DataError, match=r"classes \[2\] have no samples"):
        splits.train


def test_splits_get_refuses_unknown_names_and_splits_are_read_only():
    splits = data.run_splits(raw_data(), classes=(0, 1), val_fraction=0.1, seed=0)
    with pytest.raises(DataError, match="split must be one of test, val, train, got 'validation'"):
        splits.get("validation")
    with pytest.raises(AttributeError):
        splits.train = None
