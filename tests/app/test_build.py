"""From a config to what a run trains with: the model sized from the data, the loss, metrics and optimizer by name."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradloop import Trainer
from gradloop.app import assemble, models
from gradloop.app.config import TrainConfig
from gradloop.app.specs import model_spec
from gradloop.data.examples import ArrayExamples
from gradloop.data.sources.prepared import RunData
from gradloop.errors import ConfigError


def run_data(x: np.ndarray, y: np.ndarray, class_names=("a", "b", "c")) -> RunData:
    return RunData(
        train=ArrayExamples(x, y),
        val=None,
        test=None,
        kind="arrays",
        description="made here",
        task="classification" if class_names else "regression",
        class_names=class_names,
        source_class_names=class_names,
        fingerprint={},
        preprocessing={},
    )


def shape_of(data: RunData) -> tuple:
    return data.train.element_shape, data.n_outputs


IMAGES = run_data(np.zeros((4, 12, 10, 3), np.float32), np.arange(4) % 3)
TABLE = run_data(np.zeros((4, 7), np.float32), np.arange(4) % 3)
TARGETS = run_data(np.zeros((4, 7), np.float32), np.zeros((4, 2), np.float32), class_names=None)


def test_the_built_in_models_are_sized_from_the_data():
    mlp = models.build_model(model_spec(TrainConfig(data="x.npz", hidden=(8,))), *shape_of(IMAGES))
    assert (mlp.input_shape, mlp.output_shape) == ((None, 12, 10, 3), (None, 3))  # images flattened inside
    cnn = models.build_model(model_spec(TrainConfig(data="x.npz", model="cnn")), *shape_of(IMAGES))
    assert (cnn.input_shape, cnn.output_shape) == ((None, 12, 10, 3), (None, 3))
    regression = models.build_model(
        model_spec(TrainConfig(data="x.npz", hidden=(8,))), *shape_of(TARGETS), task="regression"
    )
    assert regression.output_shape == (None, 2)  # one output per target column
    with pytest.raises(ConfigError, match=r"--model cnn takes images .* examples of shape \(7,\)"):
        models.build_model(model_spec(TrainConfig(data="x.npz", model="cnn")), *shape_of(TABLE))
    tiny = run_data(np.zeros((4, 6, 5, 1), np.float32), np.arange(4) % 3)
    with pytest.raises(ConfigError, match="needs images of at least 10x10 pixels, but the data's are 6x5"):
        models.build_model(model_spec(TrainConfig(data="x.npz", model="cnn")), *shape_of(tiny))
    wide = run_data(np.zeros((2, 100_000), np.float32), np.arange(2))
    with pytest.raises(ConfigError, match="makes an MLP of 2,000,"):
        models.build_model(model_spec(TrainConfig(data="x.npz", hidden=(20_000, 10))), *shape_of(wide))


def test_the_loss_follows_the_task_and_reads_logits_unless_the_model_ends_in_a_softmax():
    logits = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)])
    probabilities = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, activation="softmax")])
    y, scores = np.array([0, 2]), np.array([[2.0, 1.0, 0.1], [0.2, 0.3, 3.0]], np.float32)
    default = assemble.build_loss(TrainConfig(), "classification", logits)
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, scores)
    assert float(default(y, scores)) == pytest.approx(float(expected))
    named = assemble.build_loss(TrainConfig(loss="sparse_categorical_crossentropy"), "classification", probabilities)
    assert named.get_config()["from_logits"] is False
    mse = assemble.build_loss(TrainConfig(), "regression", logits)
    assert float(mse(np.array([[1.0]]), np.array([[3.0]]))) == pytest.approx(4.0)
    assert isinstance(assemble.build_loss(TrainConfig(loss="huber"), "regression", logits), keras.losses.Loss)


def test_metrics_and_optimizer_by_name():
    assert assemble.build_metrics(TrainConfig(), "classification") == ["accuracy"]
    assert assemble.build_metrics(TrainConfig(), "regression") == ["mae"]
    # "mae" by name, as Keras compiles it: named as given in the history.
    trainer = Trainer(
        keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]),
        optimizer="sgd",
        loss="mse",
        metrics=assemble.build_metrics(TrainConfig(), "regression"),
    )
    trainer.build(tf.data.Dataset.from_tensor_slices((np.ones((2, 1), "float32"), np.ones((2, 1), "float32"))).batch(2))
    trainer.update_metrics(tf.constant(0.0), tf.constant([[1.0], [2.0]]), tf.constant([[2.0], [4.0]]))
    assert {k: float(v) for k, v in trainer.results().items() if k != "loss"} == {"mae": pytest.approx(1.5)}
    sgd = assemble.build_optimizer(TrainConfig(optimizer="sgd", lr=0.5, clip_norm=1.0), steps_per_epoch=10)
    assert isinstance(sgd, keras.optimizers.SGD) and float(sgd.learning_rate) == 0.5 and sgd.global_clipnorm == 1.0
    with pytest.raises(ConfigError, match="--optimizer adamx is not a Keras optimizer"):
        assemble.build_optimizer(TrainConfig(optimizer="adamx"), steps_per_epoch=10)


@pytest.mark.parametrize(("jit", "expected"), [(False, None), (True, True)])
def test_without_jit_the_trainer_takes_the_librarys_xla_default(jit, expected):
    config = TrainConfig(data="x.npz", hidden=(8,), jit_compile=jit)
    trainer = assemble.build_trainer(config, tf.distribute.get_strategy(), TABLE, None, 1)
    assert trainer.options.jit_compile is expected  # None: XLA for long in-memory runs without convolutions
