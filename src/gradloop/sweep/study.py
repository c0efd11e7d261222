"""The sweep folder, its Optuna study and storage, and which process runs which trial.

Which process runs a trial is decided by ``flock`` locks, which the kernel drops when a
process ends, however it ends (SIGKILL included):

    .locks/sweep.lock        held for a moment to claim a trial or write the results, so two
                             processes never claim the same trial
    .locks/trial-007.lock    held by the process running trial 7, from its claim to its end

    claim (under sweep.lock):
        a RUNNING trial whose lock is free lost its process: take it over, resume its run
        else, while the study has fewer than ``trials`` trials: a new one from Optuna
        else: nothing is left to start

So a killed sweep, started again, finishes the trial it was in from its checkpoint, and
several processes (on one machine, or on several sharing the folder and a database) split
the trials between them without running one twice.

The storage: by default an Optuna journal file in the sweep folder. Optuna advises against
SQLite for several processes (its FAQ: SQLite locks the whole file on every write, so
parallel writers meet "database is locked", and it lacks the ``SELECT ... FOR UPDATE`` that
Optuna's RDB storage uses); its journal file appends each change as one JSON line under a
lock file that works even on NFS, which is what several processes on one machine need.
Several machines share a PostgreSQL or MySQL server (``--storage URL``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from gradloop.errors import ConfigError, RunDirError
from gradloop.run import files as run_files
from gradloop.run import folder as run_folder
from gradloop.run import start as run_start
from gradloop.sweep.spec import SweepSpec

SWEEP_JSON = "sweep.json"
STUDY_JOURNAL = "study.journal"
LOCKS = ".locks"
FORMAT = 1


def trial_name(number: int) -> str:
    return f"trial-{number:03d}"


@dataclass(frozen=True)
class Storage:
    """Where the study lives: a journal file (``journal``) or a database (``url``); ``shown`` is how
    sweep.json records it (a database's password hidden)."""

    journal: Path | None
    url: str | None
    shown: str

    @classmethod
    def choose(cls, storage: str | None, folder: Path) -> Storage:
        if storage is None:
            return cls(journal=folder / STUDY_JOURNAL, url=None, shown=STUDY_JOURNAL)
        if "://" not in storage:
            return cls(journal=Path(storage).resolve(), url=None, shown=str(Path(storage).resolve()))
        import sqlalchemy

        try:
            shown = sqlalchemy.engine.make_url(storage).render_as_string(hide_password=True)
        except sqlalchemy.exc.ArgumentError:
            raise ConfigError(
                f"--storage {storage!r} is not a database URL such as "
                "postgresql://user:password@host/db; or pass a journal file's path"
            ) from None
        return cls(journal=None, url=storage, shown=shown)

    def check(self) -> Any:
        """Open a database now (it is not the sweep folder's to write), or check that a journal file can be
        made; returns the open database storage, or None for a journal."""
        if self.url is not None:
            import sqlalchemy  # with optuna's RDB storage; a journal sweep never needs it

            try:
                for attempt in range(10):
                    try:
                        return optuna.storages.RDBStorage(self.url, engine_kwargs={"pool_pre_ping": True})
                    except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                        # Another process is making Optuna's tables at the same moment: wait for it to finish.
                        if attempt == 9:
                            raise
                        time.sleep(0.5)
            except Exception as exc:  # the driver's own errors: no server, refused login, a missing driver
                reason = " ".join(str(exc).split())[:200]
                raise ConfigError(
                    f"cannot open the storage {self.shown}: {type(exc).__name__}: {reason}; check the URL and that the "
                    "server runs (PostgreSQL needs pip install 'gradloop[sweep-postgres]')"
                ) from None
        parent = self.journal.parent
        if self.journal.exists() and not self.journal.is_file():
            raise ConfigError(f"cannot open the storage {self.journal}: it is not a file; pass a journal file's path")
        if self.shown == STUDY_JOURNAL:  # the sweep folder's own, made with it (check_folder checked that it can be)
            return None
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise ConfigError(
                f"cannot open the storage {self.journal}: {parent} is not a writable folder; pass another --storage"
            )
        return None

    def open(self, checked: Any) -> Any:
        if checked is not None:
            return checked
        from optuna.storages.journal import JournalFileBackend

        try:
            return optuna.storages.JournalStorage(JournalFileBackend(str(self.journal)))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot open the storage {self.journal}: {exc}; pass another --storage") from None


def check_folder(folder: Path, spec: SweepSpec, storage: Storage) -> dict | None:
    """The sweep folder to run in: a new one, or this spec's sweep (its sweep.json, to continue).
    Refused: a file, a folder of something else, another spec's sweep, another storage."""
    if folder.exists() and not folder.is_dir():
        raise RunDirError(f"sweep folder {folder} is a file; pass another --out")
    if not folder.exists() or not any(folder.iterdir()):
        run_start.check_new(folder)  # can it be made
        return None
    record = folder / SWEEP_JSON
    if not record.is_file():
        if (folder / LOCKS).is_dir():  # another process is creating it this instant
            return None
        raise RunDirError(f"{folder} exists and is not a sweep folder (no {SWEEP_JSON}); pass another --out")
    info = run_files.read_json(record, missing=f"{record} is missing")
    check_same_sweep(info, spec, storage, folder)
    return info


def check_same_sweep(info: Any, spec: SweepSpec, storage: Storage, folder: Path) -> None:
    if not isinstance(info, dict) or not isinstance(info.get("spec"), dict) or info.get("format") != FORMAT:
        raise RunDirError(f"{folder / SWEEP_JSON} is not a gradloop sweep record; the sweep folder is damaged")
    before = {k: v for k, v in info["spec"].items() if k != "trials"}
    now = {k: v for k, v in spec.raw.items() if k != "trials"}
    if before != now:
        key = next(k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k))
        raise ConfigError(
            f"{folder} is the sweep of another spec ({key}: {before.get(key)!r} there, {now.get(key)!r} in "
            f"{spec.path}); a sweep continues with its own spec (only trials may change): pass another --out"
        )
    if info.get("storage") != storage.shown:
        raise ConfigError(
            f"the sweep in {folder} keeps its study in {info.get('storage')}, not {storage.shown}; "
            f"pass --storage {info.get('storage')}"
        )


