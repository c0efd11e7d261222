"""Checkpoints: a stopped and resumed fit is bit-identical, saves land on exact
steps, signals stop after a checkpoint, and a kill never leaves a broken latest."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradloop import CheckpointError, CompileOptions, Trainer, data
from gradloop.loop.callbacks.checkpointing import Checkpointing
from gradloop.loop.checkpoint import RunCheckpoint
from gradloop.loop.signals import Interrupted, StopSignals

N, DIM = 150, 8  # 10 batches of 16 per epoch, the last one partial (6)


def toy_run(directory: Path, *, steps_per_execution: int = 3, strategy: tf.distribute.Strategy | None = None):
    """Data, a trainer whose model draws random numbers (Dropout), and its checkpoint."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, DIM)).astype("float32")
    y = np.argmax(x[:, :3], axis=1).astype("int64")
    keras.utils.set_random_seed(1)
    train = data.shuffled_epochs(x, y, batch_size=16, seed=3)
    val = data.make_dataset(x[:40], y[:40], batch_size=16, shuffle=False)
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = keras.Sequential(
            [
                keras.Input((DIM,)),
                keras.layers.Dense(16, activation="relu"),
                keras.layers.Dropout(0.3),
                keras.layers.Dense(3),
            ]
        )
        trainer = Trainer(
            model,
            optimizer=keras.optimizers.Adam(1e-2),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            options=CompileOptions(steps_per_execution=steps_per_execution),
            strategy=strategy,
        )
    return (train, val), trainer, RunCheckpoint(directory, trainer)


class StopAt(keras.callbacks.Callback):
    """Raise KeyboardInterrupt once the loop stands at (epoch, step): a crash there."""

    def __init__(self, trainer: Trainer, epoch: int, step: int) -> None:
        super().__init__()
        self.trainer, self.at = trainer, (epoch, step)

    def on_train_batch_end(self, batch, logs=None):
        if (self.trainer.state.epoch, self.trainer.state.step) == self.at:
            raise KeyboardInterrupt


