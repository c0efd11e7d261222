"""MNIST-style data: find it, read it safely, and feed it to a training loop.

One module per concern:

- ``raw``: ``RawData``, what every reader returns, and the checks they share
- ``idx``: the IDX reader (the MNIST downloads), for untrusted files
- ``npz``: the Keras-style ``.npz`` reader, for untrusted archives
- ``builtin``: the named data sets and ``load_dataset``, which picks the source
- ``keras_download``: the Keras cache and downloads into it
- ``prepare``: class selection, scaling, the train/validation split
- ``splits``: a run's train/val/test splits, for training and evaluation alike
- ``pipeline``: the tf.data pipeline, the only part that imports TensorFlow

A new source is a new module: a reader that returns ``RawData``, plus its
name in ``builtin``. Importing this package must not import TensorFlow (the
CLI's argument checks import it). The names below are re-exported for
callers; a test that patches one must patch the module that looks it up.
"""

from __future__ import annotations

from gradloop.data.builtin.idx import load_idx_dir, read_idx
from gradloop.data.builtin.keras_download import (
    DEFAULT_DATA_URL,
    FASHION_MNIST_FILES,
    download_keras_dataset,
    keras_cache_dir,
)
from gradloop.data.builtin.npz import load_npz
from gradloop.data.builtin.prepare import parse_classes, prepare_images, select_classes, split_train_val
from gradloop.data.builtin.raw import IMAGE_SHAPE, N_CLASSES, RawData
from gradloop.data.builtin.sets import DATASETS, DEBIAN_FASHION_MNIST, load_dataset, load_mnist_sample
from gradloop.data.builtin.splits import Splits, run_splits
from gradloop.data.pipeline import make_dataset, shuffled_epochs

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "DEFAULT_DATA_URL",
    "FASHION_MNIST_FILES",
    "IMAGE_SHAPE",
    "N_CLASSES",
    "RawData",
    "Splits",
    "download_keras_dataset",
    "keras_cache_dir",
    "load_dataset",
    "load_idx_dir",
    "load_mnist_sample",
    "load_npz",
    "make_dataset",
    "parse_classes",
    "prepare_images",
    "read_idx",
    "run_splits",
    "select_classes",
    "shuffled_epochs",
    "split_train_val",
]
