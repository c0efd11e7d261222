"""Standard keras.callbacks in Trainer.fit: each one does its job, checked with numbers."""

from __future__ import annotations

import csv

import keras
import numpy as np
import pytest
from tensorboard_events import read_scalars
from test_trainer import batches, make_trainer, toy_data, toy_model

from gradloop import CompileOptions


def weights_at_epoch_ends(model, store: list) -> keras.callbacks.Callback:
    return keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: store.append(model.get_weights()))


def assert_same_weights(a, b) -> None:
    assert len(a) == len(b)
    for wa, wb in zip(a, b):
        np.testing.assert_array_equal(wa, wb)


def test_learning_rate_scheduler_sets_the_rate_the_compiled_step_uses():
    x, y = toy_data()
    model = toy_model(seed=5)
    trainer = make_trainer(model, keras.optimizers.SGD(0.1), options=CompileOptions(steps_per_execution=3))
    rates, snapshots = [], []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs: rates.append(float(trainer.optimizer.learning_rate))
    )
    halve_then_stop = keras.callbacks.LearningRateScheduler(lambda epoch, lr: [0.1, 0.05, 0.0][epoch])
    trainer.fit(batches(x, y), epochs=3, callbacks=[halve_then_stop, record, weights_at_epoch_ends(model, snapshots)])
    assert rates == pytest.approx([0.1, 0.05, 0.0])
    assert_same_weights(snapshots[1], snapshots[2])  # rate 0 in epoch 3: the weights did not move

    # The trajectory equals two plain runs: one epoch at 0.1, then one at 0.05.
    reference = toy_model(seed=5)
    make_trainer(reference, keras.optimizers.SGD(0.1)).fit(batches(x, y), epochs=1)
    make_trainer(reference, keras.optimizers.SGD(0.05)).fit(batches(x, y), epochs=1)
    for ours, theirs in zip(snapshots[1], reference.get_weights()):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)


def test_early_stopping_restores_the_best_weights():
    x, y = toy_data()
    model = toy_model()
    snapshots = []
    # Validation labels are shifted by one class: the better the model learns, the worse val_loss gets.
    val = batches(x, (y + 1) % 3)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    history = (
        make_trainer(model)
        .fit(batches(x, y), validation_data=val, epochs=20, callbacks=[weights_at_epoch_ends(model, snapshots), stop])
        .history
    )
    best = int(np.argmin(history["val_loss"]))
    assert len(history["val_loss"]) == best + 3  # two epochs without improvement, then stop
    assert_same_weights(model.get_weights(), snapshots[best])


def test_csv_logger_rows_match_the_history(tmp_path):
    x, y = toy_data()
    path = tmp_path / "log.csv"
    history = (
        make_trainer(toy_model())
        .fit(batches(x, y), validation_data=batches(x, y), epochs=3, callbacks=[keras.callbacks.CSVLogger(str(path))])
        .history
    )
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert set(rows[0]) == {"epoch", *history}
    for key, values in history.items():
        assert [float(r[key]) for r in rows] == pytest.approx(values, rel=1e-6), key


def test_model_checkpoint_writes_loadable_models_and_weights(tmp_path):
    x, y = toy_data()
    model = toy_model()
    every_epoch = keras.callbacks.ModelCheckpoint(str(tmp_path / "epoch-{epoch:02d}.keras"))
    best = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "best.weights.h5"), monitor="val_loss", save_best_only=True, save_weights_only=True
    )
    snapshots = []
    history = (
        make_trainer(model)
        .fit(
            batches(x, y),
            validation_data=batches(x[:50], y[:50]),
            epochs=3,
            callbacks=[weights_at_epoch_ends(model, snapshots), every_epoch, best],
        )
        .history
    )
    assert sorted(p.name for p in tmp_path.glob("epoch-*.keras")) == [
        "epoch-01.keras",
        "epoch-02.keras",
        "epoch-03.keras",
    ]
    for epoch, weights in enumerate(snapshots, start=1):
        loaded = keras.models.load_model(tmp_path / f"epoch-{epoch:02d}.keras")
        assert_same_weights(loaded.get_weights(), weights)
    np.testing.assert_array_equal(
        keras.models.load_model(tmp_path / "epoch-03.keras").predict(x, verbose=0), model.predict(x, verbose=0)
    )
    restored = toy_model(seed=99)
    restored.load_weights(tmp_path / "best.weights.h5")
    assert_same_weights(restored.get_weights(), snapshots[int(np.argmin(history["val_loss"]))])


def test_model_checkpoint_save_freq_counts_steps_not_compiled_calls(tmp_path):
    x, y = toy_data(320)  # 10 steps per epoch
    saved_at = []

    class Recording(keras.callbacks.ModelCheckpoint):
        def _save_model(self, epoch, batch, logs):
            saved_at.append((epoch, batch))
            super()._save_model(epoch, batch, logs)

    ckpt = Recording(str(tmp_path / "step.weights.h5"), save_weights_only=True, save_freq=4)
    make_trainer(toy_model(), options=CompileOptions(steps_per_execution=3)).fit(
        batches(x, y), epochs=1, callbacks=[ckpt]
    )
    # Hooks after steps 3, 6, 9, 10 (batch indices 2, 5, 8, 9); a save once 4 or more steps have run since the last.
    assert saved_at == [(0, 5), (0, 9)]
    assert (tmp_path / "step.weights.h5").exists()


def test_keras_tensorboard_writes_epoch_scalars_and_one_batch_point_per_compiled_call(tmp_path):
    x, y = toy_data()  # 4 steps per epoch in calls of 3 steps: 2 batch hooks per epoch
    tensorboard = keras.callbacks.TensorBoard(log_dir=str(tmp_path), update_freq=1)
    history = (
        make_trainer(toy_model(), options=CompileOptions(steps_per_execution=3))
        .fit(batches(x, y), validation_data=batches(x, y), epochs=2, callbacks=[tensorboard])
        .history
    )
    train, val = read_scalars(tmp_path / "train"), read_scalars(tmp_path / "validation")
    assert [v for _, v in train["epoch_loss"]] == pytest.approx(history["loss"], rel=1e-6)
    assert [v for _, v in val["epoch_accuracy"]] == pytest.approx(history["val_accuracy"], rel=1e-6)
    assert [s for s, _ in train["batch_loss"]] == [1, 2, 3, 4]  # Keras counts hooks, i.e. compiled calls
    assert [v for _, v in train["epoch_learning_rate"]] == pytest.approx([1e-2, 1e-2])


def test_batch_hooks_run_once_per_compiled_call_with_first_and_last_step():
    x, y = toy_data(320)  # 10 steps per epoch
    begins, ends = [], []
    hooks = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda batch, logs: begins.append(batch),
        on_train_batch_end=lambda batch, logs: ends.append(batch),
    )
    make_trainer(toy_model(), options=CompileOptions(steps_per_execution=4)).fit(
        batches(x, y), epochs=1, callbacks=[hooks]
    )
    assert (begins, ends) == ([0, 4, 8], [3, 7, 9])
