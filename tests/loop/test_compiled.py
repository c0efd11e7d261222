"""What a step works with: the checked parts, the loss it computes, the functions compiled once."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradloop import InMemory, Trainer
from gradloop.loop.compiled import CompiledModel, CompileOptions
from gradloop.loop.xla import XLA_AUTO_MIN_STEPS

DIM, CLASSES = 4, 3


def parts(model=None, **kwargs) -> CompiledModel:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((DIM,))
    model = model or keras.Model(
        inputs, keras.layers.Dense(CLASSES, kernel_regularizer=keras.regularizers.L2(0.5))(inputs)
    )
    return CompiledModel(
        model,
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **kwargs,
    )


def test_a_model_that_is_not_keras_is_refused_with_its_type():
    with pytest.raises(TypeError, match="model must be a keras.Model, got function"):
        CompiledModel(lambda x: x, optimizer="adam", loss="mse")


def test_the_loss_is_the_batch_mean_plus_the_regularisation_penalty():
    compiled = parts()
    y = tf.constant([0, 2, 1, 2], tf.int64)
    logits = tf.constant(np.arange(12, dtype="float32").reshape(4, 3) / 7)
    per_sample = -np.log(tf.nn.softmax(logits).numpy())[np.arange(4), y.numpy()]
    compiled.model(tf.zeros((1, DIM)))  # the regulariser's penalty exists once the layer is built
    penalty = 0.5 * float(tf.reduce_sum(tf.square(compiled.model.layers[-1].kernel)))
    assert penalty > 0
    assert float(compiled.compute_loss(y, logits)) == pytest.approx(per_sample.mean() + penalty, rel=1e-6)


def test_accuracy_follows_the_loss_and_results_restart_on_reset():
    compiled = parts()
    compiled.build(tf.data.Dataset.from_tensor_slices((np.ones((2, DIM), "float32"), np.zeros(2, "int64"))).batch(2))
    # Sparse labels against class scores: the sparse categorical accuracy (equality of y and y_pred would give 0).
    compiled.update_metrics(tf.constant(3.0), tf.constant([0, 1]), tf.constant([[1.0, 0, 0], [1.0, 0, 0]]))
    assert {k: float(v) for k, v in compiled.results().items()} == {"loss": 3.0, "accuracy": 0.5}
    assert compiled.metric_names == ["accuracy"]
    compiled.reset_metrics()
    assert {k: float(v) for k, v in compiled.results().items()} == {"loss": 0.0, "accuracy": 0.0}


def test_build_makes_the_variables_and_the_compiled_functions_once():
    compiled = parts()
    data = tf.data.Dataset.from_tensor_slices((np.ones((8, DIM), "float32"), np.zeros(8, "int64"))).batch(4)
    compiled.build(data)
    train_fn, test_fn = compiled._train_fn, compiled._test_fn
    assert compiled.model.built and compiled.optimizer.built
    compiled.build(data)
    assert compiled._train_fn is train_fn and compiled._test_fn is test_fn
    done, results = compiled._train_fn(compiled.make_iterator(data), tf.constant(5))
    assert int(done) == 2 and float(compiled.loss_tracker.count) == 8 and set(results) == {"loss", "accuracy"}
    assert results["loss"].dtype == tf.float32 and compiled.loss_tracker.dtype == "float64"  # float64 sums
    assert float(results["loss"]) == float(np.float32(compiled.loss_tracker.result())) > 0


@pytest.mark.parametrize(
    "planned, on_xla", [(XLA_AUTO_MIN_STEPS, True), (XLA_AUTO_MIN_STEPS - 1, False), (None, False)]
)
def test_planned_steps_is_the_fit_length_the_xla_default_decides_for(planned, on_xla):
    # A 2-step fit: only planned_steps makes it count as a fit long enough for XLA.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((DIM,))
    model = keras.Model(inputs, keras.layers.Dense(CLASSES)(inputs))
    trainer = Trainer(
        model,
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        options=CompileOptions(planned_steps=planned),
    )
    x, y = np.random.default_rng(0).normal(size=(8, DIM)).astype("float32"), np.arange(8) % CLASSES
    history = trainer.fit(InMemory(x, y, batch_size=4, seed=1), epochs=1, verbose=0).history
    assert trainer._xla_groups is on_xla and len(history["loss"]) == 1


@pytest.mark.parametrize("planned", [0, -3, 2.5, True, "1536"])
def test_planned_steps_must_be_none_or_a_positive_integer(planned):
    with pytest.raises(ValueError, match=f"planned_steps must be None .* or an integer >= 1, got {planned!r}"):
        CompileOptions(planned_steps=planned)
