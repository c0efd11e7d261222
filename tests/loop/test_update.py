"""What the update does to the numbers: clipping, accumulation, loss scaling, mixed precision.

All of them run inside ``optimizer.apply_gradients`` (the step's one call to
update), around the fused Adam/SGD-momentum kernel where it applies; each test
says which update ran (``"update_step" in vars(optimizer)``: the fused one).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_trainer import CLASSES, DIM, batches, make_trainer, toy_data, toy_model

from gradloop import CompileOptions
from gradloop.app.assemble import build_optimizer
from gradloop.app.config import TrainConfig
from gradloop.app.models import build_model
from gradloop.app.specs import model_spec
from gradloop.loop.schedules import LinearWarmUp


def gradient(model, x, y) -> list[np.ndarray]:
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, model(x))
    return [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]


def uses_fused_kernel(optimizer) -> bool:
    return "update_step" in vars(getattr(optimizer, "inner_optimizer", optimizer))


@pytest.mark.parametrize("fused", [True, False])
def test_clipping_applies_the_clipped_gradient(fused):
    x, y = toy_data(32)
    model = toy_model(seed=4)
    w0, g = model.get_weights(), gradient(model, x, y)
    norm = float(np.sqrt(sum(np.sum(gi**2) for gi in g)))
    clip = norm / 4  # the clip is active: the gradient is 4 times too long
    trainer = make_trainer(
        model,
        keras.optimizers.SGD(0.1, momentum=0.9, global_clipnorm=clip),
        options=CompileOptions(fused_optimizer=fused),
    )
    trainer.fit(batches(x, y), epochs=1)  # one batch, one update
    assert uses_fused_kernel(trainer.optimizer) is fused
    for w, w_start, gi in zip(model.get_weights(), w0, g):
        np.testing.assert_allclose(w, w_start - 0.1 * gi * (clip / norm), rtol=1e-5, atol=1e-7)
    moved = np.sqrt(sum(np.sum((w - ws) ** 2) for w, ws in zip(model.get_weights(), w0)))
    assert moved == pytest.approx(0.1 * clip, rel=1e-5)  # the step's length is lr * clip_norm


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda **kw: keras.optimizers.Adam(1e-2, **kw),
        lambda **kw: keras.optimizers.SGD(0.1, momentum=0.9, **kw),
        lambda **kw: keras.optimizers.Adam(1e-2, global_clipnorm=0.05, **kw),  # clips the mean gradient
    ],
    ids=["adam", "sgd-momentum", "adam-clipped"],
)
def test_accumulating_4_batches_of_8_equals_batches_of_32(make_optimizer, fused):
    x, y = toy_data(64)
    small, big = toy_model(seed=6), toy_model(seed=6)
    w0 = small.get_weights()
    accumulating = make_trainer(
        small,
        make_optimizer(gradient_accumulation_steps=4),
        options=CompileOptions(steps_per_execution=1, fused_optimizer=fused),
    )
    snapshots = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: snapshots.append(small.get_weights())
    )
    accumulating.fit(batches(x, y, 8), epochs=1, callbacks=[record])  # 8 micro-batches: 2 updates
    make_trainer(big, make_optimizer(), options=CompileOptions(fused_optimizer=fused)).fit(batches(x, y, 32), epochs=1)

    assert uses_fused_kernel(accumulating.optimizer) is fused
    assert int(accumulating.optimizer.iterations) == 2  # updates, not micro-batches
    for k in (0, 1, 2):  # no update until the 4th micro-batch
        for w, w_start in zip(snapshots[k], w0):
            np.testing.assert_array_equal(w, w_start)
    assert not np.array_equal(snapshots[3][0], w0[0])
    for a, b in zip(small.get_weights(), big.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_default_step_scales_the_loss_and_the_update_unscales_it():
    """A LossScaleOptimizer around SGD on a float32 model: the loss is multiplied by
    2**15 before the gradient and the gradient divided by it after, both exact in
    float32, so the weights are bit-identical to plain SGD's. Had the step not
    called ``scale_loss``, every update would be 2**15 times too small."""
    x, y = toy_data()
    plain, scaled = toy_model(seed=8), toy_model(seed=8)
    make_trainer(plain, keras.optimizers.SGD(0.1)).fit(batches(x, y), epochs=2)
    optimizer = keras.mixed_precision.LossScaleOptimizer(keras.optimizers.SGD(0.1), dynamic_growth_steps=1000)
    make_trainer(scaled, optimizer).fit(batches(x, y), epochs=2)
    assert float(optimizer.dynamic_scale) == 2.0**15  # no overflow, no growth
    for a, b in zip(plain.get_weights(), scaled.get_weights()):
        np.testing.assert_array_equal(a, b)


def mixed_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((DIM,))
    hidden = keras.layers.Dense(16, activation="relu", dtype="mixed_float16")(inputs)
    return keras.Model(inputs, keras.layers.Dense(CLASSES, dtype="float32")(hidden))


@pytest.mark.parametrize("fused", [True, False])
def test_loss_scale_halves_on_overflow_skips_that_update_and_grows_after_finite_steps(fused):
    x, y = toy_data(96)
    x[:32] *= 1e5  # the first batch overflows float16 in the forward pass
    model = mixed_model()
    w0 = model.get_weights()
    optimizer = keras.mixed_precision.LossScaleOptimizer(
        keras.optimizers.Adam(1e-2), initial_scale=16.0, dynamic_growth_steps=2
    )
    trainer = make_trainer(model, optimizer, options=CompileOptions(steps_per_execution=1, fused_optimizer=fused))
    scales, weights = [], []

    def on_batch_end(batch, logs):
        scales.append(float(optimizer.dynamic_scale))
        weights.append(model.get_weights())

    trainer.fit(batches(x, y), epochs=1, callbacks=[keras.callbacks.LambdaCallback(on_train_batch_end=on_batch_end)])
    assert scales == [8.0, 8.0, 16.0]  # halved on overflow; doubled after 2 finite steps
    for w, w_start in zip(weights[0], w0):
        np.testing.assert_array_equal(w, w_start)  # the overflowing update was skipped
    assert int(optimizer.iterations) == 2
    assert not np.array_equal(weights[1][0], w0[0])
    # Loss scaling is outside the fused kernels' reach: the inner Adam keeps Keras' update either way.
    assert uses_fused_kernel(optimizer) is False


def test_mixed_float16_keeps_float32_variables_and_computes_in_float16():
    config = TrainConfig(hidden=(32,), precision="mixed_float16")
    model = build_model(model_spec(config), (DIM,), len(config.classes))
    hidden, logits = model.get_layer("dense_0"), model.get_layer("logits")
    assert (hidden.compute_dtype, hidden.variable_dtype, hidden.kernel.dtype) == ("float16", "float32", "float32")
    assert logits.compute_dtype == "float32"
    x, y = toy_data(64)
    assert hidden(tf.constant(x)).dtype == tf.float16 and model(x).dtype == tf.float32
    optimizer = build_optimizer(config, steps_per_epoch=2)
    assert isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)
    history = make_trainer(model, optimizer).fit(batches(x, y), epochs=2).history
    assert np.isfinite(history["loss"]).all()
    assert all(v.dtype == "float32" for v in model.trainable_variables)


def test_mixed_bfloat16_computes_in_bfloat16_without_loss_scaling():
    config = TrainConfig(hidden=(32,), precision="mixed_bfloat16")
    model = build_model(model_spec(config), (DIM,), len(config.classes))
    assert model.get_layer("dense_0").compute_dtype == "bfloat16"
    assert model.get_layer("dense_0").kernel.dtype == "float32"
    optimizer = build_optimizer(config, steps_per_epoch=2)
    assert isinstance(optimizer, keras.optimizers.Adam)  # bfloat16 has float32's range: no scaling needed
    x, y = toy_data(64)
    history = make_trainer(model, optimizer).fit(batches(x, y), epochs=3).history
    assert history["loss"][-1] < history["loss"][0]


def test_build_optimizer_maps_every_option_onto_keras():
    config = TrainConfig(
        lr=1e-3,
        epochs=2,
        lr_schedule="cosine",
        warmup_steps=5,
        clip_norm=1.0,
        accumulate_steps=4,
        precision="mixed_float16",
    )
    optimizer = build_optimizer(config, steps_per_epoch=10)
    inner = optimizer.inner_optimizer
    assert isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer) and isinstance(inner, keras.optimizers.Adam)
    assert (inner.global_clipnorm, inner.gradient_accumulation_steps) == (1.0, 4)
    schedule = inner._learning_rate
    assert isinstance(schedule, LinearWarmUp) and schedule.warmup_steps == 5
    assert schedule.after.decay_steps == 15 and schedule.after.initial_learning_rate == 1e-3  # 2 epochs x 10 - warm-up
    plain = build_optimizer(TrainConfig(), steps_per_epoch=10)
    assert isinstance(plain, keras.optimizers.Adam)
    assert (plain.global_clipnorm, plain.gradient_accumulation_steps) == (None, None)
    assert float(plain.learning_rate) == pytest.approx(1e-4)
