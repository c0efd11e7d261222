"""When training should stop before its last epoch, and what it keeps.

- :class:`BestModelEarlyStopping`: with a patience, stop once ``val_loss`` has not
  improved for that many epochs (Keras' EarlyStopping rule: strictly lower is
  better), and keep the model of the best epoch in a file either way.
- :class:`StopOnNonFiniteLoss`: stop at the first step whose loss is NaN or
  infinite, naming that step, before a checkpoint of the broken weights exists.
  Divergence stops the run; it is not rolled back, because a rolled-back run
  with a quietly lowered learning rate is no longer the run that was asked for.

Both keep no state a checkpoint would have to save: the best epoch follows
from the history, and a diverged run is never resumed.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from gradloop.errors import TrainingError
from gradloop.atomic import save_model
from gradloop.loop.step import StepFn, call_step


class BestModelEarlyStopping(keras.callbacks.Callback):
    """Stop after ``patience`` epochs without a lower ``monitor`` (0: never stop early);
    keep the lowest-``monitor`` epoch's model at ``path`` (``averaged``: with the optimizer's
    moving averages of the weights, ``use_ema=True``, as validation saw them with SwapEMAWeights).
    Epochs without ``monitor`` (not validated) are skipped, as Keras' EarlyStopping does.

    On a resumed run the best value and the epochs since it come from the
    restored history, so stopping happens at the epoch it would have.
    """

    def __init__(self, path: str | Path, *, patience: int = 0, monitor: str = "val_loss", averaged: bool = False) -> None:
        super().__init__()
        self.path, self.patience, self.monitor, self.averaged = Path(path), patience, monitor, averaged
        self.stopped_epoch: int | None = None

    def on_train_begin(self, logs=None) -> None:
        values = self.model.history.history.get(self.monitor, [])
        best_epoch = int(np.argmin(values)) if values else -1
        self.best = values[best_epoch] if values else math.inf
        self.wait = len(values) - 1 - best_epoch if values else 0
        epochs = len(self.model.history.history.get("loss", values))  # validated or not
        self._stop_if_out_of_patience(epochs - 1)  # a run killed just after deciding to stop

    def _stop_if_out_of_patience(self, epoch: int) -> None:
        if self.patience and self.wait >= self.patience:
            self.model.stop_training = True
            self.stopped_epoch = epoch

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        if value < self.best:
            self.best, self.wait = value, 0
            self._save()
        else:
            self.wait += 1
            self._stop_if_out_of_patience(epoch)


    def _save(self) -> None:
        if not self.averaged:
            save_model(self.model, self.path)
            return
        # The averages copied in for the save and the trained weights put back exactly (a swap by
        # additions, as SwapEMAWeights does, would change them in the last bits).
        variables = self.model.trainable_variables
        trained = [v.numpy() for v in variables]
        self.model.optimizer.finalize_variable_values(variables)
        try:
            save_model(self.model, self.path)
        finally:
            for variable, value in zip(variables, trained):
                variable.assign(value)


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raise :class:`TrainingError` naming the first step whose loss was NaN or infinite.

        trainer = Trainer(..., train_step=guard.watch(step.train_step), ...)
        trainer.fit(..., callbacks=[guard, Checkpointing(...)])  # guard first

    ``watch`` records, inside the compiled loop, the optimizer step count of the
    first non-finite loss (a scalar check per step); the callback reads it after
    each step group. Put it before :class:`~gradloop.loop.checkpoint.Checkpointing`.
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
