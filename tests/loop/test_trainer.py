"""The loop's arithmetic: epoch means, resets, moving weights, Keras parity."""

from __future__ import annotations

import threading
import time
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradloop import CompileOptions, Trainer

N, DIM, CLASSES = 100, 8, 3


def toy_data(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, DIM)).astype("float32")
    y = np.argmax(x[:, :CLASSES], axis=1).astype("int64")  # learnable: the largest of the first 3 features
    return x, y


def batches(x, y, batch_size=32) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


def toy_model(seed: int = 0, **dense_kwargs) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((DIM,))
    hidden = keras.layers.Dense(16, activation="relu", **dense_kwargs)(inputs)
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(hidden))


def make_trainer(model, optimizer=None, **kwargs) -> Trainer:
    return Trainer(
        model,
        optimizer=optimizer or keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **kwargs,
    )


def full_loss(model, x, y) -> float:
    logits = model(x, training=False)
    return float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits))


def test_epoch_loss_is_the_mean_over_all_samples_including_the_partial_batch():
    x, y = toy_data()  # 100 samples in batches of 32: the last batch holds 4
    model = toy_model()
    trainer = make_trainer(model, keras.optimizers.SGD(0.0))  # weights stay put
    history = trainer.fit(batches(x, y), validation_data=batches(x[:50], y[:50], 7), epochs=2).history
    assert history["loss"] == pytest.approx([full_loss(model, x, y)] * 2, rel=1e-5)
    assert history["val_loss"] == pytest.approx([full_loss(model, x[:50], y[:50])] * 2, rel=1e-5)
    expected_acc = float(np.mean(np.argmax(model(x), axis=1) == y))
    assert history["accuracy"] == pytest.approx([expected_acc] * 2)


def test_the_epoch_loss_is_not_the_last_batch_loss():
    x, y = toy_data()
    model = toy_model()
    trainer = make_trainer(model, keras.optimizers.SGD(0.0))
    last_batch = full_loss(model, x[96:], y[96:])
    loss = trainer.fit(batches(x, y), epochs=1).history["loss"][0]
    assert loss != pytest.approx(last_batch, rel=1e-3)


def test_metrics_restart_every_epoch():
    x, y = toy_data()
    trainer = make_trainer(toy_model())
    trainer.fit(batches(x, y), epochs=3)
    # Mean keeps a weighted count: one epoch's worth of samples, not three.
    assert float(trainer.loss_tracker.count) == N
    accuracy_count = next(v for v in trainer.metrics[0].variables if v.name == "count")
    assert float(accuracy_count) == N


def test_weights_move_and_the_loss_falls():
    x, y = toy_data(400)
    model = toy_model()
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = make_trainer(model).fit(batches(x, y), epochs=8).history
    assert len(before) == len(model.trainable_weights) > 0
    assert all(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights))
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["accuracy"][-1] > 0.9


