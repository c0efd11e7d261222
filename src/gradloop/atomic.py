"""Writing a file whole or not at all: to a temporary name, then renamed over the final one.

A process killed at any instant leaves the old file or the new, never half of
one. Shared by the run directory (:mod:`gradloop.rundir`) and the library's
callbacks that write files (the best model); no TensorFlow here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(temporary path)``, then rename the temporary file to ``path``.

    The temporary name keeps the suffix (``model.partial.keras``): Keras picks
    the format from it."""
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.partial{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_model(model: Any, path: Path) -> None:
    """``model.save(path)`` (a Keras model), whole or not at all."""
    write_atomically(path, model.save)
