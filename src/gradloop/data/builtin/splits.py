"""A run's train, validation and test splits, computed in one place.

Training and evaluation must see the very same validation samples, or a model
is scored on data it trained on. So both take their splits from
``run_splits``, given the loaded source and the run's classes, val_fraction
and seed, instead of each building the train/validation split itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np

from gradloop.data.builtin.prepare import select_classes, split_train_val
from gradloop.data.builtin.raw import RawData
from gradloop.errors import DataError

SPLITS = ("test", "val", "train")


class Splits:
    """A run's data after class selection (labels remapped to 0..k-1), as unscaled uint8 images.

    Each split is ``(images, labels)``. A split the source lacks is None:
    mnist-sample has no test split, a folder holding only the t10k files has
    neither train nor val. With ``val_fraction=0``, val is present but empty.
    A split is computed when first asked for: training never selects classes
    in a test split it does not use, evaluating on test never splits the
    training data, and each raises its own errors (those of ``select_classes``
    and ``split_train_val``) only then.
    """

    def __init__(self, raw: RawData, *, classes: str | Sequence[int] | None, val_fraction: float, seed: int) -> None:
        self._raw, self._classes, self._val_fraction, self._seed = raw, classes, val_fraction, seed

    @property
    def source(self) -> str:
        return self._raw.source

    @property
    def train(self) -> tuple[np.ndarray, np.ndarray] | None:
        return self._train_val[0]

    @property
    def val(self) -> tuple[np.ndarray, np.ndarray] | None:
        return self._train_val[1]

    @property
    def test(self) -> tuple[np.ndarray, np.ndarray] | None:
        return self._test

    def get(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The split called ``name`` ("train", "val" or "test"); None when the source lacks it."""
        if name not in SPLITS:
            raise DataError(f"split must be one of {', '.join(SPLITS)}, got {name!r}")
        return getattr(self, name)

    @cached_property
    def _train_val(self) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | tuple[None, None]:
        raw = self._raw
        if raw.x_train is None:
            return None, None
        x, y = select_classes(raw.x_train, raw.y_train, self._classes)
        return split_train_val(x, y, val_fraction=self._val_fraction, seed=self._seed)

    @cached_property
    def _test(self) -> tuple[np.ndarray, np.ndarray] | None:
        raw = self._raw
        return None if raw.x_test is None else select_classes(raw.x_test, raw.y_test, self._classes)


def run_splits(raw: RawData, *, classes: str | Sequence[int] | None, val_fraction: float, seed: int) -> Splits:
    """The splits of ``raw`` for a run with these ``classes``, ``val_fraction`` and ``seed``.

    train and val are ``split_train_val`` of the training split's selected
    classes; test is the test split's selected classes. A split missing from
    ``raw`` is None, not an error, because only the caller knows whether it
    needs it (and how to word that).
    """
    return Splits(raw, classes=classes, val_fraction=val_fraction, seed=seed)
