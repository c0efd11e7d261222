"""Tests of gradloop.data.builtin.prepare: class selection, scaling and the train/validation split."""

from __future__ import annotations

import numpy as np
import pytest

from gradloop import data
from gradloop.errors import ConfigError, DataError

# --------------------------------------------------------------------- classes


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("0,1,2", (0, 1, 2)),
        ("7, 3", (7, 3)),
        ("0-4", (0, 1, 2, 3, 4)),
        ("9,0-2", (9, 0, 1, 2)),
        ("all", tuple(range(10))),
        (" ALL ", tuple(range(10))),
        (None, tuple(range(10))),
        ([5, 3], (5, 3)),
        (np.array([1, 2]), (1, 2)),
    ],
)
def test_parse_classes_valid(spec, expected):
    assert data.parse_classes(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "no classes"),
        ([], "no classes"),
        ("3", "at least 2 classes"),
        ("0,a", "'a' .* is not an integer"),
        ("0,,1", "'' .* is not an integer"),
        ("1.5,2", "'1.5'"),
        ("1,2,1", r"\[1\] are listed twice"),
        ("0,10", r"\[10\] are out of range"),
        ("-1,2", r"\[-1\] are out of range"),
        ("4-2", "runs backwards"),
        ([1, True], "True is not an integer"),
        (5, "must be a list"),
    ],
)
def test_parse_classes_invalid(spec, message):
    with pytest.raises(ConfigError, match=message):
        data.parse_classes(spec)


def test_select_classes_remaps_in_the_given_order():
    y = np.array([0, 1, 2, 3, 1, 3, 9])
    x = np.arange(len(y))[:, None] * np.ones((1, 2), np.uint8)
    x_sel, y_sel = data.select_classes(x, y, (3, 1))
    assert x_sel[:, 0].tolist() == [1, 3, 4, 5]  # original order of the samples is kept
    assert y_sel.tolist() == [1, 0, 1, 0]  # class 3 -> 0, class 1 -> 1
    assert y_sel.dtype == np.int64


@pytest.mark.parametrize(
    ("labels", "message"),
    [([0, 1, 10], "from 0 to 10, outside 0..9"), ([-1, 0, 1], "from -1 to 1"), ([0, 0, 2], r"classes \[1\] have no")],
)
def test_select_classes_rejects_bad_labels(labels, message):
    with pytest.raises(DataError, match=message):
        data.select_classes(np.zeros((3, 28, 28), np.uint8), np.array(labels), (0, 1))


# --------------------------------------------------------------------- preparing and splitting


def test_prepare_images():
    x = np.array([[[0] * 28] * 28, [[255] * 28] * 28], np.uint8)
    flat = data.prepare_images(x, flatten=True)
    assert flat.shape == (2, 784) and flat.dtype == np.float32
    assert flat[0].max() == 0.0 and flat[1].min() == 1.0
    assert data.prepare_images(x, flatten=False).shape == (2, 28, 28, 1)
    with pytest.raises(DataError, match="uint8"):
        data.prepare_images(flat, flatten=True)


def test_split_train_val_sizes_determinism_and_coverage():
    x, y = np.zeros((60, 28, 28), np.uint8), np.arange(60)
    (x_train, y_train), (x_val, y_val) = data.split_train_val(x, y, val_fraction=1 / 6, seed=0)
    assert (len(x_train), len(y_train), len(x_val), len(y_val)) == (50, 50, 10, 10)
    assert sorted(np.concatenate([y_train, y_val]).tolist()) == list(range(60))
    (_, y_again), (_, y_val_again) = data.split_train_val(x, y, val_fraction=1 / 6, seed=0)
    (_, y_other), _ = data.split_train_val(x, y, val_fraction=1 / 6, seed=1)
    assert y_again.tolist() == y_train.tolist() and y_val_again.tolist() == y_val.tolist()
    assert y_other.tolist() != y_train.tolist()
    (x_all, _), (x_none, y_none) = data.split_train_val(x, y, val_fraction=0, seed=0)
    assert x_all.shape == (60, 28, 28) and x_none.shape == (0, 28, 28) and y_none.shape == (0,)


@pytest.mark.parametrize(
    ("n", "fraction", "message"),
    [
        (60, -0.1, r"in \[0, 1\)"),
        (60, 1.0, r"in \[0, 1\)"),
        (60, 0.001, "no validation"),
        (10, 0.96, "no training"),
    ],
)
def test_split_train_val_rejects_bad_fractions(n, fraction, message):
    with pytest.raises(ConfigError, match=message):
        data.split_train_val(np.zeros((n, 2)), np.zeros(n), val_fraction=fraction, seed=0)
