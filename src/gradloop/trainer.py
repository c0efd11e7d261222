"""The training loop: the tutorial's loop, written once and correctly.

    for epoch in range(epochs):
        reset metrics; iterate the (reshuffled) training data in groups of steps
        run the compiled step(s): forward, loss, gradients, update, metrics
        validate on the whole validation set; record history; call callbacks

What one step does lives in :mod:`gradloop.step`; *when* things happen
(epochs, groups of steps, validation, callbacks) lives here. Where the loop
stands is a :class:`LoopState`, which :mod:`gradloop.checkpoint` saves and
``fit(initial_state=...)`` continues from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence, Union

import keras
import tensorflow as tf

from gradloop import distribute, losses, optimizer_kernels, release
from gradloop import step as step_lib

# A dataset (a new iterator, so a reshuffle, each epoch, as in Keras), or ``epoch -> that epoch's
# dataset`` (gradloop.data.shuffled_epochs): then every epoch's order can be rebuilt exactly on resume.
TrainData = Union[tf.data.Dataset, Callable[[int], tf.data.Dataset]]


@dataclass
class LoopState:
    """Where training stands, besides the variables: what a resume continues from.

    ``iterator`` yields the rest of epoch ``epoch`` after its first ``step``
    batches. Between epochs it is the next epoch's fresh iterator, whose
    shuffle order is already drawn, so saving it saves that order too.
    ``history`` holds the finished epochs' logs (Keras names); ``seconds`` the
    training time already spent in the epoch.
    """

    epoch: int = 0
    step: int = 0
    iterator: Any = None
    history: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0


class Trainer:
    """Train a Keras model with a compiled custom loop.

    >>> trainer = Trainer(model, optimizer=keras.optimizers.Adam(1e-4),
    ...                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...                   metrics=["accuracy"])
    >>> history = trainer.fit(train_ds, validation_data=val_ds, epochs=10)
    >>> history.history["val_accuracy"][-1]

    ``train_step`` replaces the step (see :mod:`gradloop.step` for the contract).
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
            self.loss_tracker = keras.metrics.Mean(name="loss")
        self.options = options
        self._train_step = train_step or step_lib.train_step
        self._train_fn = self._test_fn = None
        self.state = LoopState()
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

    def fit(
        self,
        train: TrainData,
        *,
        validation_data: tf.data.Dataset | None = None,
        epochs: int = 1,
        callbacks: Iterable[keras.callbacks.Callback] | None = None,
        initial_state: LoopState | None = None,
        callback_every: int | None = None,
    ) -> keras.callbacks.History:
        """Train for ``epochs`` over ``train`` (``(x, y)`` batches; see ``TrainData``).

        Each epoch's ``loss`` is the mean over all its samples (not the last
        batch), ``val_loss`` the mean over the whole validation set, and every
        metric restarts each epoch. ``train_time`` is the training pass alone.

        ``callbacks`` are standard ``keras.callbacks``. Epoch hooks run every
        epoch; batch hooks run once per compiled call of ``steps_per_execution``
        steps: ``on_train_batch_begin(first step)``, ``on_train_batch_end(last
        step, running epoch means)``, as in Keras' own ``steps_per_execution``.

        ``initial_state`` continues a run where it stood (a restored
        checkpoint), mid-epoch included. ``callback_every=N`` also ends a step
        group after every N-th step of an epoch, so batch callbacks (a
        checkpoint every N steps) see exactly those steps. The History runs
        first, so callbacks see the current epoch in ``model.history``.
        """
        epoch_data = train if callable(train) else lambda epoch: train
        first = epoch_data(0)
        self.build(first)
        steps = _steps_per_epoch(first)
        self._advance(initial_state or LoopState(iterator=self.make_iterator(first)))
        history = keras.callbacks.History()
        history.history = self.state.history
        callbacks = keras.callbacks.CallbackList(
            [history, *(callbacks or [])], model=self.model, epochs=epochs, steps=steps, verbose=0
        )
        self.model.stop_training = False
        callbacks.on_train_begin()
        logs: dict[str, float] = {}
        while self.state.epoch < epochs and not self.model.stop_training:
            epoch = self.state.epoch
            callbacks.on_epoch_begin(epoch)
            logs = self._train_epoch(steps, callbacks, callback_every)
            if validation_data is not None:
                logs.update({f"val_{k}": v for k, v in self.evaluate(validation_data).items()})
            # The next epoch's iterator is made now, so a checkpoint at the epoch's end holds its order.
            next_epoch = self.make_iterator(epoch_data(epoch + 1))
            self._advance(LoopState(epoch + 1, iterator=next_epoch, history=self.state.history))
            callbacks.on_epoch_end(epoch, logs)
        callbacks.on_train_end(logs)
        return history

    def _train_epoch(self, steps: int | None, callbacks, callback_every: int | None) -> dict[str, float]:
        state = self.state
        if state.step == 0:
            self._reset_metrics()  # a resumed epoch keeps its restored sums
        start = time.perf_counter() - state.seconds
        logs = None
        while steps is None or state.step < steps:
            callbacks.on_train_batch_begin(state.step)
            n = self._group_size(state.step, steps, callback_every)
            done, logs = self._train_fn(state.iterator, tf.constant(n, tf.int32))
            done, logs = int(done), _floats(logs)
            if done == 0:
                break
            state.step += done
            state.seconds = time.perf_counter() - start
            callbacks.on_train_batch_end(state.step - 1, logs)
            if done < n:  # data of unknown length ran out
                break
        return {**(logs or self._results()), "train_time": time.perf_counter() - start}

    def _group_size(self, step: int, steps: int | None, callback_every: int | None) -> int:
        """Steps in the next compiled call: at most ``steps_per_execution``,
        ending at the epoch's end and at the next multiple of ``callback_every``."""
        n = self.options.steps_per_execution
        if steps is not None:
            n = min(n, steps - step)
        if callback_every:
            n = min(n, callback_every - step % callback_every)
        return n

    def evaluate(self, data: tf.data.Dataset) -> dict[str, float]:
        """Loss (mean over every sample of ``data``) and metrics, in inference mode."""
        self.build(data)
        self._reset_metrics()
        group = tf.constant(self.options.steps_per_execution, tf.int32)
        iterator = self.make_iterator(data)
        done = group
        while int(done) == self.options.steps_per_execution:
            done, logs = self._test_fn(iterator, group)
        release.release_iterator(iterator)
        return _floats(logs)

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

    def _advance(self, state: LoopState) -> None:
        """Continue from ``state``. The finished state lets go of its iterator (a caller
        may still hold the state), which is deleted off this thread (:mod:`gradloop.release`)."""
        finished, self.state = self.state, state
        if finished is not state:
            iterator, finished.iterator = finished.iterator, None
            release.release_iterator(iterator)

    def _reset_metrics(self) -> None:
        for metric in (self.loss_tracker, *self.metrics):
            metric.reset_state()

    def results(self) -> dict[str, tf.Tensor]:
        """The running loss and metrics, by name (in a compiled step group too)."""
        return {m.name: m.result() for m in (self.loss_tracker, *self.metrics)}

    def _results(self) -> dict[str, float]:
        return _floats(self.results())


def _floats(results: dict[str, tf.Tensor]) -> dict[str, float]:
    return {name: float(value) for name, value in results.items()}


def _steps_per_epoch(data: tf.data.Dataset) -> int | None:
    n = int(data.cardinality())
    return n if n >= 0 else None  # INFINITE (-1) and UNKNOWN (-2): run until the data ends
