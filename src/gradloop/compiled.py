"""What a step works with: a Keras model compiled for a custom loop.

Keras' ``model.compile`` gathers a model, optimizer, loss and metrics and
``fit`` runs them; here the gathering is :class:`CompiledModel` and the loop
is :class:`gradloop.trainer.Trainer`, its subclass. A step function
(:mod:`gradloop.step`) sees these parts as ``trainer.model``,
``trainer.optimizer``, ``trainer.compute_loss`` and the metrics; the loop
calls ``build``, ``make_iterator``, ``reset_metrics``, ``results`` and the two
compiled functions, and hands ``model`` to the callbacks.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import tensorflow as tf

from gradloop import distribute, losses, optimizer_kernels
from gradloop import step as step_lib


class CompiledModel:
    """Model, optimizer, loss, metrics and strategy, and the step functions compiled from them once.

    ``metrics``: Keras metrics or names (``"accuracy"`` is chosen to fit the loss).
    ``train_step`` replaces the step (the contract: :mod:`gradloop.step`).
    ``options``: steps per compiled call, XLA, fused optimizer kernels (:class:`~gradloop.step.CompileOptions`).
    ``strategy``: a ``tf.distribute.Strategy`` whose ``scope()`` built the model;
    the loss is then averaged over the global batch and datasets are distributed.
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        optimizer: keras.optimizers.Optimizer,
        loss: keras.losses.Loss | Any,
        metrics: Sequence[keras.metrics.Metric | str] = (),
        train_step: step_lib.StepFn | None = None,
        options: step_lib.CompileOptions = step_lib.CompileOptions(),
        strategy: tf.distribute.Strategy | None = None,
    ) -> None:
        if not isinstance(model, keras.Model):
            raise TypeError(f"model must be a keras.Model, got {type(model).__name__}")
        self.model = model
        self.strategy = strategy or tf.distribute.get_strategy()
        self.optimizer = keras.optimizers.get(optimizer)
        self.loss = keras.losses.get(loss)
        self._summed_loss = losses.summed(self.loss)
        with self.strategy.scope():  # metric variables aggregate across replicas
            self.metrics = [losses.resolve_metric(m, self.loss) for m in metrics]
            # float64 sums: a restore splits a summed metric evenly over the replicas, unlike the split
            # the run had; in float64 that other order's rounding stays far below the float32 result's.
            self.loss_tracker = keras.metrics.Mean(name="loss", dtype="float64")
        self.options = options
        self._train_step = train_step or step_lib.train_step
        self._train_fn = self._test_fn = None
        # Keras callbacks (LearningRateScheduler, TensorBoard) reach the optimizer through the model.
        self.model.optimizer = self.optimizer

    def compute_loss(self, y: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        """Mean loss over the global batch plus the regularisation losses; under a
        strategy, this replica's share of it (the gradient all-reduce sums shares)."""
        total = self._summed_loss(y, y_pred)
        loss = total / tf.cast(distribute.global_batch_size(y), total.dtype)
        if self.model.losses:
            loss += tf.nn.scale_regularization_loss(tf.cast(tf.add_n(self.model.losses), loss.dtype))
        return loss

    def build(self, data: tf.data.Dataset) -> None:
        """Create model and optimizer variables eagerly, then the compiled functions, once.

        ``fit`` calls it; call it first to restore a checkpoint into the variables.
        """
        if self._train_fn is not None:
            return
        with self.strategy.scope():
            if not self.model.built:
                self.model(next(iter(data.take(1)))[0])
            distribute.check_in_scope(self.strategy, self.model.trainable_variables, "model")
            self.optimizer.build(self.model.trainable_variables)
            if self.options.fused_optimizer:
                optimizer_kernels.use_fused_kernels(self.optimizer)
        self._train_fn = step_lib.fused_fn(self, self._train_step, self.options)
        self._test_fn = step_lib.fused_fn(self, step_lib.test_step, self.options)

    def make_iterator(self, data: tf.data.Dataset):
        """An iterator over ``data``, distributed over the strategy's replicas:
        what ``fit`` runs on, and what a checkpoint restores a position into."""
        return distribute.make_iterator(self.strategy, data)

    def reset_metrics(self) -> None:
        for metric in (self.loss_tracker, *self.metrics):
            metric.reset_state()

    def results(self) -> dict[str, tf.Tensor]:
        """The running loss and metrics, by name (in a compiled step group too)."""
        return {"loss": tf.cast(self.loss_tracker.result(), tf.float32), **{m.name: m.result() for m in self.metrics}}
