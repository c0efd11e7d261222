"""When to save a checkpoint during training, and the stop on a signal after one.

:class:`Checkpointing` is the callback that saves a :class:`~gradloop.loop.checkpoint.RunCheckpoint`
(what a checkpoint holds) at the moments below, and stops the fit with
:class:`~gradloop.loop.signals.Interrupted` once :class:`~gradloop.loop.signals.StopSignals` caught a signal.
"""

from __future__ import annotations

import math
import time

import keras

from gradloop.loop import distribute
from gradloop.loop.checkpoint import RunCheckpoint
from gradloop.loop.signals import Interrupted, StopSignals


class Checkpointing(keras.callbacks.Callback):
    """When to save: once before training (so a run can always be resumed), after
    every ``every_steps`` steps of an epoch, when ``every_seconds`` have passed
    since the last save, at each epoch's end and at the end of training.

    Saves happen at step-group ends; pass the same ``every_steps`` to
    ``Trainer.fit(end_groups_every=...)`` so its multiples are group ends. When
    ``stop`` (a :class:`StopSignals`) has caught a signal, it saves and raises
    :class:`Interrupted`. A state whose loss is no longer finite is never saved.

    Under a multi-worker strategy the time and the signals are one decision of
    all workers, taken at each group end and epoch start (one small collective):
    every worker saves when any one's ``every_seconds`` have passed, and all save
    and stop at the same step when any one caught a signal (SIGTERM first).
    """

    def __init__(
        self,
        checkpoint: RunCheckpoint,
        *,
        every_steps: int | None = None,
        every_seconds: float | None = None,
        stop: StopSignals | None = None,
    ) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.every_steps, self.every_seconds, self.stop = every_steps, every_seconds, stop
        self._saved_at: tuple[int, int] | None = None
        self._last_save = time.monotonic()

    def on_train_begin(self, logs=None) -> None:
        if self.checkpoint.latest is None:  # in restore_from: a resuming worker's own folder may be empty
            self._save()
        else:
            self._saved_at = self._position()  # resumed from it

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._stop_if_asked(self._agree(due_time=False)[1])

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if not math.isfinite((logs or {}).get("loss", 0.0)):  # the same loss, all-reduced, on every worker
            return
        step = self.checkpoint.trainer.state.step
        due_steps = self.every_steps and step % self.every_steps == 0
        due_time, signum = self._agree(
            due_time=bool(self.every_seconds) and time.monotonic() - self._last_save >= self.every_seconds
        )
        if due_steps or due_time:
            self._save()
        self._stop_if_asked(signum)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self._save()

    def on_train_end(self, logs=None) -> None:
        self._save()

    def _position(self) -> tuple[int, int]:
        state = self.checkpoint.trainer.state
        return state.epoch, state.step

    def _save(self) -> None:
        if self._position() != self._saved_at:
            self.checkpoint.save(self.checkpoint.trainer.state)
            self._saved_at, self._last_save = self._position(), time.monotonic()

    def _agree(self, *, due_time: bool) -> tuple[bool, int | None]:
        """(whether the time to save has come, the signal to stop on): this process's
        own view, or under a multi-worker strategy that of any worker."""
        signum = self.stop.signum if self.stop is not None else None
        signals = StopSignals.SIGNALS
        flags = [due_time, *(signum == s for s in signals)]
        due_time, *caught = distribute.any_worker(self.checkpoint.trainer.strategy, flags)
        return due_time, next((s for s, c in zip(signals, caught) if c), None)

    def _stop_if_asked(self, signum: int | None) -> None:
        if signum is not None:
            self._save()
            raise Interrupted(signum, *self._position())
