"""The step, wrapped for compilation: for one batch, for a group of steps in one call, under ``strategy.run``.

The step (:mod:`gradloop.loop.step`) is written once; these functions wrap it, the Keras way
(``one_step_on_data``, ``multi_step_on_iterator``):

    one_step(x, y, w)           class weights, the step, the metrics             (make_one_step)
    run(iterator, num_steps)    up to num_steps of them in one tf.function call  (make_multi_step)
    run(position, num_steps)    the same on in-memory data, batches gathered by
                                index, the group one XLA computation             (make_in_memory_steps)
    run(iterator, num_steps)    the forward pass, outputs concatenated           (make_predict_steps)

Under a distribution strategy the one step runs through ``strategy.run``; XLA wraps the one step
(on a dataset) or the whole group (in memory), as :mod:`gradloop.loop.xla` decides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import keras
import tensorflow as tf

from gradloop.loop import distribute, in_memory, xla
from gradloop.loop import step as step_lib

# run(iterator, num_steps) -> (steps done, {metric name: running result})
MultiStepFn = Callable[[Any, tf.Tensor], "tuple[tf.Tensor, dict[str, tf.Tensor]]"]
Results = Callable[[], "dict[str, tf.Tensor]"]
UpdateMetrics = Callable[..., None]


def make_one_step(
    step_fn: step_lib.StepFn,
    trainer: step_lib.StepContext,
    update_metrics: UpdateMetrics,
    class_weight: Mapping[int, float] | None = None,
) -> Callable[[Any, Any, Any], None]:
    """``one_step(x, y, sample_weight)``: the step, then the metrics; class weights applied first."""
    weigh = None if class_weight is None else class_weights(class_weight)

    def one_step(x: Any, y: Any, sample_weight: Any) -> None:
        if weigh is not None:  # on each replica's part of the batch, its own labels
            sample_weight = weigh(y, sample_weight)
        loss, y_pred = step_lib.call_step(step_fn, trainer, x, y, sample_weight)
        update_metrics(loss, y, y_pred, sample_weight, x=x)

    return one_step


def make_multi_step(
    one_step: Callable, results: Results, *, jit_compile: bool | None, strategy: tf.distribute.Strategy
) -> MultiStepFn:
    """Build ``run(iterator, num_steps) -> (steps_done, metric results)``, compiled once.

        for _ in range(num_steps):
            x, y, sample_weight = next(iterator)  # stop early when the epoch's data runs out
            one_step(x, y, sample_weight)         # the step, then the metrics
        return steps done, results()

    ``num_steps`` must be a tensor: a Python int would retrace per value. An
    epoch with a smaller last batch has an unknown batch dimension in its
    element spec, so that batch runs through the same trace. The results come back with
    the count, so reporting them costs no further call per group of steps.
    """
    if jit_compile:
        one_step = tf.function(one_step, jit_compile=True)
    if distribute.is_distributed(strategy):
        replica_step = one_step
        one_step = lambda x, y, w: strategy.run(replica_step, args=(x, y, w))  # noqa: E731

    def train_on(batch: Any, done: tf.Tensor, carry: tuple) -> tuple:
        one_step(*keras.utils.unpack_x_y_sample_weight(batch))
        return carry

    @tf.function
    def run(iterator, num_steps: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        done, _ = for_batches(iterator, num_steps, train_on, ())
        return done, results()

    return run


def make_in_memory_steps(
    one_step: Callable, results: Results, *, jit_compile: bool | None, xla_groups: Callable[[], bool]
) -> Callable:
    """``run(position, num_steps) -> (steps done, metric results)`` on in-memory data, the
    TensorFlow counterpart of a ``jax.lax.scan`` over steps:

        for i in range(num_steps):     # one compiled call; XLA compiles it whole
            x, y, w = gather batch (first + i) of the epoch's order from the tensors
            one_step(x, y, w)

    A batch's shape is static (XLA compiles one shape), so the full batches run in one
    call and a partial last batch in a call compiled for its size (under the default, on the
    graph). ``xla_groups()`` is the fit's decision (:func:`gradloop.loop.xla.xla_by_default`);
    without XLA (``jit_compile=False``, or XLA failing to compile a group under the default)
    the same function runs on the graph.
    """
    xla_refused = False
    groups: dict[tuple[int, int, bool], Callable] = {}

    def group(batch_size: int, size: int, on_xla: bool) -> Callable:
        """The compiled steps over batches of ``size`` rows (``batch_size`` but in a partial last batch)."""
        if (batch_size, size, on_xla) not in groups:

            def steps(tensors: Any, order: tf.Tensor, first: tf.Tensor, num_steps: tf.Tensor) -> dict[str, tf.Tensor]:
                step = first
                while step < first + num_steps:  # not tf.range: XLA would compile once per count
                    batch = in_memory.gather_batch(tensors, order, step, batch_size, size)
                    one_step(*keras.utils.unpack_x_y_sample_weight(batch))
                    step += 1
                return results()

            groups[batch_size, size, on_xla] = tf.function(steps, jit_compile=on_xla)
        return groups[batch_size, size, on_xla]

    def call(size: int, position: in_memory.Position, num_steps: int) -> dict[str, tf.Tensor]:
        nonlocal xla_refused
        epoch = position.epoch
        b = epoch.data.batch_size
        args = (epoch.data.tensors, epoch.order, tf.constant(position.step, tf.int32), tf.constant(num_steps, tf.int32))
        if xla_refused or not xla.group_on_xla(jit_compile, xla_groups(), partial=size != b):
            return group(b, size, False)(*args)
        try:
            return group(b, size, True)(*args)
        except xla.XLA_ERRORS as exc:
            if not xla.falls_back(exc, jit_compile):
                raise
            xla_refused = True  # nothing ran: XLA refuses to compile before the first step
            return group(b, size, False)(*args)

    def run(position: in_memory.Position, num_steps: int) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        epoch, last, done = position.epoch, None, 0
        b = epoch.data.batch_size
        full = min(position.step + num_steps, epoch.stop, epoch.data.n // b) - position.step  # steps of whole batches
        if full > 0:
            last = call(b, position, full)
            position.step += full
            done += full
        if done < num_steps and position.step < epoch.stop:  # the epoch's partial last batch
            last = call(epoch.batch_size_at(position.step), position, 1)
            position.step += 1
            done += 1
        return tf.constant(done), last if last is not None else results()

    run.experimental_get_tracing_count = lambda: sum(g.experimental_get_tracing_count() for g in groups.values())
    return run


def make_predict_steps(
    model: keras.Model, outputs: Any, *, jit_compile: bool | None, strategy: tf.distribute.Strategy
) -> Callable[[Any, tf.Tensor], tuple[tf.Tensor, list[tf.Tensor]]]:
    """``run(iterator, num_steps) -> (steps done, [each output of those steps, concatenated])``;
    ``outputs``: the model's output structure of ``tf.TensorSpec`` (see ``CompiledModel.make_predict_function``)."""
    flat_specs = tf.nest.flatten(outputs)

    def one_step(x: Any) -> list[tf.Tensor]:
        return tf.nest.flatten(model(x, training=False))

    if jit_compile:
        one_step = tf.function(one_step, jit_compile=True)
    if distribute.is_distributed(strategy):
        replica_step = one_step

        def one_step(x: Any) -> list[tf.Tensor]:
            outputs = strategy.run(replica_step, args=(x,))
            return [tf.concat(strategy.experimental_local_results(o), axis=0) for o in outputs]

    def predict_on(batch: Any, done: tf.Tensor, arrays: list[tf.TensorArray]) -> list[tf.TensorArray]:
        x, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
        return [a.write(done, o) for a, o in zip(arrays, one_step(x))]

    @tf.function
    def run(iterator, num_steps: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor]]:
        arrays = [
            tf.TensorArray(s.dtype, size=0, dynamic_size=True, infer_shape=False, element_shape=s.shape)
            for s in flat_specs
        ]
        done, arrays = for_batches(iterator, num_steps, predict_on, arrays)
        return done, [a.concat() for a in arrays]

    return run


