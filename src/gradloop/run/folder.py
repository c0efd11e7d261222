"""One run's folder: its run.json (``info``), its history, and the status only its methods move.

    >>> run = RunDir.open("runs/x")          # reading: evaluate, report, export
    >>> run.info["config"], run.read_history()

run.json's ``status`` moves only as :class:`RunDir`'s methods move it:

    running --> interrupted (a signal, after a checkpoint) --> running (--resume)
            --> finished | failed (the loss diverged)

After each epoch run.json also says how far the run got (:func:`gradloop.run.history.progress`:
``epochs_done``, ``train_seconds``, ``best``). A ``running`` run whose process is gone
(:func:`gradloop.run.lock.lock_holder` is None) was killed. ``FORMAT`` is the run.json layout's
version: an older file is upgraded when read (:func:`read_info`), a newer one refused.

A RunDir writes; making or claiming its folder is :mod:`gradloop.run.start`'s, and only the
process holding the run's lock (``RunDir.lock``) writes it.
"""

from __future__ import annotations

import datetime as _dt
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gradloop.errors import RunDirError
from gradloop.run.files import HISTORY_CSV, HISTORY_JSON, RUN_JSON, own_path, read_json, write_json, write_text
from gradloop.run.history import aligned_history, history_csv, progress, tutorial_history
from gradloop.run.lock import RunLock
from gradloop.run.schema import check_history, check_info

FORMAT = 1  # run.json's layout; 0 is a run.json written before it had a format
STATUSES = ("running", "interrupted", "finished", "failed")


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
    def open(cls, path: str | os.PathLike, *, missing: str | None = None) -> RunDir:
        """A finished or running run, to read; anything but a folder with a valid run.json is refused."""
        path = Path(path)
        if not path.is_dir():
            state = "is not a folder" if path.exists() else "does not exist"
            raise RunDirError(f"run directory {path} {state}; pass a folder made by gradloop train")
        missing = missing or (
            f"{path} is not a gradloop run directory (no run.json); pass a folder made by gradloop train"
        )
        return cls(path, read_info(path, missing=missing))

    def read_history(self) -> dict[str, list[float]]:
        """history.json: per-epoch lists in the tutorial's names."""
        path = own_path(self.path, HISTORY_JSON)
        missing = f"{self.path} has no history.json; the run did not finish an epoch (train it again)"
        history = read_json(path, missing=missing)
        check_history(history, path)
        return history

    # writing -------------------------------------------------------------

    def write_info(self) -> None:
        write_json(self / RUN_JSON, {**self.info, "format": FORMAT})

    def write_history(self, keras_history: Mapping[str, list[float]]) -> dict[str, list[float]]:
        """history.json and history.csv in the tutorial's names; returns that dict."""
        history = tutorial_history(keras_history)
        write_json(self / HISTORY_JSON, history)
        write_text(self / HISTORY_CSV, history_csv(history))
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
        # status first: `head run.json` shows it
        self.info = {"status": "running", **info, **_process(), "started": now()}
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
        raise RunDirError(
            f"{file} has format {version}, newer than this gradloop's {FORMAT}; upgrade gradloop to read it"
        )
    if version == 0:  # before format 1 run.json had no "workers": a multi-worker run had a replica per worker
        info.setdefault("workers", info.get("num_replicas", 1) if info.get("strategy") == "multi_worker" else 1)
    if "status" in info and info["status"] not in STATUSES:
        raise RunDirError(
            f"{file} has status {info['status']!r}, not one of {', '.join(STATUSES)}; the run directory is damaged"
        )
    if isinstance(info.get("workers", 1), bool) or not isinstance(info.get("workers", 1), int):
        raise RunDirError(f"{file} has workers {info['workers']!r}, not a count; the run directory is damaged")
    check_info(info, file)
    info["format"] = FORMAT
    return info


def _process() -> dict[str, Any]:
    """The process writing the run, in run.json: which one a ``running`` run is (see :func:`lock_holder`)."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")
