"""The learning-rate range test: train briefly while the rate grows exponentially, watch the loss.

    for k in range(steps):
        lr_k = start_lr * (end_lr / start_lr) ** (k / (steps - 1))     # set before the update
        loss_k = one training step at lr_k
        smoothed_k = EMA of the losses so far (bias-corrected)
        stop when smoothed_k > diverge_factor * min(smoothed) or is not finite
    suggestion = the lr where the smoothed loss falls fastest, before its minimum

(Smith, "Cyclical Learning Rates for Training Neural Networks", 2017; the smoothing and the
stopping rule are fastai's and Lightning's.) The rate is set and the loss recorded inside
the compiled step (:meth:`LearningRateRangeTest.watch`), so a compiled call of many steps
changes the rate at every one of them; the callback reads them after each call and stops the
fit. The model and optimizer it trains are spent: train a copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from gradloop.loop.step import StepFn, call_step


@dataclass(frozen=True)
class RangeTestResult:
    """The rates tried, the loss at each (raw and smoothed), and what they suggest."""

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestion: float | None
    min_loss_lr: float | None
    diverged: bool


class LearningRateRangeTest(keras.callbacks.Callback):
    """Raise the learning rate from ``start_lr`` to ``end_lr`` over ``steps`` steps and record the loss.

        test = LearningRateRangeTest(start_lr=1e-7, end_lr=10.0, steps=300)
        trainer = Trainer(model, ..., train_step=test.watch(step.train_step))
        trainer.fit(train, epochs=test.epochs_for(steps_per_epoch), callbacks=[test], verbose=0)
        test.result().suggestion

    ``smoothing`` is the exponential moving average's weight of the past (0.98: about the
    last 50 steps); the test stops once the smoothed loss exceeds ``diverge_factor`` times
    its lowest value. The optimizer must have a constant learning rate (a variable), which
    the watched step overwrites.
    """

    def __init__(
        self,
        *,
        start_lr: float = 1e-7,
        end_lr: float = 10.0,
        steps: int = 300,
        smoothing: float = 0.98,
        diverge_factor: float = 4.0,
    ) -> None:
        super().__init__()
        for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if end_lr <= start_lr:
            raise ValueError(
                f"end_lr ({end_lr:g}) must be above start_lr ({start_lr:g}): the rate grows during the test"
            )
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 10:
            raise ValueError(f"steps must be an integer >= 10 (the smoothed loss needs a few), got {steps!r}")
        if not 0 <= smoothing < 1:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
        if not diverge_factor > 1:
            raise ValueError(f"diverge_factor must be > 1, got {diverge_factor!r}")
        self.start_lr, self.end_lr, self.steps = float(start_lr), float(end_lr), steps
        self.smoothing, self.diverge_factor = smoothing, diverge_factor
        self.step_count = tf.Variable(0, dtype=tf.int64, trainable=False)
        # One slot more than steps: steps a compiled call runs past the end write there, unread.
        self.step_losses = tf.Variable(tf.zeros(steps + 1, tf.float32), trainable=False)
        self.diverged = False

    def learning_rates(self, count: int | None = None) -> np.ndarray:
        """The rate of each of the first ``count`` steps (all ``steps`` by default)."""
        k = np.arange(self.steps if count is None else count, dtype=np.float64)
        return self.start_lr * (self.end_lr / self.start_lr) ** (k / (self.steps - 1))

    def epochs_for(self, steps_per_epoch: int) -> int:
        """Enough epochs for ``steps`` steps; the test stops the fit itself."""
        return math.ceil(self.steps / steps_per_epoch)

    def watch(self, step_fn: StepFn) -> StepFn:
        """``step_fn`` with the rate set before it and its loss recorded after it."""
        log_ratio = math.log(self.end_lr / self.start_lr) / (self.steps - 1)

        def range_test_step(trainer, x, y, sample_weight=None):
            k = tf.minimum(self.step_count, self.steps - 1)
            rate = self.start_lr * tf.exp(log_ratio * tf.cast(k, tf.float64))
            lr = trainer.optimizer.learning_rate
            lr.assign(tf.cast(rate, lr.dtype))
            loss, y_pred = call_step(step_fn, trainer, x, y, sample_weight)
            slot = tf.minimum(self.step_count, self.steps)
            self.step_losses.scatter_nd_update([[slot]], [tf.cast(tf.reduce_mean(loss), tf.float32)])
            self.step_count.assign_add(1)
            return loss, y_pred

        return range_test_step

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        done = min(int(self.step_count.numpy()), self.steps)
        smoothed = smooth(self.step_losses.numpy()[:done], self.smoothing)
        if done and diverging(smoothed, self.diverge_factor):
            self.diverged = True
            self.model.stop_training = True
        if done >= self.steps:
            self.model.stop_training = True

    def result(self) -> RangeTestResult:
        """The rates and losses up to the divergence (or the last step), and the suggested rate."""
        done = min(int(self.step_count.numpy()), self.steps)
        losses = self.step_losses.numpy()[:done].astype(np.float64)
        smoothed = smooth(losses, self.smoothing)
        keep = _until_divergence(smoothed, self.diverge_factor)
        lrs, losses, smoothed = self.learning_rates(done)[:keep], losses[:keep], smoothed[:keep]
        best = int(np.argmin(smoothed)) if keep else None
        return RangeTestResult(
            lrs=lrs,
            losses=losses,
            smoothed=smoothed,
            suggestion=suggest_lr(lrs, smoothed),
            min_loss_lr=float(lrs[best]) if best is not None else None,
            diverged=self.diverged,
        )


def smooth(losses: np.ndarray, smoothing: float) -> np.ndarray:
    """The bias-corrected exponential moving average: ``avg_k = b * avg_{k-1} + (1 - b) * loss_k``,
    divided by ``1 - b ** (k + 1)`` so that the first values are not pulled towards 0."""
    out = np.empty(len(losses), dtype=np.float64)
    average = 0.0
    for k, loss in enumerate(np.asarray(losses, dtype=np.float64)):
        average = smoothing * average + (1 - smoothing) * loss
        out[k] = average / (1 - smoothing ** (k + 1))
    return out


def diverging(smoothed: np.ndarray, factor: float) -> bool:
    """Whether the last smoothed loss is not finite or above ``factor`` times the lowest so far."""
    last = smoothed[-1]
    return not math.isfinite(last) or last > factor * np.nanmin(smoothed)


def _until_divergence(smoothed: np.ndarray, factor: float) -> int:
    """How many points precede the first diverging one (see :func:`diverging`)."""
    lowest = math.inf
    for k, value in enumerate(smoothed):
        if not math.isfinite(value) or value > factor * lowest:
            return k
        lowest = min(lowest, value)
    return len(smoothed)


def suggest_lr(lrs: np.ndarray, smoothed: np.ndarray, *, skip_start: int = 10) -> float | None:
    """The rate where the smoothed loss falls fastest per decade of rate, searched from
    ``skip_start`` (the average is still settling there) up to the lowest smoothed loss; None
    when the loss never falls (start lower, or train longer)."""
    lowest = int(np.argmin(smoothed)) if len(smoothed) else 0
    if lowest - skip_start < 2:
        return None
    window = slice(skip_start, lowest + 1)
    slopes = np.gradient(smoothed[window], np.log10(lrs[window]))
    steepest = int(np.argmin(slopes))
    return float(lrs[window][steepest]) if slopes[steepest] < 0 else None
