"""Writing a file whole or not at all, durably: to a temporary name, flushed to the disk, renamed
over the final one, and the rename itself flushed.

A process killed, or a machine losing power, at any instant leaves the old file
or the new, never half of one; a full disk fails the write (:class:`DiskFullError`),
never the file. Shared by the run directory (:mod:`gradloop.run.folder`), the library's
callbacks that write files (the best model) and the checkpoints
(:mod:`gradloop.loop.checkpoint`, which fsyncs TensorFlow's files); no TensorFlow here.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gradloop.errors import DiskFullError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(temporary path)``, fsync the file, rename it to ``path`` and fsync the folder.

    The temporary name keeps the suffix (``model.partial.keras``): Keras picks
    the format from it. A full disk raises :class:`DiskFullError` and leaves
    ``path`` as it was."""
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.partial{path.suffix}")
    if tmp.is_symlink():  # planted in a run folder from elsewhere: writing through it would write outside the folder
        tmp.unlink()
    try:
        write(tmp)
        sync(tmp)
        os.replace(tmp, path)
        sync(path.parent)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise disk_full(path, exc.errno) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def save_model(model: Any, path: Path) -> None:
    """``model.save(path)`` (a Keras model), whole or not at all."""
    write_atomically(path, model.save)


def sync(path: str | os.PathLike) -> None:
    """Flush a file's data, or a folder's entries (a rename, a new file), to the disk."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def disk_full(path: str | os.PathLike, code: int = errno.ENOSPC, *, kind: str = "") -> DiskFullError:
    """The error for a write of ``path`` (a ``kind`` of file) that found no space (``code`` ENOSPC) or
    quota (EDQUOT) left."""
    what = "no space left" if code != errno.EDQUOT else "no space left (disk quota exceeded)"
    return DiskFullError(
        f"{what} on {mount_point(path)} while writing {kind + ' ' if kind else ''}{path}", path=str(path)
    )


# How TensorFlow's C++ file writers say ENOSPC / EDQUOT in an error message (it names the file first).
_NO_SPACE_MESSAGE = re.compile(r"(?:(\S+); )?(No space left on device|Disk quota exceeded)")


def no_space_in(message: str) -> tuple[str | None, int] | None:
    """(the file it names, if any, and ENOSPC or EDQUOT) when ``message`` (TensorFlow's) says a
    write found the disk or quota full; else None."""
    found = _NO_SPACE_MESSAGE.search(message)
    if found is None:
        return None
    return found[1], errno.EDQUOT if found[2].startswith("Disk") else errno.ENOSPC


def mount_point(path: str | os.PathLike) -> str:
    """The mount point of the file system ``path`` is on (the nearest existing folder's): the disk that is full."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    device = path.stat().st_dev
    while path != path.parent and path.parent.stat().st_dev == device:
        path = path.parent
    return str(path)
