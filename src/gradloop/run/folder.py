"""The run directory: which files a run holds, and every read and write of them.

    RUN_DIR/
        run.json             what the run is and where it stands (below)
        history.json, .csv   per epoch, in the tutorial's names (train_loss, val_accuracy, ...)
        history.png          the tutorial's two panels
        model.keras          the last epoch's model; model.best.keras: the lowest val_loss epoch's
        model_summary.txt    Keras' model.summary(): layers, output shapes, parameter counts
        model_source.py      a copy of --model FILE.py (and the modules beside it that it imports),
                             or model_initial.keras of --model FILE.keras: what a resume builds from
        checkpoints/         tf.train.CheckpointManager's, for --resume
        tensorboard/         event files
        run.lock             flock'ed by the one process writing the run: "PID HOST" (:func:`lock`)
        report/, saved_model/    written later by ``gradloop report`` and ``gradloop export``

run.json's ``status`` moves only as :class:`RunDir`'s methods move it:

    running --> interrupted (a signal, after a checkpoint) --> running (--resume)
            --> finished | failed (the loss diverged)

After each epoch run.json also says how far the run got (:func:`progress`:
``epochs_done``, ``train_seconds``, ``best``), so that ``gradloop runs`` reads one
small file per run. A ``running`` run whose process is gone (:func:`lock_holder` is None) was
killed. ``format`` is the run.json layout's version: an older file is upgraded when read, a newer
one refused.

One process writes a run: it holds the run's lock (:func:`lock`, :func:`claim`) from before it
changes anything; a second writer is refused naming the holder's pid, readers never lock.

Every file gradloop writes here goes to a temporary name first, is fsynced and
renamed over the final one, and the folder fsynced (:mod:`gradloop.atomic`), so a
process killed or a machine losing power at any instant leaves the old file or the
new, never half of one, and a full disk raises DiskFullError instead; TensorFlow's
own checkpoints, event files and SavedModel are written by TensorFlow (a checkpoint
is fsynced, then recorded once complete: :mod:`gradloop.loop.checkpoint`). Nothing here
imports TensorFlow: reading a run is instant.

A run folder may come from someone else, so reading one trusts nothing in it.
run.json and history.json are checked as they are read (:func:`read_info`,
:meth:`RunDir.read_history`: each field gradloop reads back has its type and
bounded size, each file at most ``MAX_JSON_BYTES``), and paths follow one rule:

    the run's own files     the names above, always inside the folder: run.json names none
                            but ``model_source`` (model_source.py:FUNCTION, model_initial.keras,
                            or package.module:FUNCTION, never a path), and a name that is a
                            symlink leading out of the folder is refused (:func:`own_path`)
    the user's data         config's ``data`` and ``data_dir``: references to data, recorded
                            absolute, read where they point; never written

Code from a run (its model_source.py, a model's custom objects or Lambda layers, a
data function) runs only when the user trusts the run (``--trust-code``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import fcntl
import io
import json
import math
import os
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from gradloop.atomic import save_model, write_atomically  # noqa: F401  (rundir.save_model: a run's model files)
from gradloop.errors import ConfigError, RunDirError, RunInUseError

FORMAT = 1  # run.json's layout; 0 is a run.json written before it had a format
RUN_JSON = "run.json"
HISTORY_JSON = "history.json"
HISTORY_CSV = "history.csv"
HISTORY_PNG = "history.png"
MODEL = "model.keras"
BEST_MODEL = "model.best.keras"
MODEL_SOURCE = "model_source.py"  # a copy of --model FILE.py, which a resume builds the model from
MODEL_SUMMARY = "model_summary.txt"  # Keras' model.summary(): layers, output shapes, parameter counts
CHECKPOINTS = "checkpoints"
CACHE = "cache"  # an unfinished run's image folder, decoded once (gradloop.data.sources.image_cache)
TENSORBOARD = "tensorboard"
REPORT = "report"
SAVED_MODEL = "saved_model"
LOCK = "run.lock"  # held (flock) by the one process writing the run; it holds "PID HOST"
# The files a run writes as it goes (besides checkpoints/ and tensorboard/).
_WRITTEN_FILES = (RUN_JSON, HISTORY_JSON, HISTORY_CSV, HISTORY_PNG, MODEL, BEST_MODEL, MODEL_SUMMARY)
STATUSES = ("running", "interrupted", "finished", "failed")
TRUST_CODE = "--trust-code"  # the flag that lets a command run a run's own code (cli adds it to each)
MAX_JSON_BYTES = 64 * 2**20  # run.json and history.json: far above any run's, far below what exhausts memory
MAX_ITEMS = 10**6  # entries of any list in them (classes, feature columns, epochs)


# --------------------------------------------------------------------- writing a file whole or not at all


def write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path, *, missing: str) -> Any:
    """A JSON file of a run: absent is ``RunDirError(missing)``, unreadable or
    not JSON means the run directory is damaged."""
    try:
        content = _read_bounded(Path(path))
        return json.loads(content.decode("utf-8"))
    except FileNotFoundError:
        raise RunDirError(missing) from None
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise RunDirError(f"cannot read {path}: {exc}; the run directory is damaged") from None


def _read_bounded(path: Path) -> bytes:
    """A regular file's bytes, at most ``MAX_JSON_BYTES`` of them (a FIFO or device would block or never end)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        content = file.read(MAX_JSON_BYTES + 1)
    if len(content) > MAX_JSON_BYTES:
        raise ValueError(f"larger than {MAX_JSON_BYTES // 2**20} MiB, more than any run writes")
    return content


