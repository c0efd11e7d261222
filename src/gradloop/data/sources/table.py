"""A table: ``--data FILE.csv --target COLUMN``, comma-separated UTF-8 text, with a header row or without.

    header row                  the column names (row 1: rows are numbered as a spreadsheet shows them)
    no header row               columns named by position, "0", "1", ... (--target 8: the ninth column)
    --target COLUMN             what to predict; every other column is a feature
    no --target                 every column is a feature, and the examples have no labels (task "none")
    numeric feature columns     x's first features, in the header's order (the run standardises them)
    other feature columns       one-hot encoded after them, one 0/1 feature per value of the training file
    NAME.test.csv beside NAME.csv   a test split, read as the training file is (its categories, its fill values)

A target of text or of integers (as written: ``3``, not ``3.0``) is a
classification's labels (class names: the sorted distinct values, numbers
sorted as numbers); of decimals, a regression's (``--task`` says otherwise).
Missing cells (empty, ``NA``, ``NaN``, ``?``) are an error naming row and column
unless ``--fill`` says what to do: ``mean`` (the training file's column mean;
for a one-hot column, each value's share), ``zero`` or ``drop`` (the row).
Rows with nothing in any cell are skipped.

Whether row 1 names the columns (``--header auto``, the default) is told from its
cells, as mlxtend's ``autompg.csv`` (no header, a text column of car names) needs:
row 1 is data when it has a number above every column of numbers (the cells below,
missing ones aside, all numbers), or when all its cells are numbers; else it is
the header (a name above numbers, or no column of numbers to tell by). Read
without a header, the load says so in a note; ``--header yes`` or ``no`` decides
instead, and the run records the choice (``preprocessing["header"]``), so
evaluate and predict read their files the same way.

What the training file taught (columns, categories, fill values) is the
``preprocessing`` run.json keeps; evaluate passes it back as
``spec.fitted`` and new data is read exactly so, a value the training file
never had being an error rather than a silently different encoding.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from gradloop.data.examples import ArrayExamples
from gradloop.data.sources import (
    FILLS,
    HEADERS,
    TASKS,
    UNLABELED,
    DataSpec,
    Loaded,
    NotAClassLabel,
    check_not_too_many_classes,
    class_names_of,
    combined_fingerprint,
    content_fingerprint,
)
from gradloop.data.sources.csv_file import _missing, _number, _numbers, _quote, _read_table, _Table
from gradloop.data.sources.unlabeled import UnlabeledArrays
from gradloop.errors import ConfigError, DataError, listed

MAX_CATEGORIES = 1000  # one-hot features per text column: more is an id or free text, not a category
_INTEGER = re.compile(r"[+-]?\d+")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def load(spec: DataSpec) -> Loaded:
    """The table at ``spec.path`` and the test file beside it, if any:

    read both (with a header row or without: the run's choice, else --header, else told from row 1)
    find the target (none: every column a feature, no labels); check that the test file has the training file's columns
    refuse (or with fill="drop", drop) rows with missing cells
    learn from the training file which columns are numbers, the others' categories, the fill values
        (evaluate: takes them from spec.fitted instead)
    tell the task and the class names from the target; encode x and y
    """
    path, fitted = Path(spec.path), spec.fitted
    fill = _checked_fill(spec)
    header = _checked_header(spec)
    train = _read_table(path, header)
    test_path = path.with_name(f"{path.stem}.test{path.suffix}")
    header = "no" if train.headerless else "yes"  # the test file is read as the training file was
    test = _read_table(test_path, header) if test_path.is_file() else None

    target = _target_column(train, spec.target or (fitted or {}).get("target"), spec.task)
    labels = [] if target is None else [target]
    features = list(fitted["columns"]) if fitted else [n for n in train.names if n != target]
    if not features:
        raise DataError(f"{path} has no column besides the target {_quote(target)}; add the feature columns")
    if fitted:
        _check_columns(train, features + labels, "the run's training data")
    if test is not None:
        _check_columns(test, features + labels, f"the training file {path.name}")

    train, dropped = _complete_rows(train, features, target, fill)
    test, test_dropped = (None, 0) if test is None else _complete_rows(test, features, target, fill)
    preprocessing = dict(fitted) if fitted else {**_fit(train, features, target, fill), "header": header}
    if fill in ("mean", "zero") and not (fitted and fitted.get("fill") == fill):
        preprocessing["fill_values"] = _fill_values(train, preprocessing, fill)
    if target is None:
        task, names = UNLABELED, None
    else:
        task, names = _task_and_classes(
            spec, preprocessing.get("task"), target, [t for t in (train, test) if t is not None]
        )
    if not fitted:
        preprocessing["task"] = task
    examples = [None if t is None else _examples(t, preprocessing, target, task, names) for t in (train, test)]

    one_hot = preprocessing.get("one_hot", {})
    details = [f"one-hot: {', '.join(f'{c} ({len(v)} values)' for c, v in one_hot.items())}"] if one_hot else []
    if dropped or test_dropped:
        details.append(f"{dropped + test_dropped:,} rows with missing cells dropped")
    if test is not None:
        details.append(f"test: {test_path.name}, {len(test.rows):,} rows")
    if train.headerless:
        details.insert(0, "no header row")
    notes = ()
    if train.headerless and spec.header == "auto" and not fitted:
        notes = (
            (
                f"{path} has no header row (row 1 reads as data), so its columns are named by position, 0 to "
                f"{len(train.names) - 1}, and --target takes that number; pass --header yes if row 1 names them"
            ),
        )
    return Loaded(
        train=examples[0],
        test=examples[1],
        kind="csv",
        task=task,
        class_names=names,
        description=f"{spec.path} (CSV: {len(train.rows):,} rows, {len(features)} feature column"
        f"{'s' if len(features) != 1 else ''}, {'no target' if target is None else f'target {target}'}"
        f"{''.join('; ' + d for d in details)})",
        fingerprint=_fingerprint([path] + ([test_path] if test is not None else [])),
        preprocessing=preprocessing if fitted is None else fitted,
        notes=notes,
    )


def _checked_header(spec: DataSpec) -> str:
    """How to read row 1: as the run read it (``spec.fitted``; a run from before the choice had a header
    row), else ``spec.header``."""
    if spec.fitted is not None:
        return spec.fitted.get("header", "yes")
    if spec.header not in HEADERS:
        raise ConfigError(f"header {spec.header!r} is not one of {', '.join(HEADERS)}")
    return spec.header


def _checked_fill(spec: DataSpec) -> str | None:
    """How to fill missing cells: ``spec.fill``, else as the run did (``spec.fitted``)."""
    if spec.task is not None and spec.task not in TASKS:
        raise ConfigError(f"task {spec.task!r} is not one of {', '.join(TASKS)}")
    fitted = spec.fitted
    fill = spec.fill if spec.fill is not None else (fitted or {}).get("fill")
    if fill is not None and fill not in FILLS:
        raise ConfigError(f"fill {fill!r} is not one of {', '.join(FILLS)}")
    if fitted is not None and "columns" not in fitted:
        raise DataError(
            f"{spec.path} is a table, but the run did not train on one; pass data of the kind it trained on"
        )
    if fitted is not None and fill == "mean" and fitted.get("fill") != "mean":
        raise DataError(
            f"the run trained without --fill mean, so it kept no training means to fill {spec.path}'s "
            "missing cells with; pass --fill zero or drop"
        )
    return fill


def _target_column(table: _Table, target: str | None, task: str | None = None) -> str | None:
    """The column to predict, by name (a headerless table's names are positions); None: no labels."""
    columns = _listing(table.names)
    if target is None:
        if task is not None:
            raise ConfigError(
                f"--task {task} says what to predict, but no --target names the column of {table.path} "
                f"holding it; pass --target COLUMN, one of {columns}"
            )
        return None
    if target.strip() not in table.columns:
        hint = ""
        if len(table.names) == 1 and (";" in table.names[0] or "\t" in table.names[0]):
            hint = "; its header is one column: gradloop reads comma-separated files, not ';' or tab-separated ones"
        elif table.headerless:
            hint = (
                f"; it has no header row, so its columns are named by position, 0 to {len(table.names) - 1} "
                "(--header yes reads row 1 as names)"
            )
        elif all(_number(n) is not None for n in table.names):
            hint = "; its first row looks like data: pass --header no (or add a header row naming the columns)"
        raise ConfigError(f"--target {_quote(target)} is not a column of {table.path}; its columns are {columns}{hint}")
    return target.strip()


def _check_columns(table: _Table, expected: list[str], what: str) -> None:
    absent = [n for n in expected if n not in table.columns]
    if absent:
        raise DataError(
            f"{table.path} has no column {_quote(absent[0])}, which {what} has; its columns are {_listing(table.names)}"
        )
    extra = [n for n in table.names if n not in set(expected)]
    if extra:
        raise DataError(
            f"{table.path} has a column {_quote(extra[0])} that {what} lacks; remove it, so that both "
            "have the same columns"
        )


def _complete_rows(table: _Table, features: list[str], target: str | None, fill: str | None) -> tuple[_Table, int]:
    """The table without its rows with missing cells (``fill="drop"``), or the table itself if every
    cell that must be there is; the first one missing (in reading order) is the error otherwise."""
    must = [n for n in table.names if n == target or (n in features and fill in (None, "drop"))]
    gaps = {n: [_missing(c) for c in table.columns[n]] for n in must}
    if fill == "drop":
        keep = [i for i in range(len(table.rows)) if not any(g[i] for g in gaps.values())]
        if not keep:
            raise DataError(
                f"every row of {table.path} has a missing cell, so --fill drop leaves nothing; "
                "fill the gaps, or pass --fill mean or zero"
            )
        return (table if len(keep) == len(table.rows) else table.subset(keep)), len(table.rows) - len(keep)
    first = min(((g.index(True), table.names.index(n), n) for n, g in gaps.items() if True in g), default=None)
    if first is not None:
        i, _, name = first
        cell = _quote(table.columns[name][i])
        if name == target:
            raise DataError(
                f"row {table.rows[i]} of {table.path} has no target: its {_quote(name)} cell is {cell}; "
                "fill it in, or pass --fill drop to drop such rows"
            )
        raise DataError(
            f"row {table.rows[i]} of {table.path} has a missing cell ({cell}) in column {_quote(name)}; "
            "fill it in, or pass --fill mean, zero or drop"
        )
    return table, 0


# --------------------------------------------------------------------- what the training file teaches


def _fit(table: _Table, features: list[str], target: str | None, fill: str | None) -> dict[str, Any]:
    """Which feature columns are numbers (standardised by the run) and the categories of the others
    (and the target, when there is one)."""
    numeric, one_hot = [], {}
    for name in features:
        present = [c for c in table.columns[name] if not _missing(c)]
        if _numbers(present) is not None:
            numeric.append(name)
            continue
        categories = sorted(set(present))
        if len(categories) > MAX_CATEGORIES:
            raise DataError(
                f"column {_quote(name)} of {table.path} holds {len(categories):,} distinct values that are "
                f"not all numbers (e.g. {_quote(_first_text(present))}), too many to one-hot encode "
                f"({MAX_CATEGORIES} at most); remove the column, or make it numeric"
            )
        one_hot[name] = categories
    preprocessing: dict[str, Any] = {"target": target, "columns": features, "one_hot": one_hot, "standardize": numeric}
    if target is None:
        del preprocessing["target"]
    if fill is not None:
        preprocessing["fill"] = fill
    return preprocessing


def _fill_values(table: _Table, preprocessing: dict[str, Any], fill: str) -> dict[str, Any]:
    """What a missing cell becomes, per column: a number, or one value per one-hot feature."""
    values: dict[str, Any] = {}
    for name in preprocessing["columns"]:
        present = [c for c in table.columns[name] if not _missing(c)]
        categories = preprocessing["one_hot"].get(name)
        if fill == "zero":
            values[name] = 0.0 if categories is None else [0.0] * len(categories)
        elif not present:
            raise DataError(
                f"column {_quote(name)} of {table.path} has no values, so no mean to fill it with; "
                "remove the column, or pass --fill zero"
            )
        elif categories is None:
            values[name] = float(np.mean(_numbers(present)))
        else:
            values[name] = [present.count(c) / len(present) for c in categories]
    return values


def _task_and_classes(
    spec: DataSpec, fitted_task: str | None, target: str, tables: list[_Table]
) -> tuple[str, tuple[str, ...] | None]:
    """The task (``--task``, else the run's, else told from the labels) and, for a classification, the
    class names: the run's, else the sorted distinct labels of both files (numbers sorted as numbers)."""
    labels = [c for t in tables for c in t.columns[target]]
    where = [(t, i) for t in tables for i in range(len(t.rows))]
    numbers = _numbers(labels)
    task = (
        spec.task
        or fitted_task
        or (
            "regression" if numbers is not None and not all(_INTEGER.fullmatch(c) for c in labels) else "classification"
        )
    )
    if task == "regression":
        if numbers is None:
            i = next(i for i, c in enumerate(labels) if _number(c) is None)
            raise ConfigError(
                f"regression needs numbers, but the target {_quote(target)} holds {_quote(labels[i])} "
                f"(row {where[i][0].rows[where[i][1]]} of {where[i][0].path}); pass --task classification"
            )
        return task, None
    if spec.class_names is not None:
        return task, tuple(spec.class_names)
    names = _label_names(labels, where, target)
    distinct = sorted(set(names), key=int) if numbers is not None else sorted(set(names))
    if len(distinct) < 2:
        raise DataError(
            f"the target {_quote(target)} of {tables[0].path} holds one class only ({_quote(distinct[0])}); "
            "a classifier needs at least 2: add rows of another class, or pick another --target"
        )
    if spec.task is None and fitted_task is None and numbers is not None:
        check_not_too_many_classes(len(distinct), len(labels), f"the target {_quote(target)} of {tables[0].path}")
    return task, tuple(distinct)


def _label_names(labels: list[str], where: list[tuple[_Table, int]], target: str) -> list[str]:
    """Each label as a class name: the text, or an integer's digits (``07`` and ``7.0`` are class ``7``)."""
    numbers = _numbers(labels)
    if numbers is None:
        return labels
    try:
        names = class_names_of(numbers)
    except NotAClassLabel as exc:
        table, row = where[exc.index]
        raise ConfigError(
            f"classification needs class labels, but the target {_quote(target)} holds "
            f"{_quote(labels[exc.index])} (row {table.rows[row]} of {table.path}); pass --task regression"
        ) from None
    # integers as written keep every digit (float64 would merge 20-digit ids)
    return [str(int(c)) if _INTEGER.fullmatch(c) else name for c, name in zip(labels, names)]


# --------------------------------------------------------------------- encoding rows


def read_features(path: str | Path, fitted: dict[str, Any]) -> tuple[np.ndarray, list[int], list[str]]:
    """A table's rows as a run read its training rows, for prediction: their features ``x`` (not yet
    standardised), each row's number in the file (as messages give it), and the other columns, left
    out (the target, an id). ``fitted`` is the run's preprocessing (columns, categories, fill values):
    a missing cell is filled as the run filled them, else refused, since every row gets a prediction."""
    path = Path(path)
    table = _read_table(path, fitted.get("header", "yes"))
    features = list(fitted["columns"])
    absent = [n for n in features if n not in table.columns]
    if absent:
        raise DataError(
            f"{path} has no column {_quote(absent[0])}, a feature the run trained on; its columns are "
            f"{_listing(table.names)}"
        )
    fill_values = fitted.get("fill_values", {})
    gaps = {n: [_missing(c) for c in table.columns[n]] for n in features if n not in fill_values}
    first = min(((g.index(True), table.names.index(n), n) for n, g in gaps.items() if True in g), default=None)
    if first is not None:
        i, _, name = first
        raise DataError(
            f"row {table.rows[i]} of {path} has a missing cell ({_quote(table.columns[name][i])}) in column "
            f"{_quote(name)}, and the run trained without --fill mean or zero to fill it; fill it in"
        )
    return _features(table, fitted), table.rows, [n for n in table.names if n not in set(features)]


def _features(table: _Table, preprocessing: dict[str, Any]) -> np.ndarray:
    """x: the numeric feature columns, then the one-hot ones, missing cells filled with ``fill_values``."""
    fill_values = preprocessing.get("fill_values", {})
    one_hot = preprocessing.get("one_hot", {})
    numeric = [n for n in preprocessing["columns"] if n not in one_hot]
    blocks = [_numeric_column(table, n, fill_values.get(n))[:, None] for n in numeric]
    blocks += [_one_hot_column(table, n, one_hot[n], fill_values.get(n)) for n in one_hot]
    return np.concatenate(blocks, axis=1).astype(np.float32)


def _examples(
    table: _Table, preprocessing: dict[str, Any], target: str | None, task: str, names: tuple[str, ...] | None
) -> ArrayExamples | UnlabeledArrays:
    x = _features(table, preprocessing)
    if target is None:
        return UnlabeledArrays(x)
    where = [(table, i) for i in range(len(table.rows))]
    labels = table.columns[target]
    if task == "regression":
        return ArrayExamples(x, _numeric_column(table, target, None).astype(np.float32))
    index = {name: i for i, name in enumerate(names)}
    label_names = _label_names(labels, where, target)
    for i, name in enumerate(label_names):
        if name not in index:
            raise DataError(
                f"row {table.rows[i]} of {table.path}: label {_quote(name)} of {_quote(target)} is not "
                f"among the run's classes {_listing(list(names))}; drop those rows or train on them too"
            )
    return ArrayExamples(x, np.array([index[name] for name in label_names], dtype=np.int64))


def _numeric_column(table: _Table, name: str, fill: float | None) -> np.ndarray:
    cells = table.columns[name]
    missing = np.array([_missing(c) for c in cells], dtype=bool)
    values = np.full(len(cells), np.nan)
    present = [c for c, m in zip(cells, missing) if not m]
    numbers = _numbers(present)
    if numbers is None:
        i = next(i for i, c in enumerate(cells) if not missing[i] and _number(c) is None)
        raise DataError(
            f"row {table.rows[i]} of {table.path} holds {_quote(cells[i])} in column {_quote(name)}, "
            "a numeric column of the training data; write a number there, or leave it empty"
        )
    values[~missing] = numbers
    bad = ~missing & ~(np.abs(np.nan_to_num(values, nan=np.inf)) <= _FLOAT32_MAX)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"row {table.rows[i]} of {table.path} holds {_quote(cells[i])} in column {_quote(name)}, "
            "not a finite number within float32's range (3.4e38); fix the cell, or leave it empty"
        )
    if fill is not None:  # without, _complete_rows has refused or dropped every missing cell
        values[missing] = fill
    return values


def _one_hot_column(table: _Table, name: str, categories: list[str], fill: list[float] | None) -> np.ndarray:
    index = {c: i for i, c in enumerate(categories)}
    cells = table.columns[name]
    encoded = np.zeros((len(cells), len(categories)))
    for i, cell in enumerate(cells):
        if _missing(cell):
            encoded[i] = fill
        elif cell in index:
            encoded[i, index[cell]] = 1.0
        else:
            raise DataError(
                f"row {table.rows[i]} of {table.path} holds {_quote(cell)} in column {_quote(name)}, a value "
                f"the training data never had (it had {_listing(categories)}); use one of those"
            )
    return encoded


# --------------------------------------------------------------------- small helpers


def _first_text(cells: list[str]) -> str:
    return next(c for c in cells if _number(c) is None)


def _listing(names: list[str], most: int = 20) -> str:
    return listed([_quote(n) for n in names], most)


def _fingerprint(paths: list[Path]) -> dict[str, Any]:
    """The file's :func:`content_fingerprint`, or the training and test files' combined."""
    return combined_fingerprint([content_fingerprint(p) for p in paths])
