"""One training step, written once, and the wrapper that compiles and fuses it.

A step is any function ``step_fn(trainer, x, y) -> (loss, y_pred)``. The
default is the tutorial's:

    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)          # forward pass
        loss = loss_fn(y, y_pred) + model.losses  # loss
    grads = tape.gradient(loss, variables)        # gradients
    optimizer.apply_gradients(zip(grads, variables))  # update

The update is Keras' ``optimizer.apply_gradients``, and the optimizer's own
options run inside it, so no step is rewritten for them: loss-scale unscaling
and skipping non-finite updates (``LossScaleOptimizer``, for mixed_float16),
gradient accumulation (``gradient_accumulation_steps``), global-norm clipping
(``global_clipnorm``) and the learning-rate schedule. A step that calls
``optimizer.scale_loss`` and ``apply_gradients`` as the default does gets them all.

A user's own step keeps that signature and gets everything else for free:
the wrapper below updates the metrics, runs many steps per compiled call and
optionally XLA-compiles the step. The step runs inside ``tf.function``, so it
must be TensorFlow code (no numpy, no Python side effects per step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import keras
import tensorflow as tf

from gradloop import distribute

if TYPE_CHECKING:
    from gradloop.compiled import CompiledModel

StepFn = Callable[["CompiledModel", tf.Tensor, tf.Tensor], "tuple[tf.Tensor, tf.Tensor]"]


def train_step(trainer: "CompiledModel", x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The tutorial's step: forward pass, loss, gradients, update."""
    variables = trainer.model.trainable_variables
    with tf.GradientTape() as tape:
        y_pred = trainer.model(x, training=True)
        loss = trainer.compute_loss(y, y_pred)
        # Keras 3: a no-op unless the optimizer is a LossScaleOptimizer (mixed precision).
        scaled_loss = trainer.optimizer.scale_loss(loss)
    grads = tape.gradient(scaled_loss, variables)
    trainer.optimizer.apply_gradients(zip(grads, variables))
    return loss, y_pred


def test_step(trainer: "CompiledModel", x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Forward pass and loss in inference mode (dropout off, BatchNorm frozen)."""
    y_pred = trainer.model(x, training=False)
    return trainer.compute_loss(y, y_pred), y_pred


@dataclass(frozen=True)
class CompileOptions:
    """Choices that change the compiled function; changing one means a new trace.

    ``steps_per_execution``: steps run inside one compiled call (a
    ``tf.while_loop`` over the iterator), like Keras' ``steps_per_execution``
    and Orbit's ``steps_per_loop``. Callbacks' batch hooks run once per call.
    ``jit_compile``: XLA-compile the step (loss, gradients, update, metrics).
    ``fused_optimizer``: run Keras Adam's and SGD-with-momentum's update on
    TensorFlow's fused kernels (same formula; see :mod:`gradloop.optimizer_kernels`).
    """

    steps_per_execution: int = 32
    jit_compile: bool = False
    fused_optimizer: bool = True

    def __post_init__(self) -> None:
        spe = self.steps_per_execution
        # The count travels as an int32 tensor, and tf.constant(2**32, tf.int32) silently wraps to 0.
        if isinstance(spe, bool) or not isinstance(spe, int) or not 1 <= spe < 2**31:
            raise ValueError(f"steps_per_execution must be an integer from 1 to {2**31 - 1}, got {spe!r}")


def update_metrics(
    loss_tracker: keras.metrics.Mean,
    metrics: Sequence[keras.metrics.Metric],
    loss: tf.Tensor,
    y: tf.Tensor,
    y_pred: tf.Tensor,
) -> None:
    """Accumulate one batch: the loss weighted by batch size (so the epoch
    figure is the mean over samples, as Keras reports it), then each metric.

    ``loss`` is this replica's share of the global-batch mean, so the tracker
    adds ``loss * global`` to its total and the local sample count to its count;
    summed over replicas that is exactly the global batch's mean."""
    local = tf.cast(tf.shape(y)[0], tf.float32)
    share = tf.cast(loss, tf.float32) * distribute.global_batch_size(y)
    loss_tracker.update_state(tf.math.divide_no_nan(share, local), sample_weight=local)
    for metric in metrics:
        metric.update_state(y, y_pred)


def fused_fn(
    trainer: "CompiledModel",
    step_fn: StepFn,
    options: CompileOptions,
) -> Callable[[tf.data.Iterator, tf.Tensor], tuple[tf.Tensor, dict[str, tf.Tensor]]]:
    """Build ``run(iterator, num_steps) -> (steps_done, metric results)``, compiled once.

        for _ in range(num_steps):
            x, y = next(iterator)  # stop early when the epoch's data runs out
            loss, y_pred = step_fn(trainer, x, y)
            update metrics
        return steps done, {metric name: running result}

    ``num_steps`` must be a tensor: a Python int would retrace per value. An
    epoch with a smaller last batch has an unknown batch dimension in its
    element spec, so that batch runs through the same trace. The results come back with
    the count, so reporting them costs no further call per group of steps.
    """

    def one_step(x: tf.Tensor, y: tf.Tensor) -> None:
        loss, y_pred = step_fn(trainer, x, y)
        update_metrics(trainer.loss_tracker, trainer.metrics, loss, y, y_pred)

    if options.jit_compile:
        one_step = tf.function(one_step, jit_compile=True)
    if distribute.is_distributed(trainer.strategy):
        replica_step = one_step
        one_step = lambda x, y: trainer.strategy.run(replica_step, args=(x, y))  # noqa: E731

    @tf.function
    def run(iterator: tf.data.Iterator, num_steps: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        done = tf.constant(0, tf.int32)
        for _ in tf.range(num_steps):
            batch = iterator.get_next_as_optional()
            if not batch.has_value():
                break
            x, y = batch.get_value()
            one_step(x, y)
            done += 1
        return done, trainer.results()

    return run