class Sweep:
    """One sweep folder and its study, as this process sees them."""

    def __init__(self, folder: Path, spec: SweepSpec, study: optuna.Study, storage: Storage) -> None:
        self.folder, self.spec, self.study, self.storage = folder, spec, study, storage

    @classmethod
    def open(cls, spec: SweepSpec, folder: Path, storage: Storage, checked: Any) -> Sweep:
        """Create the folder, record the sweep (first process only) and load or create its study."""
        (folder / LOCKS).mkdir(parents=True, exist_ok=True)
        with _locked(folder / LOCKS / "sweep.lock"):
            record = folder / SWEEP_JSON
            if record.is_file():
                info = run_files.read_json(record, missing=f"{record} is missing")
                check_same_sweep(info, spec, storage, folder)
            else:
                info = {
                    "format": FORMAT,
                    "spec": spec.raw,
                    "study": f"gradloop-sweep-{uuid.uuid4().hex[:12]}",
                    "storage": storage.shown,
                    "created": run_folder.now(),
                }
                run_files.write_json(record, info)
            pruner = (
                optuna.pruners.MedianPruner(
                    n_startup_trials=spec.pruning.startup_trials, n_warmup_steps=spec.pruning.warmup_epochs
                )
                if spec.pruning
                else optuna.pruners.NopPruner()
            )
            study = optuna.create_study(
                study_name=info["study"],
                storage=storage.open(checked),
                pruner=pruner,
                direction=spec.direction,
                load_if_exists=True,
            )
        return cls(folder, spec, study, storage)

    def trial_dir(self, number: int) -> Path:
        return self.folder / trial_name(number)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """The sweep to this process alone, for a moment."""
        with _locked(self.folder / LOCKS / "sweep.lock"):
            yield

    def claim(self) -> Claim | None:
        """The next trial for this process: an abandoned one to resume, else a new one; None when
        every trial is taken (see the module's docstring)."""
        with self.held():
            trials = self.study.get_trials(deepcopy=False)
            for frozen in trials:
                if frozen.state == optuna.trial.TrialState.RUNNING:
                    lock = _try_lock(self._trial_lock(frozen.number))
                    if lock is not None:  # its process is gone
                        # Optuna lets any process report to a running trial; _trial_id is how it names one.
                        return Claim(optuna.trial.Trial(self.study, frozen._trial_id), lock, abandoned=True)
            if len(trials) >= self.spec.trials:
                return None
            trial = self.study.ask()
            lock = _try_lock(self._trial_lock(trial.number))
            assert lock is not None, "a new trial's lock is free"
            return Claim(trial, lock, abandoned=False)

    def _trial_lock(self, number: int) -> Path:
        return self.folder / LOCKS / f"{trial_name(number)}.lock"


@dataclass
class Claim:
    """A trial this process runs, and the lock that says so (released by :meth:`release` or its exit)."""

    trial: optuna.Trial
    lock: int
    abandoned: bool  # taken over from a process that is gone

    def release(self) -> None:
        os.close(self.lock)


def _try_lock(path: Path) -> int | None:
    """An exclusive flock on ``path`` (the open file), or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)  # never through a link
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path``, waited for (it is held only for moments)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)  # never through a link
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
