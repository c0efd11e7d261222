"""Stopping on a signal: SIGTERM or SIGINT ends training after its step group and a checkpoint.

    with StopSignals() as stop:        # the signals only set stop.signum
        trainer.fit(..., callbacks=[Checkpointing(ckpt, stop=stop)])
    # Checkpointing saves at the next group end, then raises Interrupted(signum, epoch, step)

The library says what stopped where; the application decides what that means for its run
(the run directory to resume, a shell's exit code of 128 + the signal number).
"""

from __future__ import annotations

import signal
from typing import Any


class Interrupted(Exception):
    """Training stopped on a signal after writing a checkpoint; resume continues it.

    ``signum`` (``signal_name``: its name, ``SIGTERM``) stopped it in ``epoch`` (from 0)
    after ``step`` steps of that epoch."""

    def __init__(self, signum: int, epoch: int, step: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} in epoch {epoch + 1} after step {step}")
        self.signum, self.epoch, self.step = signum, epoch, step

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


class StopSignals:
    """While active, SIGTERM and SIGINT only set ``signum``, so the loop can finish
    its step group, checkpoint and stop (see :class:`gradloop.loop.callbacks.checkpointing.Checkpointing`).

    The first signal also restores the previous handlers: a second one acts as
    usual (Ctrl-C twice still stops at once; the checkpoints stay consistent).
    Signals can only be handled in the main thread, so elsewhere this does nothing.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        self.catch()
        return self

    def catch(self) -> None:
        """Make the signals (again) only set ``signum``, unless one came already.

        Call it again after creating a multi-worker strategy: TensorFlow's
        coordination service then installs a SIGTERM handler of its own, which
        would swallow the signal.
        """
        if self.signum is not None:
            return
        try:
            for s in self.SIGNALS:
                self._previous.setdefault(s, signal.signal(s, self._handle))  # the handler from before the first call
        except ValueError:  # not the main thread
            pass

    def __exit__(self, *exc_info: object) -> None:
        self._restore()

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum
        self._restore()

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
