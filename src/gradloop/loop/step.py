"""One training step, written once: the tutorial's, or a user's of the same shape.

A step is any function ``step_fn(trainer, x, y) -> (loss, y_pred)``, or
``step_fn(trainer, x, y, sample_weight) -> (loss, y_pred)`` to take the
batches' sample weights (data of ``(x, y, sample_weight)``, or ``class_weight``);
a step without that parameter is refused such data. The default is the tutorial's:

    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)          # forward pass
        loss = loss_fn(y, y_pred) + model.losses  # loss (Keras' compute_loss)
    grads = tape.gradient(loss, variables)        # gradients
    optimizer.apply_gradients(zip(grads, variables))  # update

The update is Keras' ``optimizer.apply_gradients``, and the optimizer's own
options run inside it, so no step is rewritten for them: loss-scale unscaling
and skipping non-finite updates (``LossScaleOptimizer``, for mixed_float16),
gradient accumulation (``gradient_accumulation_steps``), global-norm clipping
(``global_clipnorm``) and the learning-rate schedule. A step that calls
``optimizer.scale_loss`` and ``apply_gradients`` as the default does gets them all.

A user's own step keeps that signature and gets everything else for free:
:mod:`gradloop.loop.compiled_steps` (through ``CompiledModel.make_train_function``) wraps it, updates
the metrics, runs many steps per compiled call and optionally XLA-compiles it.
The step runs inside ``tf.function``, so it must be TensorFlow code (no numpy,
no Python side effects per step).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol

import keras
import tensorflow as tf

StepFn = Callable[..., "tuple[tf.Tensor, Any]"]


class StepContext(Protocol):
    """What a step may use of its ``trainer`` (a :class:`gradloop.loop.compiled.CompiledModel`)."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer

    def compute_loss(
        self, y: Any, y_pred: Any, sample_weight: Any = None, *, x: Any = None, training: bool = True
    ) -> tf.Tensor:
        """The batch's loss, as Keras' ``model.compute_loss`` gives it (this replica's share under a strategy)."""
        ...


def _sample_weight_passing(step_fn: StepFn) -> str | None:
    """How ``step_fn`` takes sample weights: ``"position"`` (a fourth parameter, or ``*args``),
    ``"keyword"`` (``sample_weight=``, or ``**kwargs``), or None (the three-argument contract)."""
    try:
        parameters = inspect.signature(step_fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: assume the three-argument contract
        return None
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 4 or any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return "position"
    if any(p.name == "sample_weight" or p.kind == p.VAR_KEYWORD for p in parameters):
        return "keyword"
    return None


def call_step(step_fn: StepFn, trainer: StepContext, x: Any, y: Any, sample_weight: Any = None):
    """``step_fn(trainer, x, y[, sample_weight])``: the weights go to a step that takes them
    (as its fourth argument, or by keyword when that is how it takes them)."""
    passing = _sample_weight_passing(step_fn)
    if passing == "position":
        return step_fn(trainer, x, y, sample_weight)
    if passing == "keyword":
        return step_fn(trainer, x, y, sample_weight=sample_weight)
    if sample_weight is not None:
        name = getattr(step_fn, "__name__", repr(step_fn))
        raise TypeError(
            f"the data has sample weights (or class_weight was given), but the step {name}(trainer, x, y) takes "
            "none: give it a parameter sample_weight=None and pass it on to "
            "trainer.compute_loss(y, y_pred, sample_weight)"
        )
    return step_fn(trainer, x, y)


def train_step(trainer: StepContext, x: Any, y: Any, sample_weight: Any = None) -> tuple[tf.Tensor, Any]:
    """The tutorial's step: forward pass, loss, gradients, update."""
    variables = trainer.model.trainable_variables
    with tf.GradientTape() as tape:
        y_pred = trainer.model(x, training=True)
        loss = trainer.compute_loss(y, y_pred, sample_weight, x=x)
        # Keras 3: a no-op unless the optimizer is a LossScaleOptimizer (mixed precision).
        scaled_loss = trainer.optimizer.scale_loss(loss)
    grads = tape.gradient(scaled_loss, variables)
    trainer.optimizer.apply_gradients(zip(grads, variables))
    return loss, y_pred


def test_step(trainer: StepContext, x: Any, y: Any, sample_weight: Any = None) -> tuple[tf.Tensor, Any]:
    """Forward pass and loss in inference mode (dropout off, BatchNorm frozen)."""
    y_pred = trainer.model(x, training=False)
    return trainer.compute_loss(y, y_pred, sample_weight, x=x, training=False), y_pred
