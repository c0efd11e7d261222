"""Data from the user's own function: ``--data FILE.py:FUNCTION`` or ``package.module:FUNCTION``.

    def load(seed):        # seed (the run's --seed) is passed if the function declares it
        return {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt}    # numpy arrays, or
        return {"train": train_ds, "val": val_ds, "test": test_ds}         # tf.data datasets of (x, y) batches

Arrays (keys among x, y, x_train, y_train, x_val, y_val, x_test, y_test) are
read exactly as an ``.npz`` is (:mod:`gradloop.data.sources.arrays`): classes from the
labels, uint8 scaled, validation split off by the run unless x_val is given.

Datasets (a dict, or a tuple ``(train, val, test)`` whose last ones may be left
out or None) are the function's pipeline, used as given (:class:`DatasetExamples`):

- the function shuffles and batches (``--batch-size`` does not apply). For an exact
  ``--resume`` it must build the same dataset for the same seed, e.g.
  ``.shuffle(n, seed=seed, reshuffle_each_iteration=True)``: gradloop checkpoints the
  iterator, and restoring it restores the shuffle's position too (later epochs included).
  ``val`` and ``test`` must give their batches in the same order every time.
- each dataset is read once here, for its labels: ``n``, ``y``, the class names
  (``class_names`` if the function returns it, else ``0 .. the largest label``), the
  batches per epoch. A dataset must end (no ``.repeat()``); one of unknown length that
  never ends would hang here.
- gradloop cannot take some of the examples out of a pipeline: the function returns
  ``val`` itself (or the run uses val_fraction 0) and selects its classes itself.

The fingerprint is the function's source file, and for arrays the arrays it
returned too (their shapes, dtypes and bytes); datasets' content that changes
with the same code (a download, files it reads) goes unnoticed by ``--resume``'s check.
Datasets' integer labels of shape ``(batch, 1)`` are taken as one label each.

Without labels: arrays x alone (x or x_train, and x_val, x_test), or datasets
yielding x batches alone (a tensor, or a 1-tuple ``(x,)``, passed on as they come);
the task is then "none" (no classes, no targets).
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from gradloop import user_code
from gradloop.data.sources import UNLABELED, DataSpec, Loaded, class_names_of, content_fingerprint
from gradloop.data.sources.arrays import loaded_arrays, task_of
from gradloop.errors import ConfigError, DataError

if TYPE_CHECKING:
    import tensorflow as tf

ARRAY_KEYS = ("x", "y", "x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
DATASET_KEYS = ("train", "val", "test")
EXPECTED = (
    "a dict of numpy arrays (x, y, or x_train, y_train, and x_val, y_val, x_test, y_test), or of tf.data "
    "datasets of (x, y) batches (train, val, test, and class_names)"
)


def load(spec: DataSpec) -> Loaded:
    fn = user_code.load_function(spec.path, what="--data")
    result = user_code.call_function(fn, what=f"--data {spec.path}", seed=spec.seed)
    source = user_code.source_path(spec.path, what="--data")
    fingerprint = content_fingerprint(source) if source is not None and source.is_file() else {}
    if isinstance(result, (tuple, list)) and 0 < len(result) <= 3 and _is_dataset(result[0]):
        result = dict(zip(DATASET_KEYS, result))
    if not isinstance(result, dict) or not result:
        raise DataError(f"--data {spec.path} returned {user_code.describe(result)}; return {EXPECTED}")
    keys = set(result)
    if keys <= set(ARRAY_KEYS):
        arrays = {key: _array(value, key, spec.path) for key, value in result.items()}
        loaded = loaded_arrays(
            arrays,
            spec,
            where=f"--data {spec.path}",
            kind="function",
            fingerprint=_with_arrays(fingerprint, arrays),
            give="return",
        )
        return replace(loaded, description=loaded.description.removeprefix("--data "))
    if keys <= {*DATASET_KEYS, "class_names"}:
        if "train" not in keys:
            raise DataError(f"--data {spec.path} returned {', '.join(sorted(keys))} but no train dataset; return one")
        return _loaded_datasets(result, spec, fingerprint)
    unknown = sorted(keys - set(ARRAY_KEYS) - {*DATASET_KEYS, "class_names"})
    if unknown:
        raise DataError(
            f"--data {spec.path} returned a dict with keys {', '.join(map(repr, unknown))}; return {EXPECTED}"
        )
    if "class_names" in keys and not keys & set(DATASET_KEYS):
        raise DataError(
            f"--data {spec.path} returned class_names with arrays, whose classes are y's distinct values; "
            "drop class_names and give y as the names themselves (strings)"
        )
    raise DataError(
        f"--data {spec.path} returned arrays ({', '.join(sorted(keys & set(ARRAY_KEYS)))}) and datasets "
        f"({', '.join(sorted(keys & set(DATASET_KEYS)))}) together; return one or the other"
    )


def _array(value: Any, key: str, path: str) -> np.ndarray:
    if _is_dataset(value):
        raise DataError(
            f"--data {path} returned {key} as a tf.data dataset; return arrays under x_train and y_train, "
            "or datasets under train, val and test"
        )
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise DataError(
            f"--data {path}: {key} is not an array ({user_code.exception_line(exc)}); return numpy arrays"
        ) from None


def _with_arrays(fingerprint: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The source file's fingerprint and the returned arrays' (names, dtypes, shapes and bytes) as one:
    the same code returning other data (a file it reads changed) changes it."""
    digest = hashlib.sha256(fingerprint.get("sha256", "").encode())
    total = fingerprint.get("bytes", 0)
    for key in sorted(arrays):
        array = np.ascontiguousarray(arrays[key])
        digest.update(f"\0{key}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.data if array.size else b"")
        total += array.nbytes
    return {"files": fingerprint.get("files", 0), "bytes": total, "sha256": digest.hexdigest()}


def _is_dataset(value: Any) -> bool:
    tf = sys.modules.get("tensorflow")  # a function that made a dataset imported TensorFlow; else it is no dataset
    return tf is not None and isinstance(value, tf.data.Dataset)


# --------------------------------------------------------------------- datasets


class DatasetExamples:
    """The function's dataset of ``(x, y)`` batches (or of x alone: ``y`` None), as
    :class:`~gradloop.data.examples.Examples`.

    ``batches(order, batch_size)`` is the dataset itself: the function decided its order and
    batches. ``n`` and ``y`` are what one pass read (in that pass's order); ``num_batches``
    is the batches per epoch, for whoever counts steps. ``subset`` takes all examples or none
    (a pipeline cannot give some of its examples): the run's relabelling keeps all classes,
    val_fraction 0 holds out none; anything else is refused in one line."""

    def __init__(
        self,
        dataset: tf.data.Dataset,
        y: np.ndarray | None,
        *,
        element_shape: tuple[int, ...],
        num_batches: int,
        where: str,
        n: int | None = None,
    ) -> None:
        self.dataset, self.y, self.num_batches, self.where = dataset, y, num_batches, where
        self._element_shape = element_shape
        self._n = len(y) if y is not None else n  # without labels: the examples one pass counted

    @property
    def n(self) -> int:
        return self._n

    @property
    def element_shape(self) -> tuple[int, ...]:
        return self._element_shape

    def subset(self, rows: np.ndarray) -> DatasetExamples:
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            empty = self.dataset.take(0)
            return DatasetExamples(
                empty,
                None if self.y is None else self.y[:0],
                element_shape=self.element_shape,
                num_batches=0,
                where=self.where,
                n=0,
            )
        if len(rows) == self.n and np.array_equal(np.sort(rows), np.arange(self.n)):
            return DatasetExamples(
                self.dataset,
                None if self.y is None else self.y.copy(),
                element_shape=self.element_shape,
                num_batches=self.num_batches,
                where=self.where,
                n=self.n,
            )
        raise DataError(
            f"--data {self.where} gives tf.data datasets, and gradloop cannot take some of a pipeline's "
            "examples (to hold out validation data or keep some classes); return a 'val' dataset too, "
            "and keep only the classes you want in the function"
        )

    def batches(self, order: np.ndarray | None, batch_size: int) -> tf.data.Dataset:
        return self.dataset


def _loaded_datasets(result: dict[str, Any], spec: DataSpec, fingerprint: dict[str, Any]) -> Loaded:
    where = spec.path
    for key in DATASET_KEYS:
        if result.get(key) is not None and not _is_dataset(result[key]):
            raise DataError(
                f"--data {where} returned {key} as {user_code.describe(result[key])}, not a tf.data dataset; "
                "return datasets of (x, y) batches under train, val and test"
            )
    scans = {key: _scan(result[key], where, key) for key in DATASET_KEYS if result.get(key) is not None}
    shape = scans["train"].element_shape
    for key, scan in scans.items():
        if scan.element_shape != shape:
            raise DataError(
                f"--data {where}: the {key} dataset has examples of shape {scan.element_shape}, train of "
                f"{shape}; give every split the same shape"
            )
    unlabelled = [key for key, scan in scans.items() if scan.y is None]
    if unlabelled and len(unlabelled) < len(scans):
        raise DataError(
            f"--data {where}: the {unlabelled[0]} dataset yields x alone, and the others (x, y); "
            "give every split labels, or none"
        )
    if unlabelled and (spec.task is not None or "class_names" in result):
        given = f"--task {spec.task}" if spec.task is not None else "class_names"
        raise ConfigError(
            f"--data {where} yields x alone (no labels), so {given} names nothing; drop it, or yield (x, y) batches"
        )
    task = UNLABELED if unlabelled else spec.task or task_of(scans["train"].y)
    names = None
    if task == "classification":
        scans = {key: _as_class_indices(scan, where, key) for key, scan in scans.items()}
        names = _class_names(scans, result.get("class_names"), spec.class_names, where)
    elif "class_names" in result:
        raise DataError(
            f"--data {where} returned class_names, but the task is regression (its y are numbers to "
            "predict); drop class_names, or give class indices and --task classification"
        )
    train = scans["train"]
    return Loaded(
        train=train,
        val=scans.get("val"),
        test=scans.get("test"),
        kind="function",
        task=task,
        class_names=names,
        description=f"{where} (function: tf.data, {train.n:,} examples of shape {shape} "
        f"in {train.num_batches:,} batches"
        f"{', no labels' if task == UNLABELED else ''})",
        fingerprint=fingerprint,
        preprocessing={},
    )


def _scan(dataset: tf.data.Dataset, where: str, split: str) -> DatasetExamples:
    """One pass over ``dataset``: its targets, its examples' shape (the first batch's) and its batches."""
    import tensorflow as tf

    structure = dataset.element_spec
    if isinstance(structure, tf.TensorSpec) or (
        isinstance(structure, tuple) and len(structure) == 1 and isinstance(structure[0], tf.TensorSpec)
    ):
        return _scan_unlabelled(dataset, where, split)
    if not (
        isinstance(structure, tuple) and len(structure) == 2 and all(isinstance(s, tf.TensorSpec) for s in structure)
    ):
        raise DataError(
            f"--data {where}: the {split} dataset yields {_describe_structure(structure)}; yield (x, y) "
            "batches, x and y each one tensor (or x alone, without labels)"
        )
    x_spec, y_spec = structure
    if x_spec.shape.rank == 0 or y_spec.shape.rank == 0:
        raise DataError(
            f"--data {where}: the {split} dataset yields single examples (x of shape {tuple(x_spec.shape)}, "
            f"y of shape {tuple(y_spec.shape)}); batch it: dataset.batch(32)"
        )
    if int(dataset.cardinality()) == tf.data.INFINITE_CARDINALITY:
        raise DataError(
            f"--data {where}: the {split} dataset never ends; drop its .repeat() (gradloop makes one pass per epoch)"
        )
    targets, shape, batches = [], None, 0
    try:
        for x_shape, y in dataset.map(lambda x, y: (tf.shape(x), y)):
            x_shape, y = tuple(int(d) for d in x_shape), y.numpy()
            if y.ndim == 0 or x_shape[0] != len(y):
                raise DataError(
                    f"--data {where}: a batch of the {split} dataset has {x_shape[0]} x but y of shape "
                    f"{y.shape}; yield (x, y) batches with one y per x"
                )
            shape = x_shape[1:] if shape is None else shape
            targets.append(y)
            batches += 1
    except tf.errors.OpError as exc:
        raise DataError(
            f"--data {where}: reading the {split} dataset failed ({user_code.exception_line(exc)}); "
            "fix the function's pipeline"
        ) from exc
    if batches == 0:
        raise DataError(f"--data {where}: the {split} dataset yields no batches")
    try:
        y = np.concatenate(targets)
    except ValueError:
        raise DataError(
            f"--data {where}: the {split} dataset's batches have y of different shapes "
            f"({targets[0].shape[1:]} and others); give every example a y of one shape"
        ) from None
    if y.ndim == 2 and y.shape[1] == 1 and y.dtype.kind in "biu":  # (batch, 1) integer labels: one label each
        y = y[:, 0]
        dataset = dataset.map(lambda x, labels: (x, tf.squeeze(labels, axis=-1)))
    if y.dtype.kind not in "biuf":
        found = "strings" if y.dtype.kind in "OSU" else f"{y.dtype.name} values"
        raise DataError(
            f"--data {where}: the {split} dataset's y are {found}; yield class indices "
            "0, 1, 2, ... (and return class_names to name them) or numbers to predict"
        )
    return DatasetExamples(dataset, y, element_shape=shape, num_batches=batches, where=where)


def _scan_unlabelled(dataset: tf.data.Dataset, where: str, split: str) -> DatasetExamples:
    """One pass over a dataset of x batches alone (a tensor or ``(x,)``): its examples, their shape and its batches."""
    import tensorflow as tf

    x_spec = tf.nest.flatten(dataset.element_spec)[0]
    if x_spec.shape.rank == 0:
        raise DataError(f"--data {where}: the {split} dataset yields single numbers; batch examples: dataset.batch(32)")
    if int(dataset.cardinality()) == tf.data.INFINITE_CARDINALITY:
        raise DataError(
            f"--data {where}: the {split} dataset never ends; drop its .repeat() (gradloop makes one pass per epoch)"
        )
    shape, n, batches = None, 0, 0
    try:
        for x_shape in dataset.map(lambda *x: tf.shape(x[0])):
            x_shape = tuple(int(d) for d in x_shape)
            shape = x_shape[1:] if shape is None else shape
            n += x_shape[0]
            batches += 1
    except tf.errors.OpError as exc:
        raise DataError(
            f"--data {where}: reading the {split} dataset failed ({user_code.exception_line(exc)}); "
            "fix the function's pipeline"
        ) from exc
    if batches == 0:
        raise DataError(f"--data {where}: the {split} dataset yields no batches")
    return DatasetExamples(dataset, None, element_shape=shape, num_batches=batches, where=where, n=n)


def _as_class_indices(scan: DatasetExamples, where: str, split: str) -> DatasetExamples:
    """The labels as int64 class indices, which a pipeline's labels must already be (gradloop cannot map them)."""
    y = scan.y
    if y.ndim != 1:
        found = f"y of shape {y.shape[1:]} per example"
    elif not (y.dtype.kind in "biu" or (np.isfinite(y).all() and (y == np.round(y)).all())):
        found = f"labels of dtype {y.dtype} that are not whole numbers"
    elif y.min() < 0:
        found = f"label {int(y.min())}"
    else:
        scan.y = y.astype(np.int64)
        return scan
    raise DataError(
        f"--data {where}: the {split} dataset has {found}; a classification's datasets yield class "
        "indices 0, 1, 2, ... (one integer per example; return class_names to name them)"
    )


def _class_names(
    scans: dict[str, DatasetExamples], returned: Any, known: tuple[str, ...] | None, where: str
) -> tuple[str, ...]:
    """The run's known classes, else the function's ``class_names``, else ``"0" .. the largest label``."""
    largest = max(int(scan.y.max(initial=0)) for scan in scans.values())
    if known is not None:
        names = known
    elif returned is not None:
        if isinstance(returned, (str, bytes)) or not hasattr(returned, "__len__") or len(returned) < 1:
            raise DataError(
                f"--data {where} returned class_names as {user_code.describe(returned)}; return a list of "
                "names, label i being class_names[i]"
            )
        names = tuple(str(name) for name in returned)
    else:
        return tuple(class_names_of(np.arange(largest + 1)))
    if largest >= len(names):
        raise DataError(
            f"--data {where}: a dataset has label {largest}, but there are {len(names)} class names "
            f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}); label i is class_names[i]"
        )
    return names


def _describe_structure(structure: Any) -> str:
    if isinstance(structure, dict):
        return f"dicts (keys {', '.join(map(str, structure))})"
    if isinstance(structure, tuple):
        return f"tuples of {len(structure)}"
    return f"single {type(structure).__name__}s"
