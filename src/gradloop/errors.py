"""Typed errors: the library raises these, the CLI turns them into one line.

Every message says what is wrong and how to fix it, so that the same text
serves a library user reading a traceback and a CLI user reading
``gradloop: error: <message>``. The small helpers below write the pieces
those messages share: a value cut short, a list cut short, TensorFlow's own
text without its wrapping.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# TensorFlow wraps its text: "{{function_node __wrapped__Op_device_/job:...}} the reason [Op:Name] name: ..."
_TENSORFLOW_WRAPPING = re.compile(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\].*", re.DOTALL)


class GradloopError(Exception):
    """Base class of every error gradloop raises on purpose."""


class ConfigError(GradloopError, ValueError):
    """A configuration value, flag or config file is invalid."""


class DataError(GradloopError, ValueError):
    """A data set is missing, unreadable or malformed."""


class RunDirError(GradloopError):
    """A run directory cannot be created, read or resumed."""


class RunInUseError(RunDirError):
    """Another live process holds the run directory's lock."""


class CheckpointError(GradloopError):
    """No checkpoint can be restored: there is none, or each is damaged or from another model.
    The message ends with the caller's ``hint``: how to start over."""


class TrainingError(GradloopError):
    """Training cannot go on: the loss is no longer finite."""


class DiskFullError(GradloopError, OSError):
    """A write found no space left: the run stopped with its latest checkpoint intact, to resume
    once space is freed. ``path`` is the file being written; ``run_dir`` the run, once known.
    An OSError still, for code that caught the disk's own error before."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.run_dir: str | None = None


def shortened(text: str, limit: int, *, at_word: bool = False) -> str:
    """``text`` if it has at most ``limit`` characters, else its start and ``...`` in ``limit`` characters
    (``at_word``: cut before the last word that does not fit whole), so a message stays one short line."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 3]
    return (cut.rsplit(" ", 1)[0] if at_word else cut) + "..."


def listed(names: Sequence[str], most: int) -> str:
    """``a, b, c and 7 more``: the first ``most`` of ``names``, and how many more there are."""
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def tensorflow_reason(exc: BaseException, *, first_line: bool = False) -> str:
    """The reason in TensorFlow's error text (``exc.message``; another exception's ``str``), without
    the ``{{function_node ...}}`` before it and the ``[Op:Name]`` after it, stripped; with ``first_line``
    its first line only. Empty when nothing is left: the caller names the exception instead."""
    text = _TENSORFLOW_WRAPPING.sub("", str(getattr(exc, "message", exc))).strip()
    return text.splitlines()[0].strip() if first_line and text else text


def check_batch_size(batch_size: int, n_samples: int) -> None:
    """Refuse a batch larger than the training samples, which no step could fill."""
    if batch_size > n_samples:
        raise ConfigError(
            f"batch_size {batch_size} is larger than the {n_samples:,} training samples; lower --batch-size"
        )
