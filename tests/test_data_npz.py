"""Tests of gradloop.data.npz: the Keras-style .npz reader on small archives made here."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from test_data_idx import random_split

from gradloop import data
from gradloop.errors import DataError


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
