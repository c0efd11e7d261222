"""Your own data: ``--data PATH``, its kind told from the path, one module per kind.

    FILE.csv                       csv        a table; --target names the column to predict
    FILE.npz, a folder of .npy     arrays     x, y (or x_train, y_train, x_test, y_test)
    a folder of class folders      images     one sub-folder of images per class
    FILE.py:FUNCTION, pkg.mod:FUNCTION   function   anything else (TFRecords, tensorflow-datasets)

Each kind may come without labels (a CSV without --target, x alone, images
directly in the folder, a function returning x alone): the task is then
:data:`UNLABELED`, with no classes and no targets (:mod:`gradloop.data.sources.unlabeled`).

Each kind's module has ``load(spec) -> Loaded``: the examples before the
run picks classes and splits off validation (:mod:`gradloop.data.sources.prepared`).
A module is imported only when its kind is asked for.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gradloop.data.examples import Examples
from gradloop.errors import ConfigError, DataError

KINDS = ("csv", "arrays", "images", "function")
TASKS = ("classification", "regression")  # what --task may say; labels are needed for either
UNLABELED = "none"  # the task of data without labels: no classes, no accuracy, a model with its own train_step
HEADERS = ("auto", "yes", "no")  # a CSV's first row: names (yes), data (no), or told from its cells (auto)
COLOR_MODES = ("grayscale", "rgb", "rgba")
FILLS = ("mean", "zero", "drop")  # missing CSV cells: the training column's mean, 0, or drop the row
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_FUNCTION = re.compile(r"(?P<target>.+):(?P<name>[A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class DataSpec:
    """How to read ``path``: the options of ``--data`` (None: the kind's default).

    ``fitted`` is a finished run's ``preprocessing`` and ``class_names`` the
    classes its source had (run.json): evaluate reads new data exactly as
    that run read its training data, label ``i`` meaning the same.
    """

    path: str
    target: str | None = None
    task: str | None = None
    image_size: tuple[int, int] | None = None
    color_mode: str | None = None
    fill: str | None = None
    seed: int = 0
    fitted: dict[str, Any] | None = None
    class_names: tuple[str, ...] | None = None
    header: str = "auto"


@dataclass(frozen=True, eq=False)  # eq=False: examples hold arrays
class Loaded:
    """A source as read: ``train`` (to be split into train and validation) and ``test``, either
    possibly None; what label ``i`` means (``class_names``, classification) and what was done to
    x that new data must get too (``preprocessing``, JSON); ``fingerprint`` (JSON) changes when
    the data does. ``task`` is :data:`UNLABELED` when the examples have no labels (their ``y`` is
    None); ``notes`` are lines for the user about how the data was read (a CSV read without header)."""

    train: Examples | None
    test: Examples | None
    kind: str
    description: str
    task: str
    class_names: tuple[str, ...] | None
    fingerprint: dict[str, Any]
    preprocessing: dict[str, Any] = field(default_factory=dict)
    val: Examples | None = None  # a source's own validation split (a function may give one)
    notes: tuple[str, ...] = ()


def kind_of(path: str) -> str:
    """The kind of data ``path`` holds, told from the path alone (and a folder's listing)."""
    match = _FUNCTION.fullmatch(path)
    if match and (match["target"].endswith(".py") or _is_module_name(match["target"])) and not Path(path).exists():
        return "function"
    p = Path(path)
    if not p.exists():
        raise DataError(
            f"--data {path}: no such file or folder; pass a CSV file, an .npz, a folder of .npy files or of "
            "class folders of images, or FILE.py:FUNCTION"
        )
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix == ".csv":
            return "csv"
        if suffix == ".npz":
            return "arrays"
        raise DataError(
            f"--data {path}: a {suffix or 'suffix-less'} file is no data gradloop reads; pass a .csv or "
            ".npz file, a folder of .npy files or of class folders of images, or FILE.py:FUNCTION"
        )
    entries = [e for e in p.iterdir() if not e.name.startswith(".")]
    if any(e.is_file() and e.suffix == ".npy" for e in entries):
        return "arrays"
    if any(e.is_dir() or (e.is_file() and e.suffix.lower() in IMAGE_SUFFIXES) for e in entries):
        return "images"  # class folders, or images without labels
    raise DataError(
        f"--data {path}: the folder holds neither .npy files nor class folders of images (nor images); "
        "put one sub-folder of images per class in it"
    )


def _is_module_name(text: str) -> bool:
    return all(part.isidentifier() for part in text.split("."))


def load_source(spec: DataSpec) -> Loaded:
    """Read ``spec.path`` with the module of its kind."""
    kind = kind_of(spec.path)
    module = importlib.import_module(f"gradloop.data.sources.{_MODULES[kind]}")
    return module.load(spec)


_MODULES = {"csv": "table", "arrays": "arrays", "images": "images", "function": "function"}


def file_fingerprint(paths: list[Path], root: Path) -> dict[str, Any]:
    """Count, bytes and a hash of the files' names, sizes and modification times (a changed, added
    or removed file changes it; reading every byte of a large image folder on every resume would
    not pay). A file rewritten in place at the same size changes its modification time; a copy of
    the folder that keeps the sizes but not the modification times is seen as a change too, which
    errs on the side of refusing."""
    digest = hashlib.sha256()
    total = 0
    for path in sorted(paths):
        stat = os.stat(path)
        total += stat.st_size
        digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return {"files": len(paths), "bytes": total, "sha256": digest.hexdigest()}


def content_fingerprint(path: Path) -> dict[str, Any]:
    """Bytes and a hash of a file's content: for the single-file kinds (CSV, npz), read whole anyway."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return {"files": 1, "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def combined_fingerprint(prints: list[dict[str, Any]]) -> dict[str, Any]:
    """Several files' :func:`content_fingerprint` as one (the first one alone if it is the only one)."""
    if len(prints) == 1:
        return prints[0]
    digest = hashlib.sha256("".join(p["sha256"] for p in prints).encode())
    return {"files": len(prints), "bytes": sum(p["bytes"] for p in prints), "sha256": digest.hexdigest()}


class NotAClassLabel(ValueError):
    """A label that names no class (not a whole number): ``index`` is its position, for the caller's message."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


def class_names_of(values: np.ndarray) -> list[str]:
    """Each label as a class name: the text, or a whole number's digits (``7`` and ``7.0`` are class ``7``).

    Raises :class:`NotAClassLabel` for the first number that is not whole (``0.5``) or finite,
    so that no two distinct labels ever share a name; callers word the refusal."""
    values = np.asarray(values)
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            raise NotAClassLabel(int(np.flatnonzero(bad.ravel())[0]))
    if values.dtype.kind in "biuf":
        return [str(int(v)) for v in values.ravel()]
    return [str(v) for v in values.ravel()]


def check_not_too_many_classes(classes: int, examples: int, what: str) -> None:
    """Refuse an inferred classification with about one class per example (integer prices or ids; the
    caller checks that --task left the task to the labels, and that they are numbers):
    more than 20 classes and more than half as many as examples."""
    if classes > 20 and classes > examples / 2:
        raise ConfigError(
            f"{what} has {classes:,} distinct labels in {examples:,} examples, too many to be classes; "
            "pass --task regression to predict the numbers (or --task classification to insist)"
        )


def describe_change(then: dict[str, Any], now: dict[str, Any]) -> str:
    """How a fingerprint changed, for the one-line refusal."""
    if (then.get("files"), then.get("bytes")) == (now.get("files"), now.get("bytes")):
        return f"the same {_files(now)} and {now.get('bytes'):,} bytes, other content"
    return f"{_files(then)}, {then.get('bytes'):,} bytes then; {_files(now)}, {now.get('bytes'):,} bytes now"


def _files(fingerprint: dict[str, Any]) -> str:
    n = fingerprint.get("files")
    return f"{n} file" if n == 1 else f"{n} files"