# --------------------------------------------------------------------- history


def tutorial_history(history: Mapping[str, list[float]]) -> dict[str, list[float]]:
    """Keras names -> the tutorial's: ``loss`` -> ``train_loss``, ``val_*`` unchanged."""
    return {
        (k if k.startswith("val_") or k.startswith("train_") else f"train_{k}"): [None if v is None else float(v) for v in vs]
        for k, vs in history.items()
    }


def _history_csv(history: Mapping[str, list[float]]) -> str:
    keys = list(history)
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["epoch", *keys])
    for i in range(len(history[keys[0]]) if keys else 0):
        writer.writerow([i + 1, *("" if history[k][i] is None else f"{history[k][i]:.6g}" for k in keys)])
    return out.getvalue()


def aligned_history(keras_history: Mapping[str, list[float]], validated: Callable[[int], bool]) -> dict[str, list]:
    """Keras' history with every list one entry per epoch: its ``val_`` lists, which hold the
    validated epochs only (``validated(epoch)``, from 0), get None for the others."""
    epochs = max((len(v) for k, v in keras_history.items() if not k.startswith("val_")), default=0)
    aligned = {}
    for key, values in keras_history.items():
        if key.startswith("val_") and len(values) < epochs:
            entries = iter(values)
            values = [next(entries, None) if validated(e) else None for e in range(epochs)]
        aligned[key] = list(values)
    return aligned


BEST = {"metric": "val_loss", "mode": "min"}  # what a run's best epoch is when run.json names nothing else


def progress(history: Mapping[str, list[float]], best: Any = None) -> dict[str, Any]:
    """run.json's account of the epochs in ``history`` (the tutorial's names), for ``gradloop runs``:

        epochs_done     how many there are
        train_seconds   their training passes' time (``train_time``) summed; validation not included
        best            {metric, mode, value, epoch}: the first epoch (from 1) where ``best["metric"]``
                        was highest (mode ``max``) or lowest (``min``), or without value and epoch when
                        the history has no finite value of it; by default the lowest val_loss
    """
    ok = isinstance(best, Mapping) and isinstance(best.get("metric"), str) and best.get("mode") in ("max", "min")
    spec = {"metric": best["metric"], "mode": best["mode"]} if ok else dict(BEST)
    values = [v if _finite(v) else None for v in history.get(spec["metric"], [])]
    epochs = [i for i, v in enumerate(values) if v is not None]
    if epochs:
        pick = max if spec["mode"] == "max" else min  # both return the first of equal values: the earliest epoch
        epoch = pick(epochs, key=values.__getitem__)
        spec.update(value=values[epoch], epoch=epoch + 1)
    return {
        "epochs_done": max((len(v) for v in history.values()), default=0),
        "train_seconds": round(sum(v for v in history.get("train_time", []) if _finite(v)), 3),
        "best": spec,
    }


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------- one run's folder


