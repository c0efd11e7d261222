"""What a step works with: a Keras model compiled for a custom loop.

Keras' ``model.compile`` gathers a model, optimizer, loss and metrics and
``fit`` runs them; here the gathering is :class:`CompiledModel` and the loop
is :class:`gradloop.trainer.Trainer`, its subclass. A step function
(:mod:`gradloop.step`) sees these parts as ``trainer.model``,
``trainer.optimizer``, ``trainer.compute_loss`` and the metrics; the loop
calls ``build``, ``make_iterator``, ``reset_metrics``, ``results`` and the two
compiled functions that ``build`` makes (as Keras' ``make_train_function``),
and hands ``model`` to the callbacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import keras
import tensorflow as tf

from gradloop import distribute, losses, optimizer_kernels
from gradloop import step as step_lib

# run(iterator, num_steps) -> (steps done, {metric name: running result})
MultiStepFn = Callable[[Any, tf.Tensor], "tuple[tf.Tensor, dict[str, tf.Tensor]]"]


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


class CompiledModel:
    """Model, optimizer, loss, metrics and strategy, and the step functions compiled from them once.

    ``metrics``: Keras metrics or names (``"accuracy"`` is chosen to fit the loss).
    ``train_step`` replaces the step (the contract: :mod:`gradloop.step`).
    ``options``: steps per compiled call, XLA, fused optimizer kernels (:class:`CompileOptions`).
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
        options: CompileOptions = CompileOptions(),
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
        self._train_fn = self.make_train_function()
        self._test_fn = self.make_test_function()

    def make_train_function(self) -> MultiStepFn:
        """``run(iterator, num_steps)`` over the training step (see :meth:`_make_multi_step`)."""
        return self._make_multi_step(self._train_step)

    def make_test_function(self) -> MultiStepFn:
        """``run(iterator, num_steps)`` over the inference step: forward pass and loss, no update."""
        return self._make_multi_step(step_lib.test_step)

    def _make_multi_step(self, step_fn: step_lib.StepFn) -> MultiStepFn:
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
            loss, y_pred = step_fn(self, x, y)
            self.update_metrics(loss, y, y_pred)

        if self.options.jit_compile:
            one_step = tf.function(one_step, jit_compile=True)
        if distribute.is_distributed(self.strategy):
            replica_step = one_step
            one_step = lambda x, y: self.strategy.run(replica_step, args=(x, y))  # noqa: E731

        @tf.function
        def run(iterator, num_steps: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
            done = tf.constant(0, tf.int32)
            for _ in tf.range(num_steps):
                batch = iterator.get_next_as_optional()
                if not batch.has_value():
                    break
                x, y = batch.get_value()
                one_step(x, y)
                done += 1
            return done, self.results()

        return run

    def update_metrics(self, loss: tf.Tensor, y: tf.Tensor, y_pred: tf.Tensor) -> None:
        """Accumulate one batch: the loss weighted by batch size (so the epoch
        figure is the mean over samples, as Keras reports it), then each metric.

        ``loss`` is this replica's share of the global-batch mean, so the tracker
        adds ``loss * global`` to its total and the local sample count to its count;
        summed over replicas that is exactly the global batch's mean."""
        local = tf.cast(tf.shape(y)[0], tf.float32)
        share = tf.cast(loss, tf.float32) * distribute.global_batch_size(y)
        self.loss_tracker.update_state(tf.math.divide_no_nan(share, local), sample_weight=local)
        for metric in self.metrics:
            metric.update_state(y, y_pred)

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
