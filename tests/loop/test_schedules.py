"""Learning-rate schedules: the rate at step k is the formula's, in the schedule and in training."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_trainer import batches, make_trainer, toy_data, toy_model

from gradloop import CompileOptions
from gradloop.app.config import LR_SCHEDULES
from gradloop.loop.schedules import NAMES, LinearWarmUp, learning_rate

LR, W, D = 0.1, 5, 8


def formula(name: str, k: int, *, warmup: int = W, decay_steps: int = D, rate: float = 0.5) -> float:
    if k < warmup:
        return LR * (k + 1) / warmup
    t = k - warmup
    if name == "constant":
        return LR
    if name == "cosine":
        return 0.5 * LR * (1 + math.cos(math.pi * min(t, decay_steps) / decay_steps))
    if name == "exponential":
        return LR * rate ** (t / decay_steps)
    return LR * rate ** (t // decay_steps)  # step


@pytest.mark.parametrize("name", ["constant", "cosine", "exponential", "step"])
def test_the_rate_at_step_k_is_the_formula(name):
    schedule = learning_rate(name, LR, total_steps=100, warmup_steps=W, decay_steps=D, decay_rate=0.5)
    got = [float(schedule(k)) for k in range(30)]
    assert got == pytest.approx([formula(name, k) for k in range(30)], rel=1e-5, abs=1e-9)  # float32
    assert got[0] == pytest.approx(LR / W) and got[W - 1] == pytest.approx(LR)  # no step at rate 0, the peak at W-1


def test_defaults_decay_over_the_rest_of_training_or_per_epoch():
    cosine = learning_rate("cosine", LR, total_steps=25, warmup_steps=W, steps_per_epoch=10)
    assert float(cosine(W + 20)) == pytest.approx(0.0, abs=1e-9)  # reaches 0 at the last step
    assert float(cosine(W + 10)) == pytest.approx(LR / 2)
    exponential = learning_rate("exponential", LR, total_steps=100, decay_rate=0.9, steps_per_epoch=10)
    assert float(exponential(10)) == pytest.approx(LR * 0.9) and float(exponential(5)) == pytest.approx(LR * 0.9**0.5)
    assert learning_rate("constant", LR, total_steps=100) == LR  # a plain float: LearningRateScheduler can still set it


def test_warm_up_survives_keras_serialization():
    schedule = LinearWarmUp(keras.optimizers.schedules.CosineDecay(LR, D), W)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(again, LinearWarmUp)
    assert [float(again(k)) for k in range(20)] == pytest.approx([float(schedule(k)) for k in range(20)])
    constant = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(LinearWarmUp(LR, W)))
    assert float(constant(2)) == pytest.approx(LR * 3 / W)
    with pytest.raises(ValueError, match="warmup_steps"):
        LinearWarmUp(LR, 0)


@pytest.mark.parametrize("fused", [True, False])
def test_training_uses_the_scheduled_rate_at_every_step(fused):
    """SGD with momentum goes through the fused kernel (``fused=True``) or Keras' update; either way
    the first update is exactly -lr(0) * g, and the optimizer reads the schedule at each step."""
    x, y = toy_data(320)  # 10 steps
    model = toy_model(seed=2)
    w0 = model.get_weights()
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y[:32], model(x[:32]))
    g0 = [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]

    schedule = learning_rate("step", LR, total_steps=10, warmup_steps=W, decay_steps=2, decay_rate=0.5)
    trainer = make_trainer(
        model,
        keras.optimizers.SGD(schedule, momentum=0.9),
        options=CompileOptions(steps_per_execution=1, fused_optimizer=fused),
    )
    rates, first = [], []

    def on_batch_begin(batch, logs):
        rates.append(float(trainer.optimizer.learning_rate))

    def on_batch_end(batch, logs):
        if batch == 0:
            first.extend(model.get_weights())

    hooks = keras.callbacks.LambdaCallback(on_train_batch_begin=on_batch_begin, on_train_batch_end=on_batch_end)
    trainer.fit(batches(x, y), epochs=1, callbacks=[hooks])
    assert ("update_step" in vars(trainer.optimizer)) is fused  # which update ran
    assert rates == pytest.approx([formula("step", k, decay_steps=2) for k in range(10)], rel=1e-6)
    for w, w_start, g in zip(first, w0, g0):
        np.testing.assert_allclose(w, w_start - (LR / W) * g, rtol=1e-5, atol=1e-7)


def test_the_config_offers_exactly_the_schedules_there_are():
    assert LR_SCHEDULES == NAMES  # the config names them without importing Keras