class RunDir:
    """One run's folder: its files by name, its run.json (``info``) and its history.

    >>> run = RunDir.open("runs/x")          # reading: evaluate, report, export
    >>> run.info["config"], run.read_history()
    """

    def __init__(self, path: str | os.PathLike, info: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.info: dict[str, Any] = info if info is not None else {}
        self._epochs: dict[str, list[float]] = {}  # the history record_epoch adds to (Keras names)
        self.lock: RunLock | None = None  # this process's, while it writes the run (see claim)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # reading -------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike, *, missing: str | None = None) -> "RunDir":
        """A finished or running run, to read; anything but a folder with a valid run.json is refused."""
        path = Path(path)
        if not path.is_dir():
            state = "is not a folder" if path.exists() else "does not exist"
            raise RunDirError(f"run directory {path} {state}; pass a folder made by gradloop train")
        missing = missing or f"{path} is not a gradloop run directory (no run.json); pass a folder made by gradloop train"
        return cls(path, read_info(path, missing=missing))

    def read_history(self) -> dict[str, list[float]]:
        """history.json: per-epoch lists in the tutorial's names."""
        path = own_path(self.path, HISTORY_JSON)
        history = read_json(path, missing=f"{self.path} has no history.json; the run did not finish an epoch (train it again)")
        if not isinstance(history, dict) or not all(isinstance(v, list) for v in history.values()):
            raise RunDirError(f"{path} is not a history of per-epoch lists; the run directory is damaged")
        for key, values in history.items():
            if len(values) > MAX_ITEMS or not all(v is None or _is_number(v) for v in values):
                raise RunDirError(f"{path} holds {_shown(key)}, which is not a list of at most {MAX_ITEMS:,} numbers; "
                                  "the run directory is damaged")
        return history

    # writing -------------------------------------------------------------

    def write_info(self) -> None:
        write_json(self / RUN_JSON, {**self.info, "format": FORMAT})

    def write_history(self, keras_history: Mapping[str, list[float]]) -> dict[str, list[float]]:
        """history.json and history.csv in the tutorial's names; returns that dict."""
        history = tutorial_history(keras_history)
        write_json(self / HISTORY_JSON, history)
        write_text(self / HISTORY_CSV, _history_csv(history))
        return history

    def record_epoch(self, logs: Mapping[str, float]) -> None:
        """Add one epoch's logs (Keras names) to the history files, so a crash keeps finished epochs,
        and, for a started run, its :func:`progress` to run.json, which ``gradloop runs`` reads alone."""
        epoch = max((len(v) for v in self._epochs.values()), default=0)
        for key in {**self._epochs, **logs}:  # an epoch without validation has null val_ entries
            values = self._epochs.setdefault(key, [None] * epoch)
            values.append(None if logs.get(key) is None else float(logs[key]))
        history = self.write_history(self._epochs)
        if self.info:
            self.info.update(progress(history, self.info.get("best")))
            self.write_info()

    def recorded_history(self) -> dict[str, list[float | None]]:
        """The epochs recorded so far (Keras names), every list one entry per epoch (None: not validated)."""
        return self._epochs

    def continue_history(
        self, keras_history: Mapping[str, list[float]], *, validated: Callable[[int], bool] = lambda epoch: True
    ) -> None:
        """The epochs a resumed run already has (Keras names): ``record_epoch`` appends to them.
        ``validated(epoch)`` (from 0) says which epochs Keras' shorter ``val_`` lists hold."""
        self._epochs = aligned_history(keras_history, validated)

    # status --------------------------------------------------------------

    def start(self, info: dict[str, Any]) -> None:
        self.info = {"status": "running", **info, **_process(), "started": now()}  # status first: `head run.json` shows it
        self.write_info()

    def resume(self, *, config: dict[str, Any], epoch: int, step: int, **facts: Any) -> None:
        """Back to ``running``, noting where the resume starts (``epoch`` counts from 1)."""
        self.info.setdefault("resumed", []).append({"at": now(), "epoch": epoch, "step": step, **facts})
        self.info.update(status="running", config=config, **_process())
        self.info.pop("interrupted_at", None)
        self.write_info()

    def interrupted(self, *, epoch: int, step: int) -> None:
        self.info.update(status="interrupted", interrupted_at={"epoch": epoch, "step": step})
        self.write_info()

    def failed(self, error: str) -> None:
        self.info.update(status="failed", error=error)
        self.write_info()

    def finished(self, **facts: Any) -> None:
        self.info.update(status="finished", **facts)
        self.write_info()


def read_info(path: Path, *, missing: str) -> dict[str, Any]:
    """run.json of the run in ``path``, upgraded to this ``FORMAT``: a JSON object with a config,
    each field gradloop reads back of its type (:func:`check_info`)."""
    file = own_path(Path(path), RUN_JSON)
    info = read_json(file, missing=missing)
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise RunDirError(f"{file} has no config; the run directory is damaged")
    version = info.get("format", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise RunDirError(f"{file} has format {version!r}, not a version number; the run directory is damaged")
    if version > FORMAT:
        raise RunDirError(f"{file} has format {version}, newer than this gradloop's {FORMAT}; upgrade gradloop to read it")
    if version == 0:  # before format 1 run.json had no "workers": a multi-worker run had a replica per worker
        info.setdefault("workers", info.get("num_replicas", 1) if info.get("strategy") == "multi_worker" else 1)
    if "status" in info and info["status"] not in STATUSES:
        raise RunDirError(f"{file} has status {info['status']!r}, not one of {', '.join(STATUSES)}; the run directory is damaged")
    if isinstance(info.get("workers", 1), bool) or not isinstance(info.get("workers", 1), int):
        raise RunDirError(f"{file} has workers {info['workers']!r}, not a count; the run directory is damaged")
    check_info(info, file)
    info["format"] = FORMAT
    return info


# --------------------------------------------------------------------- what run.json may hold


def own_path(run: str | os.PathLike, name: str) -> Path:
    """``run/name``, one of the run's own files or folders; refused when a symlink (it, or one on
    the way) leads out of the run folder, so that a run from someone else cannot make gradloop
    read or write elsewhere."""
    path = Path(run) / name
    inside, real = os.path.realpath(run), os.path.realpath(path)
    if os.path.commonpath([inside, real]) != inside:
        raise RunDirError(f"{path} leads out of the run directory (to {real}); gradloop reads and writes a run's own "
                          "files inside its folder only: replace the link with the file")
    return path


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
    "task": (lambda v: v is None or v in ("classification", "regression"), "classification or regression"),
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
    "best": (lambda v: _is_dict(v) and (v.get("metric") is None or _is_text(v["metric"])), "a metric and its best epoch"),
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
        "image_size": (lambda v: _is_list(v, lambda x: _is_count(x) and 1 <= x <= 8192) and len(v) == 2,
                       "two sizes from 1 to 8192 pixels"),
        "color_mode": (lambda v: v in COLOR_MODES, f"one of {', '.join(COLOR_MODES)}"),
        "divide_by": (lambda v: _is_number(v) and math.isfinite(v) and v > 0, "a positive number"),
        "target": (_is_text, "a column name"),
        "columns": (names, "a list of column names"),
        "one_hot": (lambda v: _is_dict(v, names), "each text column's values"),
        "fill": (lambda v: v in FILLS, f"one of {', '.join(FILLS)}"),
        "fill_values": (lambda v: _is_dict(v, lambda x: (_is_number(x) and math.isfinite(x)) or numbers(x)),
                        "each column's fill values"),
        "task": (lambda v: v in (*TASKS, UNLABELED), f"one of {', '.join((*TASKS, UNLABELED))}"),
        "header": (lambda v: v in ("yes", "no"), "yes or no"),
        "standardize": (lambda v: names(v) or (_is_dict(v) and names(v.get("columns")) and numbers(v.get("mean"))
                                                and numbers(v.get("std")) and len(v["mean"]) == len(v["std"])
                                                and all(s > 0 for s in v["std"])),
                        "the columns' means and standard deviations"),
    }
    for key, (ok, what) in checks.items():
        if key in p and not ok(p[key]):
            raise refuse(key, what)
    if data.get("kind") == "csv" and "columns" not in p:
        raise refuse("columns", "a list of column names")


def _shown(value: Any) -> str:
    """A value from a run's file, for a one-line message: its repr cut short."""
    text = repr(value)
    return " ".join((text if len(text) <= 60 else text[:57] + "...").split())


def _process() -> dict[str, Any]:
    """The process writing the run, in run.json: which one a ``running`` run is (see :func:`lock_holder`)."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def first_metric(info: Mapping[str, Any]) -> str | None:
    """run.json's first metric other than the loss (the history's top panel), if it names one."""
    metrics = info.get("metrics")
    names = [m for m in metrics if isinstance(m, str) and m != "loss"] if isinstance(metrics, list) else []
    return names[0] if names else None


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


# --------------------------------------------------------------------- one process per run

_PROBE_SECONDS = 0.5  # how long a moment's hold (lock_holder's probe, a pid being written) may last


class RunLock:
    """The exclusive ``flock`` on ``RUN_DIR/run.lock`` of the one process that writes the run.

    The kernel drops it when the process ends, however it ends, so a killed run
    leaves no stale lock; :meth:`release` (or leaving the ``with``) drops it sooner.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:  # a lock nobody refers to any more is dropped, as a file would be closed
        self.release()

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def lock(path: str | os.PathLike) -> RunLock:
    """Take the run in ``path`` (an existing folder) for this process; refused, naming the
    holder's pid, while another process holds it."""
    file = Path(path) / LOCK
    try:
        # Not through a link, and only a regular file: a crafted run.lock must not make us write elsewhere.
        fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        raise RunDirError(f"cannot lock run directory {path}: {exc.strerror or exc}; choose a writable --run-dir") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunDirError(f"cannot lock run directory {path}: its {LOCK} is not a regular file; the run directory is damaged")
    deadline = time.monotonic() + _PROBE_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:  # a reader's probe holds it for an instant, a writer for good
                os.close(fd)
                raise _in_use(Path(path), _read_holder(file)) from None
            time.sleep(0.02)
    stamp = f"{os.getpid()} {socket.gethostname()}\n".encode()
    os.pwrite(fd, stamp, 0)  # over the last holder's, then cut: a reader never sees an empty file
    os.ftruncate(fd, len(stamp))
    return RunLock(file, fd)