@pytest.mark.parametrize(("fused", "atol"), [(False, 1e-6), (True, 1e-5)])
def test_matches_keras_fit_on_the_same_weights_and_data_order(fused, atol):
    """Keras' own update: the same numbers; TF's fused Adam kernel: float32 rounding apart."""
    x, y = toy_data(200)
    ours, theirs = toy_model(seed=3), toy_model(seed=3)
    ds = batches(x, y, 16)
    options = CompileOptions(fused_optimizer=fused)
    trainer = make_trainer(ours, keras.optimizers.Adam(1e-2), options=options)
    history = trainer.fit(ds, validation_data=ds, epochs=3).history
    theirs.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    reference = theirs.fit(ds, validation_data=ds, epochs=3, verbose=0).history
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert history[key] == pytest.approx(reference[key], rel=1e-4, abs=atol), key
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("steps_per_execution", [1, 3, 1000])
def test_fused_steps_give_the_same_numbers_as_single_steps(steps_per_execution):
    x, y = toy_data()
    single, fused = toy_model(seed=1), toy_model(seed=1)
    h1 = make_trainer(single, options=CompileOptions(steps_per_execution=1)).fit(batches(x, y), epochs=2).history
    h2 = (
        make_trainer(fused, options=CompileOptions(steps_per_execution=steps_per_execution))
        .fit(batches(x, y), epochs=2)
        .history
    )
    assert h1["loss"] == pytest.approx(h2["loss"], rel=1e-6)
    for a, b in zip(single.get_weights(), fused.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_compiled_once_despite_the_smaller_last_batch():
    x, y = toy_data()
    trainer = make_trainer(toy_model(), options=CompileOptions(steps_per_execution=2))
    trainer.fit(batches(x, y), validation_data=batches(x, y, 30), epochs=3)
    assert trainer._train_fn.experimental_get_tracing_count() == 1
    assert trainer._test_fn.experimental_get_tracing_count() == 1


def test_a_custom_step_runs_once_per_batch_and_its_loss_is_reported():
    x, y = toy_data()
    calls = tf.Variable(0)

    def penalised_step(trainer, xb, yb):
        with tf.GradientTape() as tape:
            logits = trainer.model(xb, training=True)
            loss = trainer.compute_loss(yb, logits) + 10.0  # a constant penalty shows in the loss
        grads = tape.gradient(loss, trainer.model.trainable_variables)
        trainer.optimizer.apply_gradients(zip(grads, trainer.model.trainable_variables))
        calls.assign_add(1)
        return loss, logits

    model = toy_model()
    trainer = make_trainer(model, keras.optimizers.SGD(0.0), train_step=penalised_step)
    history = trainer.fit(batches(x, y), epochs=2).history
    assert int(calls.numpy()) == 2 * 4  # 4 batches per epoch
    assert history["loss"][0] == pytest.approx(full_loss(model, x, y) + 10.0, rel=1e-5)


def test_regularisation_losses_are_added():
    x, y = toy_data()
    model = toy_model(kernel_regularizer=keras.regularizers.L2(0.1))
    trainer = make_trainer(model, keras.optimizers.SGD(0.0))
    loss = trainer.fit(batches(x, y), epochs=1).history["loss"][0]
    penalty = float(tf.add_n(model.losses))
    assert penalty > 0
    assert loss == pytest.approx(full_loss(model, x, y) + penalty, rel=1e-5)


def test_data_of_unknown_length_runs_to_its_end():
    x, y = toy_data()
    ds = batches(x, y).filter(lambda xb, yb: True)  # cardinality UNKNOWN
    assert int(ds.cardinality()) == tf.data.UNKNOWN_CARDINALITY
    trainer = make_trainer(toy_model(), options=CompileOptions(steps_per_execution=3))
    trainer.fit(ds, epochs=2)
    assert float(trainer.loss_tracker.count) == N


def test_a_cnn_on_images_trains():
    rng = np.random.default_rng(0)
    x = rng.random((64, 28, 28, 1), dtype=np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype("int64")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    history = make_trainer(model).fit(batches(x, y, 16), validation_data=batches(x, y, 16), epochs=2).history
    assert set(history) >= {"loss", "accuracy", "val_loss", "val_accuracy", "train_time"}
    assert all(t > 0 for t in history["train_time"])


def test_keras_early_stopping_stops_the_loop():
    x, y = toy_data()
    trainer = make_trainer(toy_model(), keras.optimizers.SGD(0.0))
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=1)
    history = trainer.fit(batches(x, y), epochs=10, callbacks=[stop]).history
    assert len(history["loss"]) == 2  # no improvement after epoch 1, patience 1


def test_callbacks_see_one_batch_end_per_compiled_call():
    x, y = toy_data()
    seen = []
    cb = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(batch))
    make_trainer(toy_model(), options=CompileOptions(steps_per_execution=3)).fit(
        batches(x, y), epochs=1, callbacks=[cb]
    )
    assert seen == [2, 3]  # steps 0-2 in one call, step 3 (the partial batch) in the next


def test_evaluate_is_the_mean_over_the_whole_set():
    x, y = toy_data()
    model = toy_model()
    result = make_trainer(model).evaluate(batches(x, y, 33))
    assert result["loss"] == pytest.approx(full_loss(model, x, y), rel=1e-5)


def test_finished_iterators_are_deleted_off_the_training_thread():
    # Deleting an autotuned tf.data iterator can wait seconds (see gradloop.loop.release).
    x, y = toy_data()
    trainer = make_trainer(toy_model())
    deleted_on, made = [], []
    make_iterator = trainer.make_iterator

    def tracked(data):
        iterator = make_iterator(data)
        made.append(weakref.finalize(iterator, lambda: deleted_on.append(threading.current_thread().name)))
        return iterator

    trainer.make_iterator = tracked
    user_pipeline = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(N).batch(32).prefetch(tf.data.AUTOTUNE)
    trainer.fit(user_pipeline, validation_data=batches(x, y), epochs=3)
    assert len(made) == 7  # the first epoch's, then per epoch the validation's and the next epoch's
    deadline = time.monotonic() + 60
    while len(deleted_on) < 6 and time.monotonic() < deadline:  # the last one is trainer.state's
        time.sleep(0.05)
    assert deleted_on == ["gradloop-release"] * 6
    assert made[-1].alive and trainer.state.iterator is not None
