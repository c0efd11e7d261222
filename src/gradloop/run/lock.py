"""One process per run: the one process writing a run holds its lock from before it changes anything.

    with lock(path):               # refused (RunInUseError, naming the holder's pid) while another holds it
        ...                        # write the run
    lock_holder(path)              # the live holder's pid, or None: a ``running`` run without one was killed
    check_not_in_use(path)         # refuse now, before this process changes anything

The lock is an exclusive ``flock`` on ``RUN_DIR/run.lock``, which holds "PID HOST"; the kernel
drops it when the process ends, however it ends, so a killed run leaves no stale lock. Readers
never lock (a probe takes it shared for an instant) and create nothing.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import time
from pathlib import Path

from gradloop.errors import RunDirError, RunInUseError
from gradloop.run.files import LOCK

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

    def __enter__(self) -> RunLock:
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
        raise RunDirError(
            f"cannot lock run directory {path}: {exc.strerror or exc}; choose a writable --run-dir"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunDirError(
            f"cannot lock run directory {path}: its {LOCK} is not a regular file; the run directory is damaged"
        )
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
        f"run directory {path} is in use by another gradloop process{who}; wait for it to end{stop}, "
        "or choose another --run-dir"
    )


def check_not_in_use(path: str | os.PathLike) -> None:
    """Refuse a run another process is writing, before this one changes anything."""
    holder = _holder(Path(path) / LOCK)
    if holder is not None:
        raise _in_use(Path(path), holder)
