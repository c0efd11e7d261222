"""The run directory: which files a run holds, and every read and write of them.

    RUN_DIR/
        run.json             what the run is and where it stands (below)
        history.json, .csv   per epoch, in the tutorial's names (train_loss, val_accuracy, ...)
        history.png          the tutorial's two panels
        model.keras          the last epoch's model; model.best.keras: the lowest val_loss epoch's
        model_source.py      a copy of --model FILE.py (and the modules beside it that it imports),
                             or model_initial.keras of --model FILE.keras: what a resume builds from
        checkpoints/         tf.train.CheckpointManager's, for --resume
        tensorboard/         event files
        report/, saved_model/    written later by ``gradloop report`` and ``gradloop export``

run.json's ``status`` moves only as :class:`RunDir`'s methods move it:

    running --> interrupted (a signal, after a checkpoint) --> running (--resume)
            --> finished | failed (the loss diverged)

A ``running`` run whose process is gone was killed. ``format`` is the run.json
layout's version: an older file is upgraded when read, a newer one refused.

Every file gradloop writes here goes to a temporary name first and is renamed
over the final one (:mod:`gradloop.atomic`), so a process killed at any instant
leaves the old file or the new, never half of one; TensorFlow's own checkpoints,
event files and SavedModel are written by TensorFlow (CheckpointManager records a
checkpoint only once it is complete). Nothing here imports TensorFlow: reading a
run is instant.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from gradloop.atomic import save_model, write_atomically  # noqa: F401  (rundir.save_model: a run's model files)
from gradloop.errors import ConfigError, RunDirError

FORMAT = 1  # run.json's layout; 0 is a run.json written before it had a format
RUN_JSON = "run.json"
HISTORY_JSON = "history.json"
HISTORY_CSV = "history.csv"
HISTORY_PNG = "history.png"
MODEL = "model.keras"
BEST_MODEL = "model.best.keras"
MODEL_SOURCE = "model_source.py"  # a copy of --model FILE.py, which a resume builds the model from
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
REPORT = "report"
SAVED_MODEL = "saved_model"
STATUSES = ("running", "interrupted", "finished", "failed")


# --------------------------------------------------------------------- writing a file whole or not at all


def write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path, *, missing: str) -> Any:
    """A JSON file of a run: absent is ``RunDirError(missing)``, unreadable or
    not JSON means the run directory is damaged."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(missing) from None
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise RunDirError(f"cannot read {path}: {exc}; the run directory is damaged") from None


# --------------------------------------------------------------------- history


def tutorial_history(history: Mapping[str, list[float]]) -> dict[str, list[float]]:
    """Keras names -> the tutorial's: ``loss`` -> ``train_loss``, ``val_*`` unchanged."""
    return {
        (k if k.startswith("val_") or k.startswith("train_") else f"train_{k}"): [float(v) for v in vs]
        for k, vs in history.items()
    }


def _history_csv(history: Mapping[str, list[float]]) -> str:
    keys = list(history)
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["epoch", *keys])
    for i in range(len(history[keys[0]]) if keys else 0):
        writer.writerow([i + 1, *(f"{history[k][i]:.6g}" for k in keys)])
    return out.getvalue()


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
        path = self / HISTORY_JSON
        history = read_json(path, missing=f"{self.path} has no history.json; the run did not finish an epoch (train it again)")
        if not isinstance(history, dict) or not all(isinstance(v, list) for v in history.values()):
            raise RunDirError(f"{path} is not a history of per-epoch lists; the run directory is damaged")
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
        """Add one epoch's logs (Keras names) to the history files, so a crash keeps finished epochs."""
        for key, value in logs.items():
            self._epochs.setdefault(key, []).append(float(value))
        self.write_history(self._epochs)

    def continue_history(self, keras_history: Mapping[str, list[float]]) -> None:
        """The epochs a resumed run already has (Keras names): ``record_epoch`` appends to them."""
        self._epochs = {k: list(v) for k, v in keras_history.items()}

    # status --------------------------------------------------------------

    def start(self, info: dict[str, Any]) -> None:
        self.info = {"status": "running", **info, "started": now()}  # status first: `head run.json` shows it
        self.write_info()

    def resume(self, *, config: dict[str, Any], epoch: int, step: int, **facts: Any) -> None:
        """Back to ``running``, noting where the resume starts (``epoch`` counts from 1)."""
        self.info.setdefault("resumed", []).append({"at": now(), "epoch": epoch, "step": step, **facts})
        self.info.update(status="running", config=config)
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
    """run.json of the run in ``path``, upgraded to this ``FORMAT``: a JSON object with a config."""
    file = Path(path) / RUN_JSON
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
    info["format"] = FORMAT
    return info


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


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
    if path.exists() and any(path.iterdir()):
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


def claim(path: Path) -> RunDir:
    """Create the run directory and claim it by creating run.json exclusively, so that two runs
    started in the same second (same default runs/<timestamp>) cannot write into one folder."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / RUN_JSON).open("x").close()
    except FileExistsError:
        raise RunDirError(f"run directory {path} was taken by another run meanwhile; choose another --run-dir") from None
    except OSError as exc:
        raise RunDirError(f"cannot create run directory {path}: {exc.strerror or exc}") from None
    return RunDir(path)


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


def check_resumable(path: str | os.PathLike, *, epochs: int, workers: int = 1) -> RunDir:
    """The run to resume for ``epochs`` epochs in all; refused when there is nothing to resume,
    or when a multi-worker run would resume on another number of ``workers``."""
    run = open_to_resume(path)
    path, info = run.path, run.info
    if not (path / CHECKPOINTS / "checkpoint").is_file():
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
