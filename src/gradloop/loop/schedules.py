"""Learning-rate schedules by name: Keras' own, plus a linear warm-up in front of any of them.

    constant      lr
    cosine        keras CosineDecay(lr, decay_steps)                    lr -> 0 along half a cosine
    exponential   keras ExponentialDecay(lr, decay_steps, decay_rate)   lr * rate ** (k / decay_steps)
    step          the same with staircase=True                          lr * rate ** floor(k / decay_steps)
    warm-up       LinearWarmUp(schedule, W)                             lr * (k + 1) / W for k < W, then schedule(k - W)

``k`` counts training steps (batches) from 0: the optimizer evaluates the
schedule at its ``iterations`` before each update. Under gradient accumulation
Keras still evaluates it at every micro-batch, so ``k`` counts micro-batches
there too, the same steps TensorBoard's batch summaries are plotted against.
"""

from __future__ import annotations

import keras
from keras import ops

from gradloop.loop.accepted import LR_SCHEDULES as NAMES  # the names, written once where the config reads them


@keras.saving.register_keras_serializable(package="gradloop")
class LinearWarmUp(keras.optimizers.schedules.LearningRateSchedule):
    """Ramp linearly up to ``after``'s first rate over ``warmup_steps``, then follow ``after``.

    The first update already moves (at ``peak / warmup_steps``), and the last
    warm-up step uses the full peak, so no step is spent at rate 0.
    """

    def __init__(self, after: keras.optimizers.schedules.LearningRateSchedule | float, warmup_steps: int) -> None:
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
            raise ValueError(f"warmup_steps must be a positive integer, got {warmup_steps!r}")
        self.after = after
        self.warmup_steps = warmup_steps

    def _after(self, step):
        return ops.cast(self.after(step) if callable(self.after) else self.after, "float32")

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = float(self.warmup_steps)
        ramp = self._after(0) * (step + 1.0) / warmup
        return ops.where(step < warmup, ramp, self._after(ops.maximum(step - warmup, 0.0)))

    def get_config(self) -> dict:
        after = self.after if not callable(self.after) else keras.saving.serialize_keras_object(self.after)
        return {"after": after, "warmup_steps": self.warmup_steps}

    @classmethod
    def from_config(cls, config: dict) -> LinearWarmUp:
        after = config["after"]
        if isinstance(after, dict):
            after = keras.saving.deserialize_keras_object(after)
        return cls(after, config["warmup_steps"])


def learning_rate(
    name: str,
    lr: float,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    decay_steps: int | None = None,
    decay_rate: float = 0.9,
    steps_per_epoch: int = 1,
) -> keras.optimizers.schedules.LearningRateSchedule | float:
    """The optimizer's ``learning_rate`` for schedule ``name`` (see the module docstring).

    ``decay_steps`` defaults to the steps after warm-up for ``cosine`` (decay to
    0 by the end of training) and to one epoch for ``exponential`` and ``step``.
    ``constant`` without warm-up is a plain float, so callbacks such as
    ``LearningRateScheduler`` can still set it.
    """
    if name not in NAMES:
        raise ValueError(f"lr_schedule must be one of {', '.join(NAMES)}, got {name!r}")
    keras_schedules = keras.optimizers.schedules
    if name == "constant":
        schedule = lr
    elif name == "cosine":
        schedule = keras_schedules.CosineDecay(lr, decay_steps=decay_steps or max(total_steps - warmup_steps, 1))
    else:
        schedule = keras_schedules.ExponentialDecay(
            lr, decay_steps=decay_steps or steps_per_epoch, decay_rate=decay_rate, staircase=name == "step"
        )
    return LinearWarmUp(schedule, warmup_steps) if warmup_steps else schedule
