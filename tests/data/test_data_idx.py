"""Tests of gradloop.data.builtin.idx: the IDX reader on small files made here, plus the real MNIST test set
where present.

The helpers that write IDX files are imported by the other data tests.
"""

from __future__ import annotations

import gzip
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from gradloop import data
from gradloop.errors import ConfigError, DataError

SHARED_MNIST = Path(__file__).resolve().parents[3] / "shared/data/mnist"
IDX_NAMES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


# --------------------------------------------------------------------- helpers


def idx_bytes(dims: tuple[int, ...], payload: bytes, *, dtype_code: int = 0x08, zeros: bytes = b"\0\0") -> bytes:
    return zeros + bytes([dtype_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


def write_idx(path: Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an unsigned-byte IDX file, gzipped when the name ends in .gz unless told otherwise."""
    content = idx_bytes(array.shape, array.astype(np.uint8).tobytes())
    compress = path.suffix == ".gz" if compress is None else compress
    path.write_bytes(gzip.compress(content) if compress else content)
    return path


def random_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def make_idx_dir(folder: Path, splits: dict[str, int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for seed, (split, n) in enumerate(splits.items()):
        images, labels = arrays[split] = random_split(n, seed)
        write_idx(folder / IDX_NAMES[split][0], images)
        write_idx(folder / IDX_NAMES[split][1], labels)
    return arrays


# --------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("name", ["images-idx3-ubyte.gz", "images-idx3-ubyte"])
def test_read_idx_round_trip(tmp_path, name):
    images, labels = random_split(7, seed=1)
    np.testing.assert_array_equal(data.read_idx(write_idx(tmp_path / name, images)), images)
    read_labels = data.read_idx(write_idx(tmp_path / ("labels-" + name), labels))
    assert read_labels.dtype == np.uint8 and read_labels.shape == (7,)
    np.testing.assert_array_equal(read_labels, labels)


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
    images, _ = random_split(3, seed=2)
    plain_named_gz = write_idx(tmp_path / "plain.gz", images, compress=False)
    gzip_named_plain = write_idx(tmp_path / "gzipped", images, compress=True)
    np.testing.assert_array_equal(data.read_idx(plain_named_gz), images)
    np.testing.assert_array_equal(data.read_idx(gzip_named_plain), images)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_max_items_returns_a_prefix_but_checks_the_whole_file(tmp_path, compress):
    images, _ = random_split(5, seed=3)
    path = write_idx(tmp_path / "x", images, compress=compress)
    np.testing.assert_array_equal(data.read_idx(path, max_items=2), images[:2])
    assert data.read_idx(path, max_items=99).shape == (5, 28, 28)
    truncated = idx_bytes((5, 28, 28), images.tobytes()[:-1])
    path.write_bytes(gzip.compress(truncated) if compress else truncated)
    with pytest.raises(DataError, match="truncated"):
        data.read_idx(path, max_items=2)
    with pytest.raises(ConfigError, match="max_items"):
        data.read_idx(path, max_items=-1)


BAD_IDX_FILES = {
    "empty": (b"", "empty"),
    "short header": (b"\0\0", "too short"),
    "wrong magic": (b"\x12\x34\x08\x01" + struct.pack(">I", 2) + b"\1\2", "not an IDX file"),
    "float dtype code": (idx_bytes((2,), b"\0" * 8, dtype_code=0x0D), "0x0d is not supported"),
    "two dimensions": (idx_bytes((2, 2), b"\0" * 4), "2 dimensions"),
    "truncated dims": (b"\0\0\x08\x03" + struct.pack(">I", 2), "header is truncated"),
    "zero items": (idx_bytes((0, 28, 28), b""), "empty shape"),
    "truncated payload": (idx_bytes((3,), b"\1\2"), "truncated: the header declares 3 data bytes but only 2"),
    "trailing bytes": (idx_bytes((3,), b"\1\2\3\4"), "more data follows the 3 bytes"),
    "over the size cap": (idx_bytes((60000, 28000, 28000), b"\0" * 10), "over the"),
}


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("case", BAD_IDX_FILES, ids=list(BAD_IDX_FILES))
def test_read_idx_rejects_malformed_files(tmp_path, case, compress):
    content, message = BAD_IDX_FILES[case]
    path = tmp_path / "bad-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(DataError, match=message) as excinfo:
        data.read_idx(path)
    assert str(path) in str(excinfo.value)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_read_idx_trailing_byte_after_a_chunk_boundary(tmp_path, compress):
    n = 2**20  # the reader's chunk size: the extra byte arrives in a read of its own
    content = idx_bytes((n,), b"\1" * (n + 1))
    path = tmp_path / "long"
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(DataError, match="more data follows"):
        data.read_idx(path)
    path.write_bytes(gzip.compress(content[:-1]) if compress else content[:-1])
    assert data.read_idx(path).shape == (n,)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_read_idx_lying_header_fails_fast_without_allocating(tmp_path, compress):
    content = idx_bytes((2_000_000, 28, 28), b"\0" * 784)  # claims 1.5 GB, holds 784 bytes
    path = tmp_path / "liar"
    path.write_bytes(gzip.compress(content) if compress else content)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DataError, match="truncated"):
            data.read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < 10 * 2**20


def test_read_idx_wraps_gzip_and_os_errors(tmp_path):
    images, _ = random_split(20, seed=4)
    compressed = gzip.compress(idx_bytes(images.shape, images.tobytes()))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(compressed[: len(compressed) // 2])
    garbled = tmp_path / "garbled.gz"
    garbled.write_bytes(compressed[:10] + b"\xff" * 50)
    for path in (cut, garbled, tmp_path / "missing.gz", tmp_path):
        with pytest.raises(DataError, match=str(path.name)):
            data.read_idx(path)


# --------------------------------------------------------------------- load_idx_dir


def test_load_idx_dir_both_splits(tmp_path):
    arrays = make_idx_dir(tmp_path / "d", {"train": 12, "test": 5})
    raw = data.load_idx_dir(tmp_path / "d")
    np.testing.assert_array_equal(raw.x_train, arrays["train"][0])
    np.testing.assert_array_equal(raw.y_train, arrays["train"][1])
    np.testing.assert_array_equal(raw.x_test, arrays["test"][0])
    np.testing.assert_array_equal(raw.y_test, arrays["test"][1])
    assert raw.y_train.dtype == np.int64 and raw.x_train.dtype == np.uint8
    assert raw.source == f"{tmp_path / 'd'} (IDX)"


def test_load_idx_dir_reads_uncompressed_names_too(tmp_path):
    images, labels = random_split(4, seed=5)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    raw = data.load_idx_dir(tmp_path)
    assert raw.x_train is None and raw.y_train is None
    np.testing.assert_array_equal(raw.y_test, labels)


def test_load_idx_dir_only_test_split(tmp_path):
    make_idx_dir(tmp_path, {"test": 6})
    raw = data.load_idx_dir(tmp_path)
    assert raw.x_train is None and raw.y_train is None
    assert raw.x_test.shape == (6, 28, 28) and raw.y_test.shape == (6,)


def test_load_idx_dir_missing_labels_file(tmp_path):
    make_idx_dir(tmp_path, {"train": 3, "test": 3})
    (tmp_path / IDX_NAMES["train"][1]).unlink()
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz is there but train-labels-idx1-ubyte\[.gz\]"):
        data.load_idx_dir(tmp_path)


def test_load_idx_dir_count_mismatch(tmp_path):
    make_idx_dir(tmp_path, {"test": 5})
    write_idx(tmp_path / IDX_NAMES["test"][1], np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="5 images but 4 labels"):
        data.load_idx_dir(tmp_path)


def test_load_idx_dir_wrong_image_shape(tmp_path):
    write_idx(tmp_path / IDX_NAMES["test"][0], np.zeros((2, 32, 32), np.uint8))
    write_idx(tmp_path / IDX_NAMES["test"][1], np.zeros(2, np.uint8))
    with pytest.raises(DataError, match=r"shape \(2, 32, 32\), expected \(N, 28, 28\)"):
        data.load_idx_dir(tmp_path)


def test_load_idx_dir_swapped_files_name_the_magic(tmp_path):
    write_idx(tmp_path / IDX_NAMES["test"][0], np.zeros(2, np.uint8))
    write_idx(tmp_path / IDX_NAMES["test"][1], np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="not an IDX image file .magic 0x00000801, expected 0x00000803"):
        data.load_idx_dir(tmp_path)


def test_load_idx_dir_missing_or_empty_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.load_idx_dir(tmp_path / "nope")
    with pytest.raises(DataError, match="holds no MNIST data"):
        data.load_idx_dir(tmp_path)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(DataError, match="is not a folder"):
        data.load_idx_dir(tmp_path / "file")


def test_load_idx_dir_falls_back_to_npz(tmp_path):
    images, labels = random_split(3, seed=6)
    np.savez(tmp_path / "digits.npz", x_train=images, y_train=labels)
    raw = data.load_idx_dir(tmp_path)
    np.testing.assert_array_equal(raw.x_train, images)
    assert raw.x_test is None
    np.savez(tmp_path / "more.npz", x_train=images, y_train=labels)
    with pytest.raises(DataError, match="several .npz files"):
        data.load_idx_dir(tmp_path)
    np.savez(tmp_path / "mnist.npz", x_test=images, y_test=labels)
    assert data.load_idx_dir(tmp_path).x_train is None  # mnist.npz wins


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"real MNIST test set not present at {SHARED_MNIST}")
def test_real_mnist_test_set():
    raw = data.load_idx_dir(SHARED_MNIST)
    assert raw.x_train is None and raw.y_train is None
    assert raw.x_test.shape == (10000, 28, 28) and raw.x_test.dtype == np.uint8
    assert raw.y_test[:5].tolist() == [7, 2, 1, 0, 4]
    assert sorted(np.unique(raw.y_test)) == list(range(10))
