"""From a source's arrays to what a model trains on: class selection, scaling, the train/validation split.

Plain numpy, deterministic given the seed. ``parse_classes`` lives here too,
and importing it must stay cheap: the CLI's config checks ``--classes`` with
it before anything heavy is loaded.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from gradloop.data.builtin.raw import N_CLASSES
from gradloop.errors import ConfigError, DataError


def parse_classes(spec: str | Sequence[int] | None, n_available: int = N_CLASSES) -> tuple[int, ...]:
    """Parse a class selection such as ``"0,1,2"``, ``"0-4"``, ``"all"`` or ``[3, 5]``.

    The order is kept, not sorted: it defines the remapping, ``spec[i]`` becomes label ``i``.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return tuple(range(n_available))
    classes = _parse_class_string(spec, n_available) if isinstance(spec, str) else _class_sequence(spec)
    if not classes:
        raise ConfigError("no classes given; pass e.g. --classes 0,1 or --classes all")
    duplicates = sorted(c for c, n in Counter(classes).items() if n > 1)
    if duplicates:
        raise ConfigError(f"classes {duplicates} are listed twice; list each class once")
    outside = [c for c in classes if not 0 <= c < n_available]
    if outside:
        raise ConfigError(f"classes {outside} are out of range; pick classes from 0 to {n_available - 1}")
    if len(classes) < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {classes}; pass e.g. --classes 0,1")
    return tuple(classes)


_INTEGER = re.compile(r"-?[0-9]+")
_RANGE = re.compile(r"([0-9]+)\s*-\s*([0-9]+)")


def _parse_class_string(spec: str, n_available: int) -> list[int]:
    if not spec.strip():
        return []
    classes: list[int] = []
    for token in (t.strip() for t in spec.split(",")):
        if span := _RANGE.fullmatch(token):
            first, last = int(span[1]), int(span[2])
            if first > last:
                raise ConfigError(f"class range {token!r} runs backwards; write it as {last}-{first}")
            if last >= n_available:  # before expanding it: "0-99999999999" must not fill memory
                raise ConfigError(f"class range {token!r} is out of range; pick classes from 0 to {n_available - 1}")
            classes.extend(range(first, last + 1))
        elif _INTEGER.fullmatch(token):
            classes.append(int(token))
        else:
            raise ConfigError(f"class {token!r} in {spec!r} is not an integer or a range; pass e.g. 0,1,2 or 0-4")
    return classes


def _class_sequence(spec: Sequence[int]) -> list[int]:
    try:
        items = list(spec)
    except TypeError as exc:
        raise ConfigError(f"classes must be a list of integers or a string like '0,1,2', got {spec!r}") from exc
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
            raise ConfigError(f"class {item!r} is not an integer; pass integers such as [0, 1, 2]")
    return [int(item) for item in items]


def select_classes(x: np.ndarray, y: np.ndarray, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Keep the samples of ``classes`` and relabel ``classes[i]`` as ``i`` (int64)."""
    classes = parse_classes(classes)
    if len(x) != len(y):
        raise DataError(f"{len(x)} images but {len(y)} labels; pass matching arrays")
    if len(y) == 0:
        raise DataError("the data set holds no samples; pass a non-empty data set")
    if y.ndim != 1 or y.dtype.kind not in "ui":
        raise DataError(f"labels must be a 1-D integer array, got {y.dtype} of shape {y.shape}")
    if y.min() < 0 or y.max() >= N_CLASSES:
        raise DataError(
            f"labels range from {y.min()} to {y.max()}, outside 0..{N_CLASSES - 1}; "
            "pass a 10-class MNIST-style data set"
        )
    new_label = np.full(N_CLASSES, -1, dtype=np.int64)
    new_label[list(classes)] = np.arange(len(classes))
    relabelled = new_label[y]
    empty = [c for i, c in enumerate(classes) if not (relabelled == i).any()]
    if empty:
        raise DataError(f"classes {empty} have no samples in this data set; leave them out of --classes")
    keep = relabelled >= 0
    return x[keep], relabelled[keep]


def prepare_images(x: np.ndarray, *, flatten: bool) -> np.ndarray:
    """Scale uint8 pixels to float32 in [0, 1]; (N, 784) for dense models, (N, 28, 28, 1) for CNNs.

    Only uint8 is accepted, so images cannot be scaled twice by mistake.
    """
    if x.dtype != np.uint8:
        raise DataError(f"images have dtype {x.dtype}, expected raw uint8 pixels; pass the loader's arrays")
    images = x.astype(np.float32)
    images /= 255.0
    # The width spelled out: -1 cannot be inferred for an empty split (--val-fraction 0).
    return images.reshape(len(images), int(np.prod(images.shape[1:]))) if flatten else images[..., np.newaxis]


def split_train_val(
    x: np.ndarray, y: np.ndarray, *, val_fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Shuffle with ``seed``, then hold out the last ``round(n * val_fraction)`` samples.

    This is the tutorial's split (60k shuffled: 50k train, 10k validation for
    1/6). ``val_fraction=0`` gives empty validation arrays.
    """
    if isinstance(val_fraction, bool) or not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}; use e.g. 0.1, or 0 for none")
    if len(x) != len(y):
        raise DataError(f"{len(x)} images but {len(y)} labels; pass matching arrays")
    train, val = split_rows(len(x), val_fraction=val_fraction, seed=seed)
    return (x[train], y[train]), (x[val], y[val])


def split_rows(n: int, *, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The training and validation rows of ``n`` samples: a permutation drawn with ``seed``, whose
    last ``round(n * val_fraction)`` rows are held out. Every source splits this way."""
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n_val == 0:
        raise ConfigError(f"val_fraction {val_fraction} of {n} samples leaves no validation data; raise it, or 0")
    if n_val == n:
        raise ConfigError(f"val_fraction {val_fraction} of {n} samples leaves no training data; lower it")
    order = np.random.default_rng(seed).permutation(n)
    return order[: n - n_val], order[n - n_val :]
