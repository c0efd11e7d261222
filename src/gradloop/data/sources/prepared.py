"""A run's data from ``--data``: the source read, the classes chosen, validation split off, standardised.

    loaded = sources.load_source(spec)          the kind's module reads the files
    keep the chosen classes (names or indices), relabel them 0..k-1
    split train / validation with the seed       (the tutorial's split: the last round(n * f) of a permutation)
    standardise features with the training split's statistics (CSV), saved for evaluate

Data without labels (task ``"none"``) has no classes to choose: the split is of x alone.

Evaluate calls the same function with the run's saved spec, so it sees the
very same validation samples and the same preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradloop.data import sources
from gradloop.data.builtin.prepare import split_rows
from gradloop.data.examples import ArrayExamples, Examples
from gradloop.data.sources.unlabeled import UnlabeledArrays
from gradloop.errors import ConfigError, DataError


@dataclass(frozen=True, eq=False)
class RunData:
    """What a run trains, validates and tests on, and what it records about it in run.json."""

    train: Examples
    val: Examples | None
    test: Examples | None
    kind: str
    description: str
    task: str
    class_names: tuple[str, ...] | None  # the run's classes: label i is class_names[i]
    source_class_names: tuple[str, ...] | None  # all the source's classes, before --classes chose some
    fingerprint: dict[str, Any]
    preprocessing: dict[str, Any]

    @property
    def n_outputs(self) -> int:
        """Logits per example (classification) or values to predict (regression); 0 without labels."""
        if self.class_names is not None:
            return len(self.class_names)
        if self.task == sources.UNLABELED:
            return 0
        return int(np.prod(self.train.y.shape[1:], dtype=np.int64)) or 1

    def split(self, name: str) -> Examples | None:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def load_run_data(
    spec: sources.DataSpec,
    *,
    classes: Sequence[str | int] | None,
    val_fraction: float,
    seed: int,
    notify: Callable[[str], object] | None = None,
) -> RunData:
    """The run's splits of ``spec``'s data: see the module docstring. ``notify`` gets the source's
    notes on how it read the data (a CSV read without a header row), one line each."""
    loaded = sources.load_source(spec)
    for note in loaded.notes if notify is not None else ():
        notify(f"gradloop: note: {note}")
    if loaded.train is None:
        raise DataError(f"--data {spec.path} has no training data; give it x and y (or x_train and y_train)")
    train, test, val, names = loaded.train, loaded.test, loaded.val, loaded.class_names
    if loaded.task == "classification":
        keep = chosen_class_indices(names, classes, spec.path)
        train, test, val = (
            _relabel(e, keep, spec.path, split)
            for e, split in ((train, "training"), (test, "test"), (val, "validation"))
        )
        names = tuple(names[c] for c in keep)
    elif classes is not None and loaded.task == sources.UNLABELED:
        raise ConfigError(f"--classes picks classes of labelled data, and {spec.path} has no labels; drop --classes")
    elif classes is not None:
        raise ConfigError("--classes picks classes of a classification task; drop it for regression")
    if val is None:
        train, val = split_examples(train, val_fraction=val_fraction, seed=seed)
    preprocessing = dict(loaded.preprocessing if spec.fitted is None else spec.fitted)
    if isinstance(preprocessing.get("standardize"), list):  # column names: statistics of the training split, kept
        preprocessing["standardize"] = fit_standardization(train, preprocessing["standardize"])
    if "standardize" in preprocessing:
        train, val, test = (standardize(e, preprocessing["standardize"]) for e in (train, val, test))
    return RunData(
        train=train,
        val=val,
        test=test,
        kind=loaded.kind,
        description=loaded.description,
        task=loaded.task,
        class_names=names,
        source_class_names=loaded.class_names,
        fingerprint=loaded.fingerprint,
        preprocessing=preprocessing,
    )


def chosen_class_indices(names: Sequence[str], classes: Sequence[str | int] | None, path: str) -> list[int]:
    """Indices into ``names`` of the chosen classes, in the user's order: names, or indices into the
    sorted class names; all of them by default."""
    if classes is None or (isinstance(classes, str) and classes.strip().lower() == "all"):
        keep = list(range(len(names)))
    else:
        wanted = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else list(classes)
        keep = []
        for c in wanted:
            if str(c) in names:
                keep.append(names.index(str(c)))
            elif isinstance(c, int) or (isinstance(c, str) and c.isdigit()):
                if not 0 <= int(c) < len(names):
                    raise ConfigError(
                        f"class {c} is out of range: {path} has {len(names)} classes (0 to {len(names) - 1})"
                    )
                keep.append(int(c))
            else:
                raise ConfigError(f"class {c!r} is not in {path}; its classes are {', '.join(names[:20])}")
        if len(set(keep)) != len(keep):
            raise ConfigError(f"--classes {','.join(map(str, wanted))} names a class twice; list each class once")
    if len(keep) < 2:
        raise ConfigError(
            f"a classifier needs at least 2 classes, and {path} gives {len(keep)}; add data of another class"
        )
    return keep


def _relabel(examples: Examples | None, keep: list[int], path: str, split: str) -> Examples | None:
    if examples is None:
        return None
    new_label = np.full(max(int(examples.y.max(initial=0)), max(keep)) + 1, -1, dtype=np.int64)
    new_label[keep] = np.arange(len(keep))
    labels = new_label[examples.y]
    rows = np.flatnonzero(labels >= 0)
    if split == "training" and len(rows) == 0:
        raise DataError(f"{path} has no training examples of the chosen classes")
    chosen = examples.subset(rows)
    chosen.y = labels[rows]
    return chosen


def split_examples(examples: Examples, *, val_fraction: float, seed: int) -> tuple[Examples, Examples]:
    """The examples split as :func:`gradloop.data.builtin.prepare.split_rows` splits every source."""
    train, val = split_rows(examples.n, val_fraction=val_fraction, seed=seed)
    return examples.subset(train), examples.subset(val)


def fit_standardization(train: Examples, columns: Sequence[str]) -> dict[str, Any]:
    """Mean and standard deviation of each feature over the training split (a constant feature keeps 1).

    A table's features are its ``columns`` first, then one-hot indicators (:mod:`gradloop.data.sources.table`):
    those after the named columns keep mean 0 and std 1, so standardising passes them through unchanged.
    """
    x = train.x.astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    if x.ndim == 2:
        mean[len(columns) :], std[len(columns) :] = 0.0, 1.0
    return {"columns": list(columns), "mean": mean.tolist(), "std": std.tolist()}


def standardize(
    examples: ArrayExamples | UnlabeledArrays | None, stats: dict[str, Any]
) -> ArrayExamples | UnlabeledArrays | None:
    if examples is None:
        return None
    mean, std = np.asarray(stats["mean"]), np.asarray(stats["std"])
    x = ((examples.x - mean) / std).astype(np.float32)
    return UnlabeledArrays(x) if examples.y is None else ArrayExamples(x, examples.y)
