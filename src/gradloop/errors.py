"""Typed errors: the library raises these, the CLI turns them into one line.

Every message says what is wrong and how to fix it, so that the same text
serves a library user reading a traceback and a CLI user reading
``gradloop: error: <message>``.
"""


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
