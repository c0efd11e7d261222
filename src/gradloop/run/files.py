"""A run's files by name, the one rule for their paths, and reading and writing them whole.

    RUN_DIR/
        run.json             what the run is and where it stands (:mod:`gradloop.run.folder`)
        history.json, .csv   per epoch, in the tutorial's names (:mod:`gradloop.run.history`)
        history.png          the tutorial's two panels
        model.keras          the last epoch's model; model.best.keras: the lowest val_loss epoch's (--monitor)
        model.weights.h5     its weights (Keras' format); a model that cannot be saved whole has these alone,
                             and model.best.weights.h5 (run.json's ``model_files`` says which)
        model_summary.txt    Keras' model.summary(): layers, output shapes, parameter counts
        model_source.py      a copy of --model FILE.py (and the modules beside it that it imports),
                             or model_initial.keras of --model FILE.keras: what a resume builds from
        user_callbacks/NAME/callback_source.py   a copy of --callback FILE.py:NAME (and the modules beside
                             it that it imports): what a resume runs
        checkpoints/         tf.train.CheckpointManager's, for --resume
        cache/               an unfinished run's image folder, decoded once
        tensorboard/         event files
        run.lock             flock'ed by the one process writing the run: "PID HOST" (:mod:`gradloop.run.lock`)
        report/, saved_model/    written later by ``gradloop report`` and ``gradloop export``

Every file gradloop writes here goes to a temporary name first, is fsynced and renamed over the
final one, and the folder fsynced (:mod:`gradloop.atomic`), so a process killed or a machine
losing power at any instant leaves the old file or the new, never half of one, and a full disk
raises DiskFullError instead:

    write_text(path, text), write_json(path, data)     whole or not at all
    read_json(path, missing=...)                       RunDirError when absent, damaged or too large

A run's own files are always inside its folder: :func:`own_path` refuses a name that is a symlink
leading out of it, so that a run from someone else cannot make gradloop read or write elsewhere.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from gradloop.atomic import write_atomically
from gradloop.errors import RunDirError

RUN_JSON = "run.json"
HISTORY_JSON = "history.json"
HISTORY_CSV = "history.csv"
HISTORY_PNG = "history.png"
MODEL = "model.keras"
BEST_MODEL = "model.best.keras"
WEIGHTS = "model.weights.h5"  # model.save_weights: beside model.keras, or alone for a model Keras cannot save whole
BEST_WEIGHTS = "model.best.weights.h5"  # the best epoch's weights, for a model Keras cannot save whole
MODEL_SOURCE = "model_source.py"  # a copy of --model FILE.py, which a resume builds the model from
CALLBACKS = "user_callbacks"  # a folder per --callback FILE.py:NAME, named NAME, holding its copy
CALLBACK_SOURCE = "callback_source.py"  # the copy of a --callback FILE.py, in its folder of CALLBACKS
MODEL_SUMMARY = "model_summary.txt"  # Keras' model.summary(): layers, output shapes, parameter counts
CHECKPOINTS = "checkpoints"
CACHE = "cache"  # an unfinished run's image folder, decoded once (gradloop.data.sources.image_cache)
TENSORBOARD = "tensorboard"
REPORT = "report"
SAVED_MODEL = "saved_model"
LOCK = "run.lock"  # held (flock) by the one process writing the run; it holds "PID HOST"
# The files a run writes as it goes (besides checkpoints/ and tensorboard/).
WRITTEN_FILES = (
    RUN_JSON,
    HISTORY_JSON,
    HISTORY_CSV,
    HISTORY_PNG,
    MODEL,
    BEST_MODEL,
    WEIGHTS,
    BEST_WEIGHTS,
    MODEL_SUMMARY,
)
MAX_JSON_BYTES = 64 * 2**20  # run.json and history.json: far above any run's, far below what exhausts memory


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


def own_path(run: str | os.PathLike, name: str) -> Path:
    """``run/name``, one of the run's own files or folders; refused when a symlink (it, or one on
    the way) leads out of the run folder, so that a run from someone else cannot make gradloop
    read or write elsewhere."""
    path = Path(run) / name
    inside, real = os.path.realpath(run), os.path.realpath(path)
    if os.path.commonpath([inside, real]) != inside:
        raise RunDirError(
            f"{path} leads out of the run directory (to {real}); gradloop reads and writes a run's own "
            "files inside its folder only: replace the link with the file"
        )
    return path