def lock_holder(path: str | os.PathLike) -> int | None:
    """The pid of the live process holding the run in ``path`` (see :func:`lock`), or None when
    no process does: a ``running`` run without one was killed.

    It only reads (no file is created); while nobody holds the lock it takes it,
    shared, for an instant to be sure.
    """
    held = _holder(Path(path) / LOCK)
    return held[0] if held is not None else None


def _holder(file: Path) -> tuple[int, str] | None:
    """(pid, host) of the holder of the lock ``file``, or None when it is free or missing."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)  # a FIFO must not hang a reader
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    try:
        deadline = time.monotonic() + _PROBE_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return None  # free: closing the file drops the shared lock again
            except BlockingIOError:
                holder = _parse_holder(os.pread(fd, 512, 0))
                if holder is not None or time.monotonic() > deadline:  # a holder writes its pid just after locking
                    return holder or (0, "an unknown host")
                time.sleep(0.02)
    finally:
        os.close(fd)


def _read_holder(file: Path) -> tuple[int, str]:
    try:
        return _parse_holder(file.read_bytes()) or (0, "an unknown host")
    except OSError:
        return 0, "an unknown host"


def _parse_holder(content: bytes) -> tuple[int, str] | None:
    pid, _, host = content.decode("utf-8", "replace").partition("\n")[0].partition(" ")
    return (int(pid), host or "an unknown host") if pid.isdigit() and int(pid) > 0 else None


def _in_use(path: Path, holder: tuple[int, str]) -> RunInUseError:
    pid, host = holder
    who, stop = (f" (pid {pid} on {host})", f", stop it (kill {pid})") if pid else ("", "")  # never advise `kill 0`
    return RunInUseError(
        f"run directory {path} is in use by another gradloop process{who}; wait for it to end{stop}, or choose another --run-dir"
    )


def check_not_in_use(path: str | os.PathLike) -> None:
    """Refuse a run another process is writing, before this one changes anything."""
    holder = _holder(Path(path) / LOCK)
    if holder is not None:
        raise _in_use(Path(path), holder)


# --------------------------------------------------------------------- a new run's folder, and one to resume


def default_path() -> Path:
    """``runs/<timestamp>``, the folder of a run started without --run-dir."""
    return Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def check_new(path: Path, *, overwrite: bool = False) -> Path:
    """The run directory to create; an existing non-empty one is refused so that
    an earlier run's results are never overwritten, unless ``overwrite`` and it
    is a gradloop run (never an arbitrary folder)."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run directory {path} is a file; choose another --run-dir")
    if path.exists():
        check_not_in_use(path)
    if path.exists() and any(p.name != LOCK for p in path.iterdir()):  # a lone free lock: a start that died in claim
        if not overwrite:
            raise RunDirError(
                f"run directory {path} already exists and is not empty; choose another --run-dir, "
                "continue it with --resume, or replace it with --overwrite"
            )
        if not (path / RUN_JSON).is_file():
            raise RunDirError(f"{path} is not a gradloop run (no run.json), so --overwrite leaves it alone; choose another --run-dir")
    _check_creatable(path)
    return path


