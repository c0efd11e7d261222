"""The fused kernels compute Keras' own update, and step aside where they cannot."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradloop.loop import optimizer_kernels


def train_three_steps(optimizer, fused: bool) -> list[np.ndarray]:
    keras.utils.set_random_seed(0)
    variables = [
        keras.Variable(np.random.default_rng(1).normal(size=(64, 32)).astype("float32")),
        keras.Variable(np.ones(32, "float32")),
    ]
    optimizer.build(variables)
    if fused:
        assert optimizer_kernels.use_fused_kernels(optimizer)

    @tf.function
    def step(k):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.sin(variables[0] * k)) + tf.reduce_sum(variables[1] ** 2 * k)
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))

    for k in (1.0, 2.0, 3.0):
        step(tf.constant(k))
    assert int(optimizer.iterations) == 3
    return [v.numpy() for v in variables]


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.optimizers.Adam(1e-2),
        lambda: keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(1e-2, 1, 0.5), beta_1=0.8),
        lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.1),
        lambda: keras.optimizers.Adam(1e-2, clipnorm=0.5),
        lambda: keras.optimizers.SGD(1e-2, momentum=0.9),
        lambda: keras.optimizers.SGD(1e-2, momentum=0.9, nesterov=True),
    ],
)
def test_fused_update_equals_keras_update(make):
    for fused, keras_ in zip(train_three_steps(make(), True), train_three_steps(make(), False)):
        np.testing.assert_allclose(fused, keras_, rtol=1e-5, atol=1e-6)
        assert not np.array_equal(fused, np.ones_like(fused))  # the update did something


@pytest.mark.parametrize(
    "optimizer",
    [
        keras.optimizers.Adam(amsgrad=True),
        keras.optimizers.SGD(0.1),
        keras.optimizers.RMSprop(),
        keras.optimizers.Adagrad(),
    ],
)
def test_other_optimizers_keep_their_own_update(optimizer):
    optimizer.build([keras.Variable(np.zeros(3, "float32"))])
    assert optimizer_kernels.use_fused_kernels(optimizer) is False
    assert "update_step" not in vars(optimizer)
