"""Tests of gradloop.data.builtin.npz: the Keras-style .npz reader on small archives made here."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from test_data_idx import random_split

from gradloop import data
from gradloop.data import sources
from gradloop.data.sources import arrays
from gradloop.errors import ConfigError, DataError

# --------------------------------------------------------------------- load_npz


def test_load_npz_valid(tmp_path):
    (x_train, y_train), (x_test, y_test) = random_split(8, seed=7), random_split(3, seed=8)
    path = tmp_path / "mnist.npz"
    np.savez_compressed(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    raw = data.load_npz(path)
    np.testing.assert_array_equal(raw.x_train, x_train)
    np.testing.assert_array_equal(raw.y_test, y_test)
    assert raw.y_train.dtype == np.int64 and raw.x_test.dtype == np.uint8
    assert raw.source == str(path)


def test_load_npz_never_unpickles_object_arrays(tmp_path):
    marker = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.npz"
    labels = np.array([Trap()], dtype=object)
    np.savez(path, x_train=np.zeros((1, 28, 28), np.uint8), y_train=labels, allow_pickle=True)
    with pytest.raises(DataError, match="Python objects"):
        data.load_npz(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"a": np.zeros(3)}, "none of x_train/y_train/x_test/y_test .keys: a"),
        ({"x_train": np.zeros((2, 28, 28), np.uint8)}, "has x_train but no y_train"),
        ({"x_train": np.zeros((2, 784), np.uint8), "y_train": np.zeros(2, int)}, r"shape \(2, 784\)"),
        ({"x_train": np.zeros((2, 28, 28), np.uint8), "y_train": np.zeros((2, 1), int)}, "labels have shape"),
        ({"x_train": np.zeros((2, 28, 28), np.uint8), "y_train": np.zeros(2, np.float32)}, "must be integers"),
        ({"x_train": np.full((2, 28, 28), np.nan), "y_train": np.zeros(2, int)}, "NaN"),
        ({"x_train": np.full((2, 28, 28), 0.5), "y_train": np.zeros(2, int)}, "fractional"),
        ({"x_train": np.full((2, 28, 28), 256), "y_train": np.zeros(2, int)}, "outside 0..255"),
        ({"x_train": np.full((2, 28, 28), "a"), "y_train": np.zeros(2, int)}, "store pixels as uint8"),
    ],
    ids=["no keys", "half split", "flat images", "2-D labels", "float labels", "nan", "scaled", "256", "strings"],
)
def test_load_npz_rejects_bad_contents(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message):
        data.load_npz(path)


def test_load_npz_casts_whole_float_pixels(tmp_path):
    images, labels = random_split(2, seed=9)
    np.savez(tmp_path / "f.npz", x_test=images.astype(np.float64), y_test=labels.astype(np.int32))
    raw = data.load_npz(tmp_path / "f.npz")
    assert raw.x_test.dtype == np.uint8
    np.testing.assert_array_equal(raw.x_test, images)


def test_load_npz_rejects_non_archives_and_lying_headers(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all")
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    for path, message in [(garbage, "not a readable .npz"), (single, "single array"), (tmp_path / "no.npz", "no such")]:
        with pytest.raises(DataError, match=message):
            data.load_npz(path)

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (10**12, 28, 28)})
    liar = tmp_path / "liar.npz"
    with zipfile.ZipFile(liar, "w") as archive:
        archive.writestr("x_train.npy", header.getvalue() + b"\0" * 100)
        archive.writestr("y_train.npy", header.getvalue())
    with pytest.raises(DataError, match="declares shape"):
        data.load_npz(liar)


# --------------------------------------------------------------------- --data arrays (gradloop.data.sources.arrays)


def load_arrays(path, **options) -> sources.Loaded:
    return sources.load_source(sources.DataSpec(str(path), **options))


X40 = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, str])
@pytest.mark.parametrize("folder", [False, True])
def test_labels_of_shape_n_by_1_are_one_label_each(tmp_path, dtype, folder):
    """Keras CIFAR's y of shape (N, 1): a classification, not a one-column regression."""
    y = (np.arange(40) % 3).astype(dtype)[:, None]
    if folder:
        np.save(tmp_path / "x.npy", X40)
        np.save(tmp_path / "y.npy", y)
    else:
        np.savez(tmp_path / "y2d.npz", x=X40, y=y)
    loaded = load_arrays(tmp_path if folder else tmp_path / "y2d.npz")
    assert (loaded.task, loaded.class_names) == ("classification", ("0", "1", "2"))
    np.testing.assert_array_equal(loaded.train.y, np.arange(40) % 3)
    assert arrays.task_of(np.zeros((5, 1), np.float32)) == "regression"  # float targets of one column stay targets


def test_non_whole_labels_are_refused_as_classes_and_whole_floats_named_as_integers(tmp_path):
    np.savez(tmp_path / "half.npz", x=X40, y=np.arange(40) % 3 * 0.5 + 1)  # 1.0, 1.5, 2.0: once '1', '1', '2'
    with pytest.raises(DataError, match=r"y holds 1\.5; pass --task regression") as raised:
        load_arrays(tmp_path / "half.npz", task="classification")
    assert "\n" not in str(raised.value)
    np.savez(tmp_path / "whole.npz", x=X40, y=(np.arange(40) % 3).astype(np.float64))
    assert load_arrays(tmp_path / "whole.npz", task="classification").class_names == ("0", "1", "2")


def test_class_names_of_is_one_naming_for_every_source():
    assert sources.class_names_of(np.array([3, 10, -1])) == ["3", "10", "-1"]
    assert sources.class_names_of(np.array([7.0, -0.0, 1e20])) == ["7", "0", str(10**20)]
    assert sources.class_names_of(np.array(["b", "a"])) == ["b", "a"]
    for bad, index in [([0.0, 0.5], 1), ([np.nan], 0), ([1.0, np.inf], 1)]:
        with pytest.raises(sources.NotAClassLabel) as raised:
            sources.class_names_of(np.array(bad))
        assert raised.value.index == index


def test_an_inferred_classification_of_nearly_one_class_per_example_is_refused(tmp_path):
    prices = 100 + 7 * np.arange(40)
    np.savez(tmp_path / "prices.npz", x=X40, y=prices)
    with pytest.raises(
        ConfigError, match="has 40 distinct labels in 40 examples, too many to be classes; pass --task regression"
    ):
        load_arrays(tmp_path / "prices.npz")
    assert len(load_arrays(tmp_path / "prices.npz", task="classification").class_names) == 40  # insisted on
    assert load_arrays(tmp_path / "prices.npz", task="regression").task == "regression"
    np.savez(tmp_path / "twenty.npz", x=X40, y=np.arange(40) % 20)  # 20 classes: no more than 20
    assert len(load_arrays(tmp_path / "twenty.npz").class_names) == 20


def test_a_folder_of_npy_files_is_fingerprinted_by_content(tmp_path):
    """A same-size change (another label) changes the fingerprint; names and sizes alone would miss it."""
    np.save(tmp_path / "x.npy", X40)
    np.save(tmp_path / "y.npy", np.arange(40) % 3)
    before = load_arrays(tmp_path).fingerprint
    assert (before["files"], before["bytes"]) == (2, sum(p.stat().st_size for p in tmp_path.glob("*.npy")))
    np.save(tmp_path / "y.npy", (np.arange(40) + 1) % 3)
    after = load_arrays(tmp_path).fingerprint
    assert after["sha256"] != before["sha256"] and after["bytes"] == before["bytes"]
    assert sources.describe_change(before, after).startswith("the same 2 files and")