def _check_creatable(path: Path) -> None:
    """Fail now, not after minutes of loading data, when the run directory cannot be made.

    Permission bits do not stop root, so the nearest existing folder is probed
    by creating (and removing) a folder in it, which also catches read-only
    file systems and /proc.
    """
    ancestor = path
    while not ancestor.exists() and not ancestor.is_symlink() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RunDirError(f"cannot create run directory {path}: {ancestor} is not a folder; choose another --run-dir")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".gradloop-probe-", dir=ancestor))
    except OSError as exc:
        raise RunDirError(
            f"cannot create run directory {path}: {exc.strerror or exc} in {ancestor}; choose a writable --run-dir"
        ) from None


def claim(path: Path, *, held: RunLock | None = None) -> RunDir:
    """Create the run directory and claim it: lock it (unless this process ``held`` it already),
    then create run.json exclusively, so that two runs started in the same second (same default
    runs/<timestamp>) cannot write into one folder. The returned run's ``lock`` is this process's."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create run directory {path}: {exc.strerror or exc}") from None
    taken = held or lock(path)
    try:
        (path / RUN_JSON).open("x").close()
    except OSError as exc:
        if held is None:
            taken.release()
        if isinstance(exc, FileExistsError):
            raise RunDirError(f"run directory {path} was taken by another run meanwhile; choose another --run-dir") from None
        raise RunDirError(f"cannot create run directory {path}: {exc.strerror or exc}") from None
    run = RunDir(path)
    run.lock = taken
    return run


def clear(path: Path) -> None:
    """Remove an earlier run's files from ``path`` (--overwrite), all but the lock this process holds
    on it: removing that would let another process lock a new one."""
    for child in path.iterdir():
        if child.name == LOCK:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def open_to_resume(path: str | os.PathLike) -> RunDir:
    """The run in ``path``, to resume; refused when it is no run."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"run directory {path} does not exist, so there is nothing to resume; drop --resume to start it")
    if not any(path.iterdir()):
        raise RunDirError(f"run directory {path} is empty, so there is nothing to resume; drop --resume to start it")
    return RunDir(
        path, read_info(path, missing=f"{path} is not a gradloop run (no run.json); pass --run-dir the folder of a gradloop train")
    )


