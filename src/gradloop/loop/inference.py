"""Evaluation and prediction: a compiled model run over data without training it.

    for each group of steps_per_execution batches (one compiled call):
        evaluate: forward pass, loss, metrics     predict: forward pass, outputs kept
    callbacks' on_test_* / on_predict_* hooks around them, as model.evaluate / model.predict call them

:class:`gradloop.loop.trainer.Trainer` adds training; both run the compiled functions
of :class:`gradloop.loop.compiled.CompiledModel`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from gradloop.loop import in_memory, release
from gradloop.loop.compiled import CompiledModel

Callbacks = Iterable[keras.callbacks.Callback] | keras.callbacks.CallbackList | None


class InferenceModel(CompiledModel):
    """A :class:`~gradloop.loop.compiled.CompiledModel` that evaluates and predicts, as Keras' ``evaluate``
    and ``predict``."""

    def evaluate(self, data: tf.data.Dataset, *, callbacks: Callbacks = None) -> dict[str, float]:
        """Loss (mean over every sample of ``data``) and metrics, in inference mode.

        ``callbacks`` get ``on_test_begin``, ``on_test_batch_begin/end`` (once per compiled
        call) and ``on_test_end(logs)``, as in ``model.evaluate``."""
        check_dataset("data", data)
        self.build(data)
        callbacks = self._callback_list(callbacks, data)
        self.reset_metrics()
        callbacks.on_test_begin()
        groups = self._run_groups(
            self._test_fn, data, callbacks.on_test_batch_begin, callbacks.on_test_batch_end, floats
        )
        logs = groups[-1] if groups else floats(self.results())
        callbacks.on_test_end(logs)
        return logs

    def predict(self, data: Any, *, batch_size: int = 32, callbacks: Callbacks = None) -> Any:
        """The model's outputs for every example of ``data``, in order, as numpy (``model.predict``).

        ``data``: a ``tf.data.Dataset`` of batches (``x``, or ``(x, y)`` whose ``y`` is
        ignored), or arrays (a dict or tuple of them for several inputs), batched by
        ``batch_size``. Runs ``steps_per_execution`` batches per compiled call; ``callbacks``
        get ``on_predict_begin``, ``on_predict_batch_begin/end`` and ``on_predict_end``."""
        if not isinstance(data, tf.data.Dataset):  # a tuple of arrays is several inputs, not (x, y)
            data = tf.data.Dataset.from_tensor_slices((data,)).batch(batch_size)
        self.build(data)
        callbacks = self._callback_list(callbacks, data)
        callbacks.on_predict_begin()
        pack = functools.partial(tf.nest.pack_sequence_as, self._outputs)
        pieces = self._run_groups(
            self._predict_fn,
            data,
            callbacks.on_predict_batch_begin,
            lambda step, arrays: callbacks.on_predict_batch_end(step, {"outputs": pack(arrays)}),
            lambda outputs: [o.numpy() for o in outputs],
        )
        callbacks.on_predict_end()
        if not pieces:
            raise ValueError("predict: the data holds no batches; give it at least one example")
        return pack([np.concatenate(parts) for parts in zip(*pieces)])

    def _run_groups(self, function, data: tf.data.Dataset, begin: Callable, end: Callable, read: Callable) -> list:
        """``function`` (a compiled test or predict function) over all of ``data``, a group of
        ``steps_per_execution`` steps per call, ``begin(first step)`` and ``end(last step, results)``
        around each; returns each group's ``read(outputs)``."""
        iterator = self.make_iterator(data)
        group, step, results = self.options.steps_per_execution, 0, []
        try:
            while True:
                begin(step)
                done, outputs = function(iterator, tf.constant(group, tf.int32))
                done = int(done)
                if done:
                    step += done
                    results.append(read(outputs))
                    end(step - 1, results[-1])
                if done < group:
                    return results
        finally:
            release.release_iterator(iterator)

    def _callback_list(self, callbacks: Callbacks, data: tf.data.Dataset) -> keras.callbacks.CallbackList:
        if isinstance(callbacks, keras.callbacks.CallbackList):
            return callbacks
        return keras.callbacks.CallbackList(
            list(callbacks or []), model=self.model, steps=steps_per_epoch(data), verbose=0
        )


def check_dataset(name: str, data: Any, *, optional: bool = False) -> None:
    if not isinstance(data, tf.data.Dataset) and not (optional and data is None):
        raise TypeError(
            f"{name} must be a tf.data.Dataset of batches, got {type(data).__name__}; for arrays, pass "
            "gradloop.InMemory(x, y, batch_size=32) to fit, or tf.data.Dataset.from_tensor_slices((x, y)).batch(32)"
        )


def floats(results: dict[str, tf.Tensor]) -> dict[str, float]:
    return {name: float(value) for name, value in results.items()}


def steps_per_epoch(data: tf.data.Dataset | in_memory.Epoch) -> int | None:
    if isinstance(data, in_memory.Epoch):
        return data.steps
    n = int(data.cardinality())
    return n if n >= 0 else None  # INFINITE (-1) and UNKNOWN (-2): run until the data ends
