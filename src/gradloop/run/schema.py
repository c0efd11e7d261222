"""What run.json and history.json may hold, checked as they are read: a run folder may come from
someone else, so reading one trusts nothing in it.

    check_info(info, file)      each run.json field gradloop reads back of its type and bounded size
                                (``_INFO_FIELDS``), and its ``data`` record (:func:`check_data_record`)
    check_history(history, file)    history.json: lists of at most ``MAX_ITEMS`` numbers

Each refusal is one line, ``RunDirError``, naming the file, the field and what it must be: a
damaged or crafted file stops here, not in a crash later. Paths follow one rule
(:func:`gradloop.run.files.own_path`): the run's own files are inside its folder, and run.json
names none but ``model_source`` (model_source.py:FUNCTION, model_initial.keras or
package.module:FUNCTION, never a path); the user's data (config's ``data`` and ``data_dir``) is
recorded absolute and read where it points, never written.

Code from a run (its model_source.py, a model's custom objects or Lambda layers, a data
function) runs only when the user trusts the run (``TRUST_CODE``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gradloop.errors import RunDirError, shortened
from gradloop.run.files import MODEL_SOURCE

TRUST_CODE = "--trust-code"  # the flag that lets a command run a run's own code (cli adds it to each)
MAX_ITEMS = 10**6  # entries of any list in run.json and history.json (classes, feature columns, epochs)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 100_000


def _is_list(value: Any, item: Callable[[Any], bool]) -> bool:
    return isinstance(value, list) and len(value) <= MAX_ITEMS and all(item(v) for v in value)


def _is_dict(value: Any, item: Callable[[Any], bool] = lambda v: True) -> bool:
    return isinstance(value, dict) and len(value) <= MAX_ITEMS and all(item(v) for v in value.values())


def _is_model_source(value: Any) -> bool:
    """None, model_initial.keras, model_source.py:FUNCTION or package.module:FUNCTION: never a path."""
    if value is None or value == "model_initial.keras":
        return True
    target, _, name = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    is_module = not target.endswith(".py") and all(part.isidentifier() for part in target.split("."))
    return name.isidentifier() and (target == MODEL_SOURCE or is_module)


# The run.json fields gradloop reads back, and what each must be when present.
_INFO_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "task": (
        lambda v: v is None or v in ("classification", "regression", "none"),
        "classification, regression or none",
    ),
    "classes": (lambda v: v is None or _is_list(v, lambda c: _is_text(c) or _is_count(c)), "a list of class names"),
    "n_classes": (lambda v: v is None or _is_count(v), "a count"),
    "n_outputs": (lambda v: v is None or (_is_count(v) and v >= 1), "a count of at least 1"),
    "n_train": (_is_count, "a count"),
    "n_val": (_is_count, "a count"),
    "parameters": (_is_count, "a count"),
    "epochs_done": (_is_count, "a count"),
    "num_replicas": (_is_count, "a count"),
    "train_seconds": (_is_number, "a number"),
    "seconds": (_is_number, "a number"),
    "data_source": (_is_text, "text"),
    "model": (_is_text, "text"),
    "loss": (_is_text, "text"),
    "started": (_is_text, "text"),
    "error": (_is_text, "text"),
    "strategy": (_is_text, "text"),
    "metrics": (lambda v: _is_list(v, _is_text), "a list of names"),
    "best": (
        lambda v: _is_dict(v) and (v.get("metric") is None or _is_text(v["metric"])),
        "a metric and its best epoch",
    ),
    "versions": (lambda v: _is_dict(v, _is_text), "a list of versions"),
    "resumed": (lambda v: _is_list(v, _is_dict), "a list of resumes"),
    "model_source": (_is_model_source, "model_source.py:FUNCTION, model_initial.keras or package.module:FUNCTION"),
    "data": (lambda v: v is None or _is_dict(v), "what the run's data was"),
}


def check_info(info: Mapping[str, Any], file: Path) -> None:
    """Refuse a run.json whose fields are not of their types (``_INFO_FIELDS``, and the data's
    :func:`check_data_record`): a damaged or crafted file is one line here, not a crash later."""
    for key, (ok, what) in _INFO_FIELDS.items():
        if key in info and not ok(info[key]):
            raise RunDirError(f"{file} has {key} {_shown(info[key])}, not {what}; the run directory is damaged")
    if isinstance(info.get("data"), dict):
        check_data_record(info["data"], file)


def check_data_record(data: Mapping[str, Any], file: Path) -> None:
    """run.json's ``data``: its kind, the classes of its source, and the preprocessing evaluate and
    predict apply again, by kind (what :mod:`gradloop.data`'s readers record)."""
    from gradloop.data.sources import COLOR_MODES, FILLS, KINDS, TASKS, UNLABELED  # here: listing runs needs none of it

    p = data.get("preprocessing") or {}

    def refuse(key: str, what: str) -> RunDirError:
        value = data[key] if key in data or not isinstance(p, dict) else p.get(key)
        return RunDirError(f"{file} has data {key} {_shown(value)}, not {what}; the run directory is damaged")

    if data.get("kind") not in (*KINDS, "builtin"):
        raise refuse("kind", f"one of {', '.join((*KINDS, 'builtin'))}")
    if not _is_dict(p):
        raise refuse("preprocessing", "a record of how the data was read")
    if not _is_dict(data.get("fingerprint") or {}):
        raise refuse("fingerprint", "a record of the data's files")
    if data.get("source_classes") is not None and not _is_list(data["source_classes"], _is_text):
        raise refuse("source_classes", "a list of class names")
    names = lambda v: _is_list(v, _is_text)  # noqa: E731
    numbers = lambda v: _is_list(v, lambda x: _is_number(x) and math.isfinite(x))  # noqa: E731
    checks: dict[str, tuple[Callable[[Any], bool], str]] = {
        "image_size": (
            lambda v: _is_list(v, lambda x: _is_count(x) and 1 <= x <= 8192) and len(v) == 2,
            "two sizes from 1 to 8192 pixels",
        ),
        "color_mode": (lambda v: v in COLOR_MODES, f"one of {', '.join(COLOR_MODES)}"),
        "divide_by": (lambda v: _is_number(v) and math.isfinite(v) and v > 0, "a positive number"),
        "target": (_is_text, "a column name"),
        "columns": (names, "a list of column names"),
        "one_hot": (lambda v: _is_dict(v, names), "each text column's values"),
        "fill": (lambda v: v in FILLS, f"one of {', '.join(FILLS)}"),
        "fill_values": (
            lambda v: _is_dict(v, lambda x: (_is_number(x) and math.isfinite(x)) or numbers(x)),
            "each column's fill values",
        ),
        "task": (lambda v: v in (*TASKS, UNLABELED), f"one of {', '.join((*TASKS, UNLABELED))}"),
        "header": (lambda v: v in ("yes", "no"), "yes or no"),
        "standardize": (
            lambda v: (
                names(v)
                or (
                    _is_dict(v)
                    and names(v.get("columns"))
                    and numbers(v.get("mean"))
                    and numbers(v.get("std"))
                    and len(v["mean"]) == len(v["std"])
                    and all(s > 0 for s in v["std"])
                )
            ),
            "the columns' means and standard deviations",
        ),
    }
    for key, (ok, what) in checks.items():
        if key in p and not ok(p[key]):
            raise refuse(key, what)
    if data.get("kind") == "csv" and "columns" not in p:
        raise refuse("columns", "a list of column names")


def check_history(history: Any, file: Path) -> None:
    """Refuse a history.json that is not per-epoch lists of at most ``MAX_ITEMS`` numbers (or None)."""
    if not isinstance(history, dict) or not all(isinstance(v, list) for v in history.values()):
        raise RunDirError(f"{file} is not a history of per-epoch lists; the run directory is damaged")
    for key, values in history.items():
        if len(values) > MAX_ITEMS or not all(v is None or _is_number(v) for v in values):
            raise RunDirError(
                f"{file} holds {_shown(key)}, which is not a list of at most {MAX_ITEMS:,} numbers; "
                "the run directory is damaged"
            )


def _shown(value: Any) -> str:
    """A value from a run's file, for a one-line message: its repr cut short."""
    text = repr(value)
    return " ".join(shortened(text, 60).split())
