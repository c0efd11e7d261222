"""Arrays of any shape and dtype: an ``.npz`` or a folder of ``.npy`` files.

    x, y                               one pool, split into train and validation by the run
    x_train, y_train (, x_test, y_test)   and a test split for ``evaluate``
    x (or x_train, x_test) and no y    examples without labels: the task is "none"

Read without unpickling (object arrays are refused), each array's header
checked against the bytes really stored (:mod:`gradloop.data.builtin.npz`'s reader).
``y`` of integers or strings is a classification's labels (class names: the
sorted distinct values; a trailing axis of size 1, Keras CIFAR's ``(N, 1)``, is
dropped); of non-integer numbers, or of several columns, a regression's targets.
Integers with about one distinct value per example (prices, ids) are refused
unless ``--task`` says which task is meant. uint8 ``x`` is scaled to [0, 1], as
MNIST's pixels are.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from gradloop.data.builtin.npz import read_npz_array
from gradloop.data.examples import ArrayExamples
from gradloop.data.sources import (
    UNLABELED,
    DataSpec,
    Loaded,
    NotAClassLabel,
    check_not_too_many_classes,
    class_names_of,
    combined_fingerprint,
    content_fingerprint,
)
from gradloop.data.sources.unlabeled import UnlabeledArrays
from gradloop.errors import ConfigError, DataError

_SPLITS = (("x", "y"), ("x_train", "y_train"), ("x_test", "y_test"))
_KEYS = tuple(key for pair in _SPLITS for key in pair)  # what a file is read for (x_val is a function's only)
_Y_KEYS = ("y", "y_train", "y_val", "y_test")
_X_KEYS = ("x", "x_test", "x_train")  # what examples to predict on are looked for as, in this order


def load(spec: DataSpec) -> Loaded:
    path = Path(spec.path)
    arrays = _read_folder(path) if path.is_dir() else _read_npz(path)
    files = sorted(path.glob("*.npy")) if path.is_dir() else [path]
    fingerprint = combined_fingerprint([content_fingerprint(file) for file in files])  # every byte: same-size edits too
    return loaded_arrays(arrays, spec, where=str(path), kind="arrays", fingerprint=fingerprint)


def loaded_arrays(
    arrays: dict[str, np.ndarray],
    spec: DataSpec,
    *,
    where: str,
    kind: str,
    fingerprint: dict[str, Any],
    give: str = "save",
) -> Loaded:
    """``arrays`` by name (x, y or x_train, y_train; x_val, y_val; x_test, y_test) as a source's
    examples, read as the module docstring says. ``where`` names them in messages and the
    description; ``give`` is how the user makes them ("save" for files, "return" for a function)."""
    if "x" in arrays and "x_train" in arrays:
        raise DataError(f"{where} has both x and x_train; keep one of them (x_train, x_test: a test split too)")
    if not any(key in arrays for key in _Y_KEYS):
        return _unlabeled(arrays, spec, where=where, kind=kind, fingerprint=fingerprint, give=give)
    train = _pair(arrays, where, "x", "y", give) or _pair(arrays, where, "x_train", "y_train", give)
    val = _pair(arrays, where, "x_val", "y_val", give)
    test = _pair(arrays, where, "x_test", "y_test", give)
    if train is None:
        raise DataError(
            f"{where} has no x and y (or x_train and y_train); found {', '.join(sorted(arrays)) or 'nothing'}"
        )
    for name, pair in (("x_val", val), ("x_test", test)):
        if pair is not None and pair[0].shape[1:] != train[0].shape[1:]:
            raise DataError(
                f"{where}: {name} has examples of shape {pair[0].shape[1:]}, x_train of {train[0].shape[1:]}; "
                "give both splits the same shape"
            )
    task = spec.task or task_of(train[1])
    others = [pair[1] for pair in (val, test) if pair is not None]
    names = _class_names(train[1], others, spec.class_names, where) if task == "classification" else None
    if spec.task is None and spec.class_names is None and names is not None and train[1].dtype.kind in "biu":
        check_not_too_many_classes(len(names), len(train[1]), f"{where}'s y")
    preprocessing = {"divide_by": 255} if train[0].dtype == np.uint8 else {}
    if spec.fitted is not None:
        preprocessing = dict(spec.fitted)
    examples = [
        None if pair is None else _examples(*pair, task, names, preprocessing, where) for pair in (train, val, test)
    ]
    return Loaded(
        train=examples[0],
        val=examples[1],
        test=examples[2],
        kind=kind,
        task=task,
        class_names=names,
        description=f"{where} ({kind}: {len(train[1]):,} examples of shape {train[0].shape[1:]})",
        fingerprint=fingerprint,
        preprocessing=preprocessing,
    )


def _unlabeled(
    arrays: dict[str, np.ndarray],
    spec: DataSpec,
    *,
    where: str,
    kind: str,
    fingerprint: dict[str, Any],
    give: str,
) -> Loaded:
    """x alone (x or x_train; x_val, x_test): examples without labels, read as labelled ones are."""
    if spec.task is not None:
        raise ConfigError(
            f"--task {spec.task} says what to predict, but {where} has no labels (x without y); "
            f"{give} y beside x, or drop --task"
        )
    xs = {
        key: _checked_x(arrays[key], where, key, give) for key in ("x", "x_train", "x_val", "x_test") if key in arrays
    }
    train = xs.get("x", xs.get("x_train"))
    if train is None:
        raise DataError(f"{where} has no x (or x_train); found {', '.join(sorted(arrays)) or 'nothing'}")
    for name in ("x_val", "x_test"):
        if name in xs and xs[name].shape[1:] != train.shape[1:]:
            raise DataError(
                f"{where}: {name} has examples of shape {xs[name].shape[1:]}, x_train of {train.shape[1:]}; "
                "give both splits the same shape"
            )
    preprocessing = {"divide_by": 255} if train.dtype == np.uint8 else {}
    if spec.fitted is not None:
        preprocessing = dict(spec.fitted)
    val, test = (
        None if key not in xs else UnlabeledArrays(_features(xs[key], preprocessing)) for key in ("x_val", "x_test")
    )
    return Loaded(
        train=UnlabeledArrays(_features(train, preprocessing)),
        val=val,
        test=test,
        kind=kind,
        task=UNLABELED,
        class_names=None,
        description=f"{where} ({kind}: {len(train):,} examples of shape {train.shape[1:]}, no labels)",
        fingerprint=fingerprint,
        preprocessing=preprocessing,
    )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc}); save it with np.savez(x=..., y=...)") from None
    with archive:
        names = {n.removesuffix(".npy") for n in archive.namelist()}
        return {key: read_npz_array(archive, path, key) for key in _KEYS if key in names}


def _read_folder(path: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for key in _KEYS:
        file = path / f"{key}.npy"
        if file.is_file():
            arrays[key] = _read_npy(file)
    return arrays


def _read_npy(file: Path) -> np.ndarray:
    try:
        array = np.load(file, allow_pickle=False)
    except ValueError as exc:
        why = "holds Python objects, which gradloop never unpickles" if "pickle" in str(exc) else f"is damaged ({exc})"
        raise DataError(f"{file} {why}; save plain numeric arrays with np.save") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{file}: cannot read it ({exc}); save it again with np.save") from None
    if not isinstance(array, np.ndarray):  # np.load opens a zip under any name as an npz
        array.close()
        raise DataError(f"{file} is an .npz archive, not one array; name it {file.stem}.npz")
    return array


def _pair(
    arrays: dict[str, np.ndarray], path: str, x_key: str, y_key: str, give: str = "save"
) -> tuple[np.ndarray, np.ndarray] | None:
    if x_key not in arrays and y_key not in arrays:
        return None
    if x_key not in arrays or y_key not in arrays:
        have, missing = (x_key, y_key) if x_key in arrays else (y_key, x_key)
        raise DataError(f"{path} has {have} but no {missing}; {give} both")
    x, y = arrays[x_key], arrays[y_key]
    if y.ndim == 2 and y.shape[1] == 1 and y.dtype.kind in "biuU":  # Keras CIFAR's (N, 1) labels: one label each
        y = y[:, 0]
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise DataError(
            f"{path}: {x_key} of shape {x.shape} and {y_key} of shape {y.shape} do not pair up; "
            "give one y per example of x (the first axis)"
        )
    _checked_x(x, path, x_key, give)
    if y.dtype.kind not in "biufU":
        raise DataError(f"{path}: {y_key} has dtype {y.dtype}; {give} integer or string labels, or numeric targets")
    return x, y


def _checked_x(x: np.ndarray, path: str, x_key: str, give: str) -> np.ndarray:
    """``x`` once it holds examples of finite numbers; else a one-line error."""
    if x.ndim == 0:
        raise DataError(
            f"{path}: {x_key} of shape {x.shape} holds no examples; give one example per row of the first axis"
        )
    if len(x) == 0:
        raise DataError(f"{path}: {x_key} holds no examples")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{path}: {x_key} has dtype {x.dtype}; {give} numbers (any int, uint or float type)")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(f"{path}: {x_key} holds NaN or infinite values; fill or drop them first")
    return x


def task_of(y: np.ndarray) -> str:
    """Integer or string labels in one column: classification; float targets (a dtype says what it
    holds: diabetes' whole-number float targets are no 214 classes), or several columns: regression."""
    return "classification" if y.dtype.kind in "biuU" and y.ndim == 1 else "regression"


def _class_names(
    y: np.ndarray, others: list[np.ndarray], known: tuple[str, ...] | None, where: str = "the data"
) -> tuple[str, ...]:
    """The sorted distinct labels of every split (numbers sorted as numbers), or the classes a run already knows."""
    if known is not None:
        return known
    if y.ndim != 1:
        raise ConfigError(
            f"classification needs one label per example, but y has shape {y.shape}; pass --task regression"
        )
    values = np.concatenate([y, *others]) if others else y
    names = _names(np.unique(values), where)
    if len(set(names)) != len(names):  # class_names_of never merges distinct labels; this keeps it so
        raise DataError(f"{where}: labels {names[:10]} give two classes the same name; give distinct labels")
    return tuple(names)


def _names(labels: np.ndarray, where: str) -> list[str]:
    """:func:`class_names_of`, refusing a label that is no whole number in one line."""
    try:
        return class_names_of(labels)
    except NotAClassLabel as exc:
        raise DataError(
            f"{where}: classification needs whole-number or text labels, but y holds "
            f"{labels.ravel()[exc.index].item()!r}; pass --task regression to predict numbers"
        ) from None


def read_x(path: str | Path) -> tuple[np.ndarray, str]:
    """Examples to predict on, and where they came from (``digits.npz's x``): an .npy file's array, or
    an .npz's (or a folder of .npy files') ``x``, else ``x_test``, else ``x_train``; read as
    :func:`load` reads arrays (never unpickled) and checked as its x is."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".npy":
        x, where = _read_npy(path), str(path)
    else:
        found = _read_folder(path) if path.is_dir() else _read_npz(path)
        key = next((k for k in _X_KEYS if k in found), None)
        if key is None:
            raise DataError(
                f"{path} has no x (nor x_test or x_train); found {', '.join(sorted(found)) or 'nothing'}: "
                "save the examples to predict on as x"
            )
        x, where = found[key], f"{path}'s {key}"
    if x.ndim == 0 or len(x) == 0:
        raise DataError(f"{where} holds no examples (shape {x.shape}); give one example per row of the first axis")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where} has dtype {x.dtype}; save numbers (any int, uint or float type)")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(f"{where} holds NaN or infinite values; fill or drop them first")
    return x, where


def features(x: np.ndarray, fitted: dict[str, Any], where: str) -> np.ndarray:
    """``x`` as the run's model takes it (``fitted``: the run's preprocessing): float32, and uint8 pixels
    scaled to [0, 1] when the run's were; other numbers are refused then, since scaling them too is a guess."""
    if "divide_by" in fitted and x.dtype != np.uint8:
        raise DataError(
            f"{where} has dtype {x.dtype}, but the run trained on uint8 pixels (scaled to [0, 1]); "
            "give uint8 pixels as it had"
        )
    return _features(x, fitted)


def _features(x: np.ndarray, preprocessing: dict) -> np.ndarray:
    features = x.astype(np.float32)
    if "divide_by" in preprocessing:  # uint8 pixels to [0, 1], exactly as MNIST's (a division, not a product)
        features /= np.float32(preprocessing["divide_by"])
    return features


def _examples(
    x: np.ndarray, y: np.ndarray, task: str, names: tuple[str, ...] | None, preprocessing: dict, path: str
) -> ArrayExamples:
    features = _features(x, preprocessing)
    if task == "regression":
        if y.dtype.kind not in "biuf":
            raise DataError(f"{path}: regression needs numeric targets, but y holds {y.dtype}")
        return ArrayExamples(features, y.astype(np.float32))
    index = {name: i for i, name in enumerate(names)}
    distinct, inverse = np.unique(y, return_inverse=True)
    distinct_names = _names(distinct, path)
    unknown = [name for name in distinct_names if name not in index]
    if unknown:
        raise DataError(f"{path}: labels {unknown[:5]} are not among the run's classes {list(names)[:10]}")
    return ArrayExamples(features, np.array([index[name] for name in distinct_names], dtype=np.int64)[inverse.ravel()])