def variables(trainer: Trainer) -> list[np.ndarray]:
    return [v.numpy() for v in (*trainer.model.variables, *trainer.optimizer.variables)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    (train, val), trainer, ckpt = toy_run(tmp_path_factory.mktemp("a"))
    history = trainer.fit(
        train, validation_data=val, epochs=3, callbacks=[Checkpointing(ckpt, every_steps=4)], end_groups_every=4
    )
    return history.history, variables(trainer)


# Groups of 3 steps, cut at every 4th: group ends at steps 3, 4, 7, 8, 10; saves at 4, 8 and each epoch's end.
@pytest.mark.parametrize("stop_at", [(0, 7), (1, 4), (1, 10)])  # mid-epoch, right after a save, after the last group
def test_a_run_stopped_and_resumed_is_bit_identical(tmp_path, uninterrupted, stop_at):
    expected_history, expected_variables = uninterrupted
    (train, val), trainer, ckpt = toy_run(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(
            train,
            validation_data=val,
            epochs=3,
            end_groups_every=4,
            callbacks=[Checkpointing(ckpt, every_steps=4), StopAt(trainer, *stop_at)],
        )
    # A new process would start from scratch: new data pipeline, model, optimizer, checkpoint.
    (train, val), trainer, ckpt = toy_run(tmp_path, steps_per_execution=5)  # other groups: same numbers
    state = ckpt.restore(train)
    assert (state.epoch, state.step) == (stop_at[0], stop_at[1] // 4 * 4)  # the last save before the crash
    assert len(state.history.get("loss", [])) == stop_at[0]
    history = trainer.fit(
        train,
        validation_data=val,
        epochs=3,
        initial_state=state,
        end_groups_every=4,
        callbacks=[Checkpointing(ckpt, every_steps=4)],
    ).history
    got = variables(trainer)
    assert len(got) == len(expected_variables) > 0
    assert all(np.array_equal(a, b) for a, b in zip(got, expected_variables))
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert history[key] == expected_history[key], key
    assert len(history["train_time"]) == 3  # timings differ between runs; they are not compared


@pytest.mark.parametrize("replicas", [0, 1])  # plain, and a MirroredStrategy (summed metric variables)
def test_a_checkpoint_with_float32_loss_sums_still_resumes(tmp_path, replicas):
    """Checkpoints written before the loss tracker summed in float64 restore into it, at the same mean."""
    strategy = (lambda: tf.distribute.MirroredStrategy(["/cpu:0"])) if replicas else tf.distribute.get_strategy
    (train, val), old, _ = toy_run(tmp_path, strategy=strategy())
    with old.strategy.scope():
        old.loss_tracker = keras.metrics.Mean(name="loss")  # what a run made then held
    ckpt = RunCheckpoint(tmp_path, old)
    with pytest.raises(KeyboardInterrupt):
        old.fit(train, epochs=1, end_groups_every=4, callbacks=[Checkpointing(ckpt, every_steps=4), StopAt(old, 0, 7)])
    dtypes = tf.train.load_checkpoint(ckpt.latest).get_variable_to_dtype_map()
    assert dtypes["metrics/0/.ATTRIBUTES/VARIABLE_VALUE"] == tf.float32
    saved_total = tf.train.load_checkpoint(ckpt.latest).get_tensor("metrics/0/.ATTRIBUTES/VARIABLE_VALUE")
    (train, val), trainer, ckpt = toy_run(tmp_path, strategy=strategy())
    state = ckpt.restore(train)
    assert (state.epoch, state.step) == (0, 4) and trainer.loss_tracker.dtype == "float64"
    total, count = (float(v.numpy()) for v in (trainer.loss_tracker.total, trainer.loss_tracker.count))
    assert total == float(saved_total) > 0 and count == 64
    trainer.fit(
        train, epochs=1, initial_state=state, callbacks=[Checkpointing(ckpt, every_steps=4)], end_groups_every=4
    )
    assert (
        tf.train.load_checkpoint(ckpt.latest).get_variable_to_dtype_map()["metrics/0/.ATTRIBUTES/VARIABLE_VALUE"]
        == tf.float64
    )


def test_a_distributed_run_resumes_by_skipping_to_its_step(tmp_path):
    """A tf.distribute iterator cannot be saved: the restore rebuilds the epoch and skips its done steps."""
    mirrored = lambda: tf.distribute.MirroredStrategy(["/cpu:0"])  # noqa: E731
    (train, val), trainer, ckpt = toy_run(tmp_path / "a", strategy=mirrored())
    expected = trainer.fit(train, validation_data=val, epochs=2).history
    expected_variables = variables(trainer)
    (train, val), trainer, ckpt = toy_run(tmp_path / "b", strategy=mirrored())
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(
            train,
            validation_data=val,
            epochs=2,
            end_groups_every=4,
            callbacks=[Checkpointing(ckpt, every_steps=4), StopAt(trainer, 1, 7)],
        )
    assert "iterator" not in {name.split("/")[0] for name, _ in tf.train.list_variables(ckpt.latest)}
    (train, val), trainer, ckpt = toy_run(tmp_path / "b", strategy=mirrored())
    state = ckpt.restore(train)
    assert (state.epoch, state.step) == (1, 4)
    history = trainer.fit(train, validation_data=val, epochs=2, initial_state=state).history
    got = variables(trainer)
    assert len(got) == len(expected_variables) > 0
    assert all(np.array_equal(a, b) for a, b in zip(got, expected_variables))
    assert all(history[k] == expected[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy"))


def test_a_worker_restores_the_chiefs_checkpoint_and_saves_into_its_own_folder(tmp_path, uninterrupted):
    """A multi-worker run's other workers resume from the chief's folder (``restore_from``) and save into
    a scratch one; with nothing there yet, they still must not save before training, which the chief does not."""
    expected_history, expected_variables = uninterrupted
    (train, val), trainer, ckpt = toy_run(tmp_path / "chief")
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(
            train,
            validation_data=val,
            epochs=3,
            end_groups_every=4,
            callbacks=[Checkpointing(ckpt, every_steps=4), StopAt(trainer, 1, 7)],
        )
    chief = {p: p.read_bytes() for p in (tmp_path / "chief").iterdir()}
    (train, val), trainer, _ = toy_run(tmp_path / "scratch")
    ckpt = RunCheckpoint(tmp_path / "scratch", trainer, restore_from=tmp_path / "chief")
    state = ckpt.restore(train)
    assert (state.epoch, state.step) == (1, 4) and ckpt.latest == str(tmp_path / "chief" / "ckpt-5")
    saved, save = [], ckpt.save
    ckpt.save = lambda state: saved.append((state.epoch, state.step)) or save(state)
    history = trainer.fit(
        train,
        validation_data=val,
        epochs=3,
        initial_state=state,
        end_groups_every=4,
        callbacks=[Checkpointing(ckpt, every_steps=4)],
    ).history
    assert saved == [(1, 8), (2, 0), (2, 4), (2, 8), (3, 0)]  # not (1, 4) again
    got = variables(trainer)
    assert len(got) == len(expected_variables) > 0
    assert all(np.array_equal(a, b) for a, b in zip(got, expected_variables))
    assert all(history[k] == expected_history[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy"))
    assert {p: p.read_bytes() for p in (tmp_path / "chief").iterdir()} == chief  # only read
    assert tf.train.latest_checkpoint(tmp_path / "scratch") == str(tmp_path / "scratch" / "ckpt-10")


def test_saves_land_on_every_nth_step_and_each_epoch_end(tmp_path):
    (train, _), trainer, ckpt = toy_run(tmp_path, steps_per_execution=4)  # groups of 4, cut at multiples of 3
    saved = []
    ckpt.save = lambda state: saved.append((state.epoch, state.step))
    trainer.fit(train, epochs=2, callbacks=[Checkpointing(ckpt, every_steps=3)], end_groups_every=3)
    # before training, after steps 3, 6, 9 of each epoch, and at each epoch's end
    assert saved == [(0, 0), (0, 3), (0, 6), (0, 9), (1, 0), (1, 3), (1, 6), (1, 9), (2, 0)]
    assert trainer._train_fn.experimental_get_tracing_count() == 1


def test_a_checkpoint_holds_the_bundle_named_in_the_docstring(tmp_path):
    (train, _), trainer, ckpt = toy_run(tmp_path)
    trainer.fit(train, epochs=1, callbacks=[Checkpointing(ckpt)])
    names = {name.split("/")[0] for name, _ in tf.train.list_variables(ckpt.latest)}
    # (each variable is stored once: the weights under the optimizer's references to them)
    assert {"optimizer", "rng", "metrics", "iterator", "epoch", "step", "seconds", "history"} <= names
    assert (
        len(tf.train.load_checkpoint(ckpt.latest).get_tensor("rng/0/.ATTRIBUTES/VARIABLE_VALUE")) == 2
    )  # Dropout's seed


@pytest.mark.parametrize("signum, name", [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")])
def test_a_signal_stops_after_the_group_with_a_checkpoint(tmp_path, signum, name):
    (train, _), trainer, ckpt = toy_run(tmp_path)

    class SendSignal(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if trainer.state.step == 6:  # a group end (groups of 3)
                os.kill(os.getpid(), signum)

    before = signal.getsignal(signum)
    with StopSignals() as stop, pytest.raises(Interrupted) as caught:
        trainer.fit(train, epochs=3, callbacks=[SendSignal(), Checkpointing(ckpt, stop=stop)])
    assert signal.getsignal(signum) is before  # the handlers are given back
    # What the library knows; the CLI makes the exit code of it (128 + signum: 143, 130) and names the run.
    assert (caught.value.epoch, caught.value.step, caught.value.signum, caught.value.signal_name) == (
        0,
        6,
        signum,
        name,
    )
    assert (ckpt.restore(train).epoch, ckpt.restore(train).step) == (0, 6)


def test_restoring_into_another_model_is_one_clear_error(tmp_path):
    (train, _), trainer, ckpt = toy_run(tmp_path)
    trainer.fit(train, epochs=1, callbacks=[Checkpointing(ckpt)])
    other = Trainer(
        keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(5)]),
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    with pytest.raises(CheckpointError, match="cannot restore checkpoint .*--overwrite"):
        RunCheckpoint(tmp_path, other, hint="start the run again with --overwrite").restore(train)
    with pytest.raises(CheckpointError, match="holds no checkpoint") as no_checkpoint:
        RunCheckpoint(tmp_path / "empty", other).restore(train)
    with pytest.raises(CheckpointError, match="cannot restore checkpoint") as damaged:
        RunCheckpoint(tmp_path, other).restore(train)
    for error in (no_checkpoint, damaged):  # the library's own advice names no CLI flag
        assert str(error.value).endswith("start training again from the beginning") and " --" not in str(error.value)


# A process that saves checkpoints as fast as it can; every variable of save i holds the value i.
SAVER = """
import os, sys
import keras, numpy as np, tensorflow as tf
from gradloop import Trainer, data
from gradloop.loop.checkpoint import RunCheckpoint
from gradloop.loop.state import LoopState
ds = data.make_dataset(np.zeros((64, 1000), np.float32), np.zeros(64, np.int64), batch_size=8, shuffle=True, seed=1)
trainer = Trainer(keras.Sequential([keras.Input((1000,)), keras.layers.Dense(1000), keras.layers.Dense(2)]),
                  optimizer="adam", loss="sparse_categorical_crossentropy")
trainer.build(ds)
ckpt = RunCheckpoint(sys.argv[1], trainer)
kill_in_save = int(sys.argv[2])
if kill_in_save:  # SIGKILL once save number kill_in_save is written but not yet recorded as the latest
    save = ckpt.manager.save
    kill = lambda path: path.endswith(f"-{kill_in_save}") and os.kill(os.getpid(), 9)
    ckpt.manager.save = lambda options: save(options=tf.train.CheckpointOptions(  # after its files are fsynced
        experimental_write_callbacks=[*options.experimental_write_callbacks, kill]))
for i in range(1, 10**6):
    for v in (*trainer.model.weights, *trainer.optimizer.variables):
        v.assign(tf.fill(v.shape, tf.cast(i, v.dtype)))
    it = iter(ds)
    next(it)
    ckpt.save(LoopState(epoch=i, step=i, iterator=it, history={"i": [i]}))
"""


def test_sigkill_at_any_instant_leaves_a_complete_latest_checkpoint(tmp_path):
    runs = {f"random{k}": 0 for k in range(2)} | {"in_save": 3}
    procs = {
        name: subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path / name), str(kill)])
        for name, kill in runs.items()
    }
    deadline = time.monotonic() + 120
    for name, proc in procs.items():
        while proc.poll() is None and not (tmp_path / name / "checkpoint").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    for name, proc in procs.items():
        if runs[name] == 0:
            time.sleep(random.uniform(0.0, 1.0))
            proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=120) == -signal.SIGKILL
    for name in runs:
        train = data.make_dataset(
            np.zeros((64, 1000), np.float32), np.zeros(64, np.int64), batch_size=8, shuffle=True, seed=1
        )
        trainer = Trainer(
            keras.Sequential([keras.Input((1000,)), keras.layers.Dense(1000), keras.layers.Dense(2)]),
            optimizer="adam",
            loss="sparse_categorical_crossentropy",
        )
        ckpt = RunCheckpoint(tmp_path / name, trainer)
        state = ckpt.restore(train)  # complete, or this raises
        i = state.epoch
        assert (state.step, state.history) == (i, {"i": [i]})
        assert ckpt.latest.endswith(f"-{i}")
        for v in (*trainer.model.weights, *trainer.optimizer.variables):
            assert np.all(v.numpy() == i), v.path  # no variable from another save
        assert sum(1 for _ in state.iterator) == 7  # the saved iterator had used 1 of 8 batches
        if runs[name]:
            assert i == runs[name] - 1  # save 3 was fully written but never became the latest
            assert (tmp_path / name / f"ckpt-{runs[name]}.index").exists()
