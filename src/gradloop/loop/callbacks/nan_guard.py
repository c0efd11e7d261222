"""The stop on a non-finite loss.

:class:`StopOnNonFiniteLoss`: stop at the first step whose loss is NaN or
infinite, naming that step, before a checkpoint of the broken weights exists.
Divergence stops the run; it is not rolled back, because a rolled-back run
with a quietly lowered learning rate is no longer the run that was asked for.

It keeps no state a checkpoint would have to save: a diverged run is never resumed.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from gradloop.errors import TrainingError
from gradloop.loop.step import StepFn, call_step


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raise :class:`TrainingError` naming the first step whose loss was NaN or infinite.

        trainer = Trainer(..., train_step=guard.watch(step.train_step), ...)
        trainer.fit(..., callbacks=[guard, Checkpointing(...)])  # guard first

    ``watch`` records, inside the compiled loop, the optimizer step count of the
    first non-finite loss (a scalar check per step); the callback reads it after
    each step group. Put it before :class:`~gradloop.loop.callbacks.checkpointing.Checkpointing`.
    """

    def __init__(self, *, steps_per_epoch: int | None = None, hint: str = "lower the learning rate") -> None:
        super().__init__()
        self.steps_per_epoch, self.hint = steps_per_epoch, hint
        self.first_bad_step = tf.Variable(-1, dtype=tf.int64, trainable=False)
        self.first_bad_loss = tf.Variable(0.0, dtype=tf.float32, trainable=False)

    def watch(self, step_fn: StepFn) -> StepFn:
        def watched_step(trainer, x, y, sample_weight=None):
            loss, y_pred = call_step(step_fn, trainer, x, y, sample_weight)
            first = self.first_bad_step
            bad = tf.logical_and(first < 0, tf.logical_not(tf.reduce_all(tf.math.is_finite(loss))))
            first.assign(tf.where(bad, tf.cast(trainer.optimizer.iterations, tf.int64), first))
            self.first_bad_loss.assign(tf.where(bad, tf.cast(tf.reduce_mean(loss), tf.float32), self.first_bad_loss))
            return loss, y_pred

        return watched_step

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        step = int(self.first_bad_step.numpy())
        if step < 0:
            return
        where = ""
        if self.steps_per_epoch:
            epoch, in_epoch = divmod(step - 1, self.steps_per_epoch)
            where = f" (epoch {epoch + 1}, step {in_epoch + 1} of {self.steps_per_epoch})"
        raise TrainingError(
            f"the training loss became {float(self.first_bad_loss.numpy())} at step {step}{where}: the weights "
            f"diverged, so training stopped without saving them; {self.hint} and start a new run"
        )
