"""How a run starts: in a new folder, or resumed from the one it left.

    new      default_path() or --run-dir -> check_new (refuse an earlier run's folder, unless
             --overwrite and it is a run) -> [lock, clear] -> claim (lock, create run.json
             exclusively) -> RunDir
    resume   check_resumable (a run with a checkpoint, not finished at these epochs, not in use,
             on as many workers as it trained on) -> RunDir

Each check runs before anything is changed, and fails in one line saying how to go on
(``--overwrite``, ``--resume``, another ``--run-dir``). Which files are a run's own is
:mod:`gradloop.run.files`'s; the lock is :mod:`gradloop.run.lock`'s.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from pathlib import Path

from gradloop.errors import ConfigError, RunDirError
from gradloop.run.files import CACHE, CHECKPOINTS, LOCK, RUN_JSON, TENSORBOARD, WRITTEN_FILES, own_path
from gradloop.run.folder import RunDir, read_info
from gradloop.run.lock import RunLock, check_not_in_use, lock


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
            raise RunDirError(
                f"{path} is not a gradloop run (no run.json), so --overwrite leaves it alone; choose another --run-dir"
            )
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
            raise RunDirError(
                f"run directory {path} was taken by another run meanwhile; choose another --run-dir"
            ) from None
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
        raise RunDirError(
            f"run directory {path} does not exist, so there is nothing to resume; drop --resume to start it"
        )
    if not any(path.iterdir()):
        raise RunDirError(f"run directory {path} is empty, so there is nothing to resume; drop --resume to start it")
    missing = f"{path} is not a gradloop run (no run.json); pass --run-dir the folder of a gradloop train"
    return RunDir(path, read_info(path, missing=missing))


def check_resumable(path: str | os.PathLike, *, epochs: int, workers: int = 1, writer: bool = True) -> RunDir:
    """The run to resume for ``epochs`` epochs in all; refused when there is nothing to resume,
    when another process is writing it (unless this one is no ``writer``: a multi-worker run's
    other workers only read it, while their chief holds it), or when a multi-worker run would
    resume on another number of ``workers``."""
    run = open_to_resume(path)
    path, info = run.path, run.info
    if writer:
        check_not_in_use(path)
    for name in (CHECKPOINTS, TENSORBOARD, CACHE, *WRITTEN_FILES):  # what a resume writes stays in the folder
        own_path(path, name)
    checkpoints = path / CHECKPOINTS
    # The state file, or any checkpoint by its name: a lost state file leaves the checkpoints resumable.
    if not ((checkpoints / "checkpoint").is_file() or any(checkpoints.glob("ckpt-*.index"))):
        raise RunDirError(f"run {path} has no checkpoint to resume from; start it again with --overwrite")
    done, status = info.get("epochs_done", 0), info.get("status")
    if status == "failed":
        raise RunDirError(f"run {path} failed, so there is nothing to resume: {info.get('error', 'see run.json')}")
    if status == "finished" and info.get("stopped_early") is not None:
        raise RunDirError(
            f"run {path} stopped early after {done} epochs (val_loss stopped improving); nothing to resume"
        )
    if status == "finished" and epochs <= done:
        raise RunDirError(
            f"run {path} already finished {done} epochs; nothing to resume "
            f"(pass --epochs above {done} to train it further)"
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
