"""The ways to train that bench times in its own process (``names.IN_PROCESS``), each on the same
``Workload``: the same model, initial weights, batch size and optimizer.

    eager           the tutorial's loop as written (GradientTape per batch, eager)
    tf.function     the tutorial's step under @tf.function, one call per batch
    keras spe=1     model.fit
    keras spe=32    model.fit with steps_per_execution=32
    gradloop        Trainer.fit with gradloop train's defaults on in-memory data
    gradloop --jit  the same, always on XLA

TensorFlow and Keras are imported when a variant is built, not with this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gradloop.bench.names import TRAIN_EPOCHS
from gradloop.bench.workload import Workload, keras_loss

if TYPE_CHECKING:
    import keras
    import tensorflow as tf


@dataclass(frozen=True)
class Variant:
    """One way to train: ``run(data)`` trains ``model`` on every batch of ``data``, made by
    ``data(work, steps)``: ``steps`` batches (a fresh iterator each call). The data is made once,
    outside the timing, as the tutorial builds its own: building it (tensors and a traced function)
    is set-up, not training."""

    run: Callable[[Any], object]
    model: keras.Model
    data: Callable[[Workload, int], Any] = Workload.dataset


def tutorial_loop(work: Workload, compiled: bool) -> Variant:
    """The tutorial's loop, verbatim in spirit: eager, or with the step under tf.function."""
    import keras
    import tensorflow as tf

    model, optimizer, loss_fn = work.model(), keras.optimizers.Adam(work.lr), keras_loss()
    train_acc = keras.metrics.Accuracy()

    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = loss_fn(y, logits)
        grads = tape.gradient(loss, model.trainable_weights)
        optimizer.apply_gradients(zip(grads, model.trainable_weights))
        train_acc.update_state(y, tf.argmax(logits, axis=1))
        return loss

    step = tf.function(step) if compiled else step

    def run(dataset: tf.data.Dataset) -> None:
        for x, y in dataset:
            step(x, y)
        train_acc.result().numpy()
        train_acc.reset_state()

    return Variant(run, model)


def keras_fit(work: Workload, steps_per_execution: int) -> Variant:
    """Keras ``model.fit`` on the dataset, ``steps_per_execution`` steps per compiled call."""
    import keras

    model = work.model()
    model.compile(
        optimizer=keras.optimizers.Adam(work.lr),
        loss=keras_loss(),
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    return Variant(lambda dataset: model.fit(dataset, epochs=1, verbose=0, shuffle=False), model)


def gradloop_fit(work: Workload, *, jit_compile: bool | None = None) -> Variant:
    """``gradloop train``'s loop on in-memory data (:class:`gradloop.InMemory`: step groups gathering their
    batches by index; fused optimizer kernels). ``jit_compile=None``: on XLA where ``gradloop train``'s default
    would put a run of ``TRAIN_EPOCHS`` epochs of this data (``CompileOptions.planned_steps``), though a timed
    run is far shorter."""
    import keras

    from gradloop import CompileOptions, Trainer

    options = CompileOptions(jit_compile=jit_compile, planned_steps=TRAIN_EPOCHS * work.in_memory.steps)
    model = work.model()
    trainer = Trainer(
        model, optimizer=keras.optimizers.Adam(work.lr), loss=keras_loss(), metrics=["accuracy"], options=options
    )
    return Variant(lambda data: trainer.fit(data[0], epochs=data[1], verbose=0), model, data=Workload.in_memory_epochs)


def build_variant(name: str, work: Workload) -> Variant:
    """The variant called ``name`` (one of ``names.IN_PROCESS``), built on ``work``'s model and data."""
    return {
        "eager": lambda: tutorial_loop(work, compiled=False),
        "tf.function": lambda: tutorial_loop(work, compiled=True),
        "keras spe=1": lambda: keras_fit(work, 1),
        "keras spe=32": lambda: keras_fit(work, 32),
        "gradloop": lambda: gradloop_fit(work),
        "gradloop --jit": lambda: gradloop_fit(work, jit_compile=True),
    }[name]()
