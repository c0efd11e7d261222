"""The training loop: the tutorial's loop, written once and correctly.

    for epoch in range(epochs):
        reset metrics; iterate the (reshuffled) training data in groups of steps
        run the compiled step(s): forward, loss, gradients, update, metrics
        validate on the whole validation set; record history; call callbacks

*When* things happen (epochs, groups of steps, validation, callbacks) lives
here; what one step does in :mod:`gradloop.step`, what it works with in
:mod:`gradloop.compiled`, and where the loop stands in :mod:`gradloop.state`.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Sequence, Union

import keras
import tensorflow as tf

from gradloop import release
from gradloop.compiled import CompiledModel, CompileOptions
from gradloop.state import LoopState
from gradloop.step import StepFn

# A dataset (a new iterator, so a reshuffle, each epoch, as in Keras), or ``epoch -> that epoch's
# dataset`` (gradloop.data.shuffled_epochs): then every epoch's order can be rebuilt exactly on resume.
TrainData = Union[tf.data.Dataset, Callable[[int], tf.data.Dataset]]


class Trainer(CompiledModel):
    """Train a Keras model with a compiled custom loop.

    >>> trainer = Trainer(model, optimizer=keras.optimizers.Adam(1e-4),
    ...                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...                   metrics=["accuracy"])
    >>> trainer.fit(train_ds, validation_data=val_ds, epochs=10).history["val_accuracy"]

    ``train_step``, ``options``, ``strategy``: see :class:`gradloop.compiled.CompiledModel`.
    """

    def __init__(
        self, model: keras.Model, *, optimizer: keras.optimizers.Optimizer, loss: keras.losses.Loss | Any,
        metrics: Sequence[keras.metrics.Metric | str] = (), train_step: StepFn | None = None,
        options: CompileOptions = CompileOptions(), strategy: tf.distribute.Strategy | None = None,
    ) -> None:
        super().__init__(model, optimizer=optimizer, loss=loss, metrics=metrics, train_step=train_step,
                         options=options, strategy=strategy)
        self.state = LoopState()

    def fit(
        self, train: TrainData, *, validation_data: tf.data.Dataset | None = None, epochs: int = 1,
        callbacks: Iterable[keras.callbacks.Callback] | None = None, initial_state: LoopState | None = None,
        end_groups_every: int | None = None,
    ) -> keras.callbacks.History:
        """Train for ``epochs`` over ``train`` (``(x, y)`` batches; see ``TrainData``).

        ``loss`` is each epoch's mean over all its samples, ``val_loss`` the mean over the whole
        validation set; metrics restart every epoch; ``train_time`` is the training pass alone.
        ``callbacks`` are ``keras.callbacks``: epoch hooks run every epoch, batch hooks once per
        compiled call of ``steps_per_execution`` steps (begin: its first step; end: its last step
        and the running epoch means), as in Keras. ``initial_state`` continues a run where it stood
        (a restored checkpoint, mid-epoch included). ``end_groups_every=N`` also ends a step group at
        every N-th step of an epoch, so batch callbacks (a checkpoint every N steps) see those steps.
        """
        epoch_data = train if callable(train) else lambda epoch: train
        first = epoch_data(0)
        self.build(first)
        steps = _steps_per_epoch(first)
        self._advance(initial_state or LoopState(iterator=self.make_iterator(first)))
        history = keras.callbacks.History()  # first in the list: callbacks see this epoch in model.history
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
            logs = self._train_epoch(steps, callbacks, end_groups_every)
            if validation_data is not None:
                logs.update({f"val_{k}": v for k, v in self.evaluate(validation_data).items()})
            # The next epoch's iterator is made now, so a checkpoint at the epoch's end holds its order.
            next_epoch = self.make_iterator(epoch_data(epoch + 1))
            self._advance(LoopState(epoch + 1, iterator=next_epoch, history=self.state.history))
            callbacks.on_epoch_end(epoch, logs)
        callbacks.on_train_end(logs)
        return history

    def _train_epoch(self, steps: int | None, callbacks, end_groups_every: int | None) -> dict[str, float]:
        state = self.state
        if state.step == 0:
            self.reset_metrics()  # a resumed epoch keeps its restored sums
        start = time.perf_counter() - state.seconds
        logs = None
        while steps is None or state.step < steps:
            callbacks.on_train_batch_begin(state.step)
            n = self._group_size(state.step, steps, end_groups_every)
            done, logs = self._train_fn(state.iterator, tf.constant(n, tf.int32))
            done, logs = int(done), _floats(logs)
            if done == 0:
                break
            state.step += done
            state.seconds = time.perf_counter() - start
            callbacks.on_train_batch_end(state.step - 1, logs)
            if done < n:  # data of unknown length ran out
                break
        return {**(logs or _floats(self.results())), "train_time": time.perf_counter() - start}

    def _group_size(self, step: int, steps: int | None, end_groups_every: int | None) -> int:
        """Steps in the next compiled call: at most ``steps_per_execution``,
        ending at the epoch's end and at the next multiple of ``end_groups_every``."""
        n = self.options.steps_per_execution
        if steps is not None:
            n = min(n, steps - step)
        if end_groups_every:
            n = min(n, end_groups_every - step % end_groups_every)
        return n

    def evaluate(self, data: tf.data.Dataset) -> dict[str, float]:
        """Loss (mean over every sample of ``data``) and metrics, in inference mode."""
        self.build(data)
        self.reset_metrics()
        group = tf.constant(self.options.steps_per_execution, tf.int32)
        iterator = self.make_iterator(data)
        done = group
        while int(done) == self.options.steps_per_execution:
            done, logs = self._test_fn(iterator, group)
        release.release_iterator(iterator)
        return _floats(logs)

    def _advance(self, state: LoopState) -> None:
        """Continue from ``state``; the finished one's iterator is deleted off this thread."""
        finished, self.state = self.state, state
        if finished is not state:
            iterator, finished.iterator = finished.iterator, None  # a caller may still hold the state
            release.release_iterator(iterator)


def _floats(results: dict[str, tf.Tensor]) -> dict[str, float]:
    return {name: float(value) for name, value in results.items()}


def _steps_per_epoch(data: tf.data.Dataset) -> int | None:
    n = int(data.cardinality())
    return n if n >= 0 else None  # INFINITE (-1) and UNKNOWN (-2): run until the data ends
