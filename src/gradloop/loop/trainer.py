"""The training loop: the tutorial's loop, written once and correctly.

    for epoch in range(epochs):
        reset metrics; iterate the (reshuffled) training data in groups of steps
        run the compiled step(s): forward, loss, gradients, update, metrics
        validate on the whole validation set (every validation_freq epochs)
        record history; call callbacks

*When* things happen (epochs, groups of steps, validation, callbacks) lives
here; what one step does in :mod:`gradloop.loop.step`, what it works with in
:mod:`gradloop.loop.compiled`, and where the loop stands in :mod:`gradloop.loop.state`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

from gradloop.loop import in_memory, progress, release
from gradloop.loop.compiled import CompileOptions, LossSpec, MetricsSpec
from gradloop.loop.inference import InferenceModel, check_dataset, floats, steps_per_epoch
from gradloop.loop.state import LoopState, validates
from gradloop.loop.step import StepFn

# A dataset (a new iterator, so a reshuffle, each epoch, as in Keras), or ``epoch -> that epoch's
# dataset`` (gradloop.data.shuffled_epochs): then every epoch's order can be rebuilt exactly on resume.
# Arrays in memory: gradloop.InMemory (epoch -> Epoch), whose step groups gather batches by index.
TrainData = tf.data.Dataset | in_memory.Epoch | Callable[[int], tf.data.Dataset | in_memory.Epoch]


class Trainer(InferenceModel):
    """Train a Keras model with a compiled custom loop.

    >>> trainer = Trainer(model, optimizer=keras.optimizers.Adam(1e-4),
    ...                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...                   metrics=["accuracy"])
    >>> trainer.fit(train_ds, validation_data=val_ds, epochs=10).history["val_accuracy"]
    >>> trainer.predict(test_images)  # numpy, as model.predict

    ``loss``, ``loss_weights``, ``metrics``, ``weighted_metrics``, ``train_step``,
    ``options``, ``strategy``: see :class:`gradloop.loop.compiled.CompiledModel`.

    ``Trainer(model)``, without ``optimizer=`` and ``loss=``, trains a model its user compiled
    with the model's own ``train_step``/``test_step``/``predict_step``, as ``model.fit`` does
    (a GAN's two optimizers, its own ``compile``): see :mod:`gradloop.loop.keras_steps`.

    ``Trainer(models={name: model}, optimizers={name: optimizer}, train_step=fn)`` trains several
    models with a step function ``fn(t, batch) -> {name: scalar}``: see :mod:`gradloop.loop.function_steps`.
    """

    def __new__(cls, model: keras.Model = None, **kwargs: Any) -> Trainer:
        # Trainer(models={...}, optimizers={...}, train_step=fn): step functions (gradloop.loop.function_steps).
        if cls is Trainer and ("models" in kwargs or "optimizers" in kwargs):
            from gradloop.loop.function_steps import FunctionStepTrainer

            return super().__new__(FunctionStepTrainer)
        # Trainer(model) without optimizer= and loss=: the model's own train_step (gradloop.loop.keras_steps).
        if cls is Trainer and kwargs.get("optimizer") is None and kwargs.get("loss") is None:
            from gradloop.loop.keras_steps import ModelStepTrainer

            return super().__new__(ModelStepTrainer)
        return super().__new__(cls)

    def __init__(
        self,
        model: keras.Model,
        *,
        optimizer: keras.optimizers.Optimizer,
        loss: LossSpec,
        metrics: MetricsSpec = (),
        loss_weights: Any = None,
        weighted_metrics: MetricsSpec = None,
        train_step: StepFn | None = None,
        options: CompileOptions = CompileOptions(),
        strategy: tf.distribute.Strategy | None = None,
    ) -> None:
        super().__init__(
            model,
            optimizer=optimizer,
            loss=loss,
            metrics=metrics,
            loss_weights=loss_weights,
            weighted_metrics=weighted_metrics,
            train_step=train_step,
            options=options,
            strategy=strategy,
        )
        self.state = LoopState()

    def fit(
        self,
        train: TrainData,
        *,
        validation_data: tf.data.Dataset | None = None,
        epochs: int = 1,
        callbacks: Iterable[keras.callbacks.Callback] | None = None,
        initial_state: LoopState | None = None,
        end_groups_every: int | None = None,
        class_weight: Mapping[int, float] | None = None,
        validation_freq: int | Sequence[int] = 1,
        verbose: int | str = "auto",
    ) -> keras.callbacks.History:
        """Train for ``epochs`` over ``train`` (``(x, y)`` or ``(x, y, sample_weight)`` batches; see ``TrainData``).

        ``loss`` is each epoch's mean over all its samples, ``val_loss`` the mean over the whole
        validation set; metrics restart every epoch; ``train_time`` is the training pass alone.
        ``callbacks`` are ``keras.callbacks``, called when ``model.fit`` calls them: epoch hooks
        every epoch; batch hooks once per compiled call of ``steps_per_execution`` steps (begin:
        its first step; end: its last step and the running epoch means); the test hooks around
        validation. ``class_weight`` (``{class index: weight}``) weighs training samples by their
        class, as Keras does. ``validation_freq``: validate every N-th epoch, or at the listed
        (1-based) epochs; the ``val_`` histories then hold those epochs only, as Keras' do.
        ``verbose``: ``"auto"``/1 a progress bar (a widget in Jupyter), 2 one line per epoch, 0 silent.
        ``initial_state`` continues a run where it stood (a restored checkpoint, mid-epoch
        included). ``end_groups_every=N`` also ends a step group at every N-th step of an epoch,
        so batch callbacks (a checkpoint every N steps) see those steps. With an optimizer built
        with ``use_ema=True``, the model holds the moving averages from ``on_train_end`` on, as in
        Keras (a checkpoint of the last epoch's end was saved before, with the trained weights).
        """
        _check_validation_freq(validation_freq)
        check_dataset("validation_data", validation_data, optional=True)
        if not callable(train) and not isinstance(train, in_memory.Epoch):
            check_dataset("train", train)
        epoch_data = train if callable(train) else lambda epoch: train
        first = epoch_data(0)
        self.build(first)
        self.set_class_weight(class_weight)
        steps = steps_per_epoch(first)
        self.plan_steps(epochs * steps if steps is not None else None)
        self._advance(initial_state or LoopState(iterator=self.make_iterator(first)))
        history = keras.callbacks.History()  # first in the list: callbacks see this epoch in model.history
        history.history = self.state.history
        history.validation_freq = validation_freq  # which epochs Keras' shorter val_ lists belong to
        callbacks = keras.callbacks.CallbackList(
            [history, *progress.for_verbose(verbose), *(callbacks or [])],
            model=self.model,
            epochs=epochs,
            steps=steps,
            verbose=0,
        )
        self.model.stop_training = False
        callbacks.on_train_begin()
        logs: dict[str, float] = {}
        start_epoch = self.state.epoch
        while self.state.epoch < epochs and not self.model.stop_training:
            epoch = self.state.epoch
            callbacks.on_epoch_begin(epoch)
            logs = self._train_epoch(steps, callbacks, end_groups_every)
            if validation_data is not None and validates(epoch, validation_freq):
                logs.update({f"val_{k}": v for k, v in self.evaluate(validation_data, callbacks=callbacks).items()})
            # The next epoch's iterator is made now, so a checkpoint at the epoch's end holds its order.
            next_epoch = self.make_iterator(epoch_data(epoch + 1))
            self._advance(LoopState(epoch + 1, iterator=next_epoch, history=self.state.history))
            callbacks.on_epoch_end(epoch, logs)
        if self.state.epoch > start_epoch:
            self.optimizer.finalize_variable_values(self.model.trainable_variables)  # EMA weights, if any
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
            done, logs = int(done), floats(logs)
            if done == 0:
                break
            state.step += done
            state.seconds = time.perf_counter() - start
            callbacks.on_train_batch_end(state.step - 1, logs)
            if done < n:  # data of unknown length ran out
                break
        return {**(logs or floats(self.results())), "train_time": time.perf_counter() - start}

    def _group_size(self, step: int, steps: int | None, end_groups_every: int | None) -> int:
        """Steps in the next compiled call: at most ``steps_per_execution``,
        ending at the epoch's end and at the next multiple of ``end_groups_every``."""
        n = self.options.steps_per_execution
        if steps is not None:
            n = min(n, steps - step)
        if end_groups_every:
            n = min(n, end_groups_every - step % end_groups_every)
        return n

    def _advance(self, state: LoopState) -> None:
        """Continue from ``state``; the finished one's iterator is deleted off this thread."""
        finished, self.state = self.state, state
        if finished is not state:
            iterator, finished.iterator = finished.iterator, None  # a caller may still hold the state
            release.release_iterator(iterator)


def _check_validation_freq(validation_freq: int | Sequence[int]) -> None:
    if isinstance(validation_freq, bool) or not (
        (isinstance(validation_freq, int) and validation_freq >= 1)
        or (isinstance(validation_freq, (list, tuple)) and all(isinstance(e, int) and e >= 1 for e in validation_freq))
    ):
        raise ValueError(
            f"validation_freq must be a positive integer or a list of epochs (from 1), got {validation_freq!r}"
        )
