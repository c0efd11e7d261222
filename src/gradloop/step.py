"""One training step, written once: the tutorial's, or a user's of the same shape.

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
:meth:`gradloop.compiled.CompiledModel.make_train_function` wraps it, updates
the metrics, runs many steps per compiled call and optionally XLA-compiles it.
The step runs inside ``tf.function``, so it must be TensorFlow code (no numpy,
no Python side effects per step).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import tensorflow as tf

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