def for_batches(iterator, num_steps: tf.Tensor, body: Callable, carry: Any) -> tuple[tf.Tensor, Any]:
    """In a compiled function: ``for each of up to num_steps batches: carry = body(batch, index, carry)``,
    stopping early when the iterator runs out; returns (batches done, carry)."""
    done = tf.constant(0, tf.int32)
    for _ in tf.range(num_steps):
        batch = iterator.get_next_as_optional()
        if not batch.has_value():
            break
        carry = body(batch.get_value(), done, carry)
        done += 1
    return done, carry


def class_weights(class_weight: Mapping[int, float]) -> Callable[[Any, Any], tf.Tensor]:
    """``(y, sample_weight) -> the weight of each sample's class``, read from ``y`` as Keras reads
    it: class indices, or one-hot rows (their argmax); a class without a weight weighs 1."""
    if not class_weight or min(class_weight) < 0:
        raise ValueError(f"class_weight must map class indices 0, 1, ... to weights, got {class_weight!r}")
    # One more entry, 1.0, for every class above the largest given.
    table = tf.constant([class_weight.get(c, 1.0) for c in range(max(class_weight) + 1)] + [1.0], tf.float32)

    def weigh(y: Any, sample_weight: Any) -> tf.Tensor:
        if sample_weight is not None:
            raise ValueError("the data has sample weights and class_weight was given: give one or the other")
        if tf.nest.is_nested(y):
            raise ValueError("class_weight works for a model with one output; give each sample a weight instead")
        if y.shape.rank >= 2 and y.shape[-1] != 1:
            classes = tf.argmax(y, axis=-1, output_type=tf.int32)
        else:
            classes = tf.cast(tf.round(tf.reshape(y, [-1]) if y.shape.rank >= 2 else y), tf.int32)
        return tf.gather(table, tf.clip_by_value(classes, 0, len(table) - 1))

    return weigh
