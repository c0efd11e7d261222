"""A training run stopped on a signal: the library's stop, with the run it stopped.

The library (:class:`gradloop.loop.signals.Interrupted`) knows the signal, the epoch and the
step; the application adds the run directory to resume, which the CLI's resume command names.
"""

from __future__ import annotations

from gradloop.loop.signals import Interrupted


class RunInterrupted(Interrupted):
    """``Interrupted``, raised again by ``gradloop.app.train`` with ``run_dir``: the run to resume
    (without --run-dir, the runs/<timestamp> it chose), None on a multi-worker job's other workers,
    whose own folders are scratch."""

    def __init__(self, stopped: Interrupted, *, run_dir: str | None) -> None:
        super().__init__(stopped.signum, stopped.epoch, stopped.step)
        self.run_dir = run_dir