def check_resumable(path: str | os.PathLike, *, epochs: int, workers: int = 1, writer: bool = True) -> RunDir:
    """The run to resume for ``epochs`` epochs in all; refused when there is nothing to resume,
    when another process is writing it (unless this one is no ``writer``: a multi-worker run's
    other workers only read it, while their chief holds it), or when a multi-worker run would
    resume on another number of ``workers``."""
    run = open_to_resume(path)
    path, info = run.path, run.info
    if writer:
        check_not_in_use(path)
    for name in (CHECKPOINTS, TENSORBOARD, CACHE, *_WRITTEN_FILES):  # what a resume writes stays in the folder
        own_path(path, name)
    checkpoints = path / CHECKPOINTS
    # The state file, or any checkpoint by its name: a lost state file leaves the checkpoints resumable.
    if not ((checkpoints / "checkpoint").is_file() or any(checkpoints.glob("ckpt-*.index"))):
        raise RunDirError(f"run {path} has no checkpoint to resume from; start it again with --overwrite")
    done, status = info.get("epochs_done", 0), info.get("status")
    if status == "failed":
        raise RunDirError(f"run {path} failed, so there is nothing to resume: {info.get('error', 'see run.json')}")
    if status == "finished" and info.get("stopped_early") is not None:
        raise RunDirError(f"run {path} stopped early after {done} epochs (val_loss stopped improving); nothing to resume")
    if status == "finished" and epochs <= done:
        raise RunDirError(
            f"run {path} already finished {done} epochs; nothing to resume (pass --epochs above {done} to train it further)"
        )
    # Another worker count would see the same global batches (DATA sharding) but sum them in another
    # order, untested: refused, so that a resume stays exact.
    trained = info.get("workers", 1)
    if info.get("strategy") == "multi_worker" and trained != workers:
        raise ConfigError(
            f"run {path} trained on {trained} workers but this resume has {workers}; a multi-worker run resumes on "
            f"as many workers as it trained on (gradloop launch --workers {trained}, or a TF_CONFIG of {trained})"
        )
    return run
