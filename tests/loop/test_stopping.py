"""Early stopping with the best model kept, and the stop on a non-finite loss."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from gradloop import CompileOptions, Trainer, TrainingError, data
from gradloop.loop.callbacks.checkpointing import Checkpointing
from gradloop.loop.callbacks.early_stopping import BestModelEarlyStopping
from gradloop.loop.callbacks.nan_guard import StopOnNonFiniteLoss
from gradloop.loop.checkpoint import RunCheckpoint
from gradloop.loop.state import LoopState
from gradloop.loop.step import train_step

DIM = 8


def toy_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])


def toy_trainer(model, **kwargs) -> Trainer:
    return Trainer(
        model,
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **kwargs,
    )


def with_history(model: keras.Model, history: dict) -> keras.Model:
    """The model as a callback sees it inside fit: its History, stop_training."""
    model.history = keras.callbacks.History()
    model.history.history = history
    model.stop_training = False
    return model


def test_the_best_epochs_model_is_kept_and_patience_stops(tmp_path):
    model = with_history(toy_model(), {})
    best = BestModelEarlyStopping(tmp_path / "model.best.keras", patience=2)
    best.set_model(model)
    best.on_train_begin()
    kept = None
    for epoch, val_loss in enumerate([0.9, 0.5, 0.5, 0.6]):  # best at epoch 1; 0.5 again is no improvement
        model.layers[-1].bias.assign(np.full(3, epoch, np.float32))  # each epoch's weights differ
        best.on_epoch_end(epoch, {"val_loss": val_loss})
        kept = kept if epoch != 1 else [w.copy() for w in model.get_weights()]
        assert model.stop_training == (epoch == 3)
    assert best.stopped_epoch == 3
    saved = keras.models.load_model(tmp_path / "model.best.keras")
    assert len(saved.get_weights()) == len(kept) > 0
    assert all(np.array_equal(a, b) for a, b in zip(saved.get_weights(), kept))
    assert not list(tmp_path.glob("*.partial.keras"))


def test_a_resumed_run_stops_where_the_whole_run_would(tmp_path):
    # A run resumed after epochs with val_loss 0.9, 0.5, 0.7 has waited one epoch since its best.
    model = with_history(toy_model(), {"val_loss": [0.9, 0.5, 0.7]})
    best = BestModelEarlyStopping(tmp_path / "best.keras", patience=2)
    best.set_model(model)
    best.on_train_begin()
    assert (best.best, best.wait) == (0.5, 1)
    best.on_epoch_end(3, {"val_loss": 0.6})
    assert model.stop_training and best.stopped_epoch == 3
    assert not (tmp_path / "best.keras").exists()  # 0.6 never beat the restored best


def test_a_run_resumed_after_it_ran_out_of_patience_trains_no_further(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, DIM)).astype("float32")
    train = data.make_dataset(x, np.zeros(40, np.int64), batch_size=8, shuffle=False)
    history = {"loss": [1.0, 0.9, 0.8], "val_loss": [0.5, 0.6, 0.7]}  # 2 epochs without a better val_loss
    best = BestModelEarlyStopping(tmp_path / "best.keras", patience=2)
    state = LoopState(epoch=3, iterator=iter(train), history=history)
    trainer = toy_trainer(toy_model())
    out = trainer.fit(train, validation_data=train, epochs=10, initial_state=state, callbacks=[best]).history
    assert out["val_loss"] == [0.5, 0.6, 0.7] and best.stopped_epoch == 2
    assert float(trainer.optimizer.iterations) == 0


def test_early_stopping_in_a_fit_runs_patience_epochs_past_the_best(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, DIM)).astype("float32")
    y = np.argmax(x[:, :3], axis=1).astype("int64")
    train = data.make_dataset(x, y, batch_size=16, shuffle=True, seed=0)
    val = data.make_dataset(x[:60], (y[:60] + 1) % 3, batch_size=16, shuffle=False)  # gets worse as it learns
    best = BestModelEarlyStopping(tmp_path / "best.keras", patience=2)
    history = toy_trainer(toy_model()).fit(train, validation_data=val, epochs=20, callbacks=[best]).history
    best_epoch = int(np.argmin(history["val_loss"]))
    assert len(history["val_loss"]) == best_epoch + 1 + 2 < 20
    assert best.stopped_epoch == best_epoch + 2


def test_a_nan_loss_stops_at_its_step_before_a_checkpoint_of_it(tmp_path):
    x = np.random.default_rng(0).normal(size=(150, DIM)).astype("float32")
    x[6 * 16 + 3] = np.nan  # a sample of batch 7 (steps count from 1)
    y = np.zeros(150, np.int64)
    train = data.make_dataset(x, y, batch_size=16, shuffle=False)  # 10 steps per epoch
    guard = StopOnNonFiniteLoss(steps_per_epoch=10, hint="lower --lr")
    trainer = toy_trainer(
        toy_model(), train_step=guard.watch(train_step), options=CompileOptions(steps_per_execution=4)
    )
    ckpt = RunCheckpoint(tmp_path, trainer)
    with pytest.raises(TrainingError) as caught:
        trainer.fit(train, epochs=2, callbacks=[guard, Checkpointing(ckpt, every_steps=2)], end_groups_every=2)
    assert str(caught.value) == (
        "the training loss became nan at step 7 (epoch 1, step 7 of 10): the weights diverged, so training "
        "stopped without saving them; lower --lr and start a new run"
    )
    state = RunCheckpoint(tmp_path, toy_trainer(toy_model())).restore(train)
    assert (state.epoch, state.step) == (0, 6)  # the group holding step 7 (steps 7-8) was never saved
    assert not np.isfinite(float(trainer.loss_tracker.result()))  # the epoch's mean did go bad


def test_the_guard_costs_no_retrace_and_names_later_epochs():
    x = np.random.default_rng(0).normal(size=(40, DIM)).astype("float32")
    train = data.make_dataset(x, np.zeros(40, np.int64), batch_size=8, shuffle=False)  # 5 steps per epoch
    guard = StopOnNonFiniteLoss(steps_per_epoch=5)
    trainer = toy_trainer(toy_model(), train_step=guard.watch(train_step))
    trainer.fit(train, epochs=2, callbacks=[guard])
    assert int(guard.first_bad_step.numpy()) == -1
    trainer.optimizer.learning_rate.assign(1e38)  # the next update overflows the weights
    with pytest.raises(TrainingError, match=r"at step 1[2-5] \(epoch 3, step [2-5] of 5\)"):
        trainer.fit(train, epochs=1, callbacks=[guard])
    assert trainer._train_fn.experimental_get_tracing_count() == 1
