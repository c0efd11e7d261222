"""In-memory training data (gradloop.InMemory): batches gathered inside the compiled step group, on XLA
or TensorFlow's graph, against the same batches from a tf.data pipeline; exact resume; XLA's fall-back."""

from __future__ import annotations

import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_checkpoint import StopAt, variables

from gradloop import CompileOptions, InMemory, Trainer, data
from gradloop.loop import step as step_lib
from gradloop.loop.callbacks.checkpointing import Checkpointing
from gradloop.loop.checkpoint import RunCheckpoint
from gradloop.loop.in_memory import Epoch, Position
from gradloop.loop.xla import XLA_AUTO_MIN_STEPS

N, DIM = 150, 8  # 10 batches of 16 per epoch, the last one partial (6)


def arrays(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, DIM)).astype("float32")
    return x, np.argmax(x[:, :3], axis=1).astype("int64")


def trainer_for(jit_compile, *, steps_per_execution: int = 3, dropout: float = 0.3, step=None) -> Trainer:
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((DIM,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(3),
        ]
    )
    return Trainer(
        model,
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        train_step=step,
        options=CompileOptions(steps_per_execution=steps_per_execution, jit_compile=jit_compile),
    )


def test_an_epoch_gives_the_batches_of_shuffled_epochs():
    x, y = arrays()
    in_memory, pipeline = InMemory(x, y, batch_size=16, seed=3), data.shuffled_epochs(x, y, batch_size=16, seed=3)
    for epoch in (0, 4):
        got = [(bx.numpy(), by.numpy()) for bx, by in in_memory(epoch).dataset()]
        expected = [(bx.numpy(), by.numpy()) for bx, by in pipeline(epoch)]
        assert len(got) == len(expected) == 10 and got[-1][0].shape == (6, DIM)
        for (a, b), (c, d) in zip(got, expected):
            np.testing.assert_array_equal(a, c)
            np.testing.assert_array_equal(b, d)
    assert in_memory(1).skip(3).take(4).steps == 4 and in_memory(1).skip(20).steps == 0


@pytest.mark.parametrize("jit_compile", [True, False])
def test_fit_on_in_memory_data_equals_fit_on_its_pipeline(jit_compile):
    x, y = arrays()
    val = data.make_dataset(x[:40], y[:40], batch_size=16, shuffle=False)
    # No dropout: under XLA TensorFlow's stateless random ops pick another algorithm (ThreeFry, not Philox).
    on_pipeline = trainer_for(False, dropout=0.0)
    expected = on_pipeline.fit(data.shuffled_epochs(x, y, batch_size=16, seed=3), validation_data=val, epochs=3).history
    trainer = trainer_for(jit_compile, dropout=0.0)
    history = trainer.fit(InMemory(x, y, batch_size=16, seed=3), validation_data=val, epochs=3).history
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):  # the same batches and updates
        np.testing.assert_allclose(history[key], expected[key], rtol=2e-5, err_msg=key)
    for a, b in zip(variables(trainer), variables(on_pipeline)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_sample_weights_and_several_inputs_are_gathered_alike():
    rng = np.random.default_rng(2)
    x, y = arrays(64)
    weight = rng.uniform(0.2, 2.0, 64).astype("float32")
    inputs = {"a": x[:, :4], "b": x[:, 4:]}

    def model() -> keras.Model:
        keras.utils.set_random_seed(0)
        a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
        return keras.Model([a, b], keras.layers.Dense(3)(keras.layers.Concatenate()([a, b])))

    def fit(train) -> dict:
        trainer = Trainer(
            model(),
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            weighted_metrics=["accuracy"],
            options=CompileOptions(jit_compile=True),
        )
        return trainer.fit(train, epochs=2).history

    def pipeline(epoch: int) -> tf.data.Dataset:  # InMemory's order: the seed's and the epoch's permutation
        rows = np.random.default_rng((0, epoch)).permutation(64)
        return tf.data.Dataset.from_tensor_slices(
            ({k: v[rows] for k, v in inputs.items()}, y[rows], weight[rows])
        ).batch(10)

    expected = fit(pipeline)
    got = fit(InMemory(inputs, y, weight, batch_size=10, seed=0))
    for key in expected:
        if key != "train_time":
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, err_msg=key)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    x, y = arrays()
    trainer = trainer_for(True)
    ckpt = RunCheckpoint(tmp_path_factory.mktemp("a"), trainer)
    history = trainer.fit(
        InMemory(x, y, batch_size=16, seed=3),
        epochs=3,
        end_groups_every=4,
        callbacks=[Checkpointing(ckpt, every_steps=4)],
    )
    return history.history, variables(trainer)


@pytest.mark.parametrize("stop_at", [(0, 7), (1, 10)])  # mid-epoch; after the partial last batch
def test_a_run_on_xla_groups_stopped_and_resumed_is_bit_identical(tmp_path, uninterrupted, stop_at):
    expected_history, expected_variables = uninterrupted
    x, y = arrays()
    trainer = trainer_for(True)
    ckpt = RunCheckpoint(tmp_path, trainer)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(
            InMemory(x, y, batch_size=16, seed=3),
            epochs=3,
            end_groups_every=4,
            callbacks=[Checkpointing(ckpt, every_steps=4), StopAt(trainer, *stop_at)],
        )
    trainer = trainer_for(True, steps_per_execution=5)  # a new process: other groups, the same numbers
    ckpt = RunCheckpoint(tmp_path, trainer)
    train = InMemory(x, y, batch_size=16, seed=3)
    state = ckpt.restore(train)
    assert isinstance(state.iterator, Position) and (state.epoch, state.step) == (stop_at[0], stop_at[1] // 4 * 4)
    history = trainer.fit(
        train, epochs=3, initial_state=state, end_groups_every=4, callbacks=[Checkpointing(ckpt, every_steps=4)]
    ).history
    got = variables(trainer)
    assert len(got) == len(expected_variables) > 0
    assert all(np.array_equal(a, b) for a, b in zip(got, expected_variables))
    for key in ("loss", "accuracy"):
        assert history[key] == expected_history[key], key


def test_a_default_run_long_enough_for_xla_stopped_and_resumed_is_bit_identical(tmp_path):
    # Full batches on XLA, each epoch's partial last batch (1 row) on the graph, dropout in both.
    x, y = arrays(151)
    epochs = -(-XLA_AUTO_MIN_STEPS // 76)  # of 75 batches of 2 and one of 1

    def fit(directory, *callbacks, resume_at=None, steps_per_execution=5):
        """With ``resume_at`` (epoch, step), resumed from ``directory``'s checkpoint, which must stand there."""
        trainer = trainer_for(None, steps_per_execution=steps_per_execution)
        ckpt = RunCheckpoint(directory, trainer)
        train = InMemory(x, y, batch_size=2, seed=3)
        state = ckpt.restore(train) if resume_at is not None else None
        assert state is None or (state.epoch, state.step) == resume_at
        history = trainer.fit(
            train,
            epochs=epochs,
            initial_state=state,
            end_groups_every=19,
            callbacks=[Checkpointing(ckpt, every_steps=19), *(c(trainer) for c in callbacks)],
        ).history
        assert trainer._xla_groups
        return history, variables(trainer)

    expected_history, expected_variables = fit(tmp_path / "unstopped")
    for stop_at in [(0, 29), (1, 76)]:  # mid-epoch (a group ends there); after the partial batch
        with pytest.raises(KeyboardInterrupt):
            fit(tmp_path / str(stop_at), lambda trainer, at=stop_at: StopAt(trainer, *at))
        last_save = (stop_at[0], stop_at[1] // 19 * 19)  # a checkpoint every 19 steps of an epoch
        history, got = fit(tmp_path / str(stop_at), resume_at=last_save, steps_per_execution=7)
        assert len(got) == len(expected_variables) > 0, stop_at
        assert all(np.array_equal(a, b) for a, b in zip(got, expected_variables)), stop_at
        assert history["loss"] == expected_history["loss"], stop_at


def numpy_step(trainer, x, y, sample_weight=None):
    """A user's step with an op XLA cannot compile (a Python function)."""
    x = tf.ensure_shape(tf.numpy_function(lambda a: a, [x], tf.float32, stateful=False), x.shape)
    with tf.GradientTape() as tape:
        y_pred = trainer.model(x, training=True)
        loss = trainer.compute_loss(y, y_pred, sample_weight, x=x)
    grads = tape.gradient(loss, trainer.model.trainable_variables)
    trainer.optimizer.apply_gradients(zip(grads, trainer.model.trainable_variables))
    return loss, y_pred


def test_a_long_fit_falls_back_to_the_graph_where_xla_cannot_compile():
    x, y = arrays()
    epochs = -(-XLA_AUTO_MIN_STEPS // 10)  # of 10 steps: a fit long enough for XLA by default
    trainer = trainer_for(None, step=numpy_step, dropout=0.0, steps_per_execution=10)
    with pytest.warns(UserWarning, match="XLA cannot compile this training step"):
        history = trainer.fit(InMemory(x, y, batch_size=16, seed=3), epochs=epochs).history
    assert len(history["loss"]) == epochs and history["loss"][-1] < history["loss"][0]


def test_a_short_fit_runs_on_the_graph_without_trying_xla():
    x, y = arrays()
    trainer = trainer_for(None, step=numpy_step, dropout=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no XLA attempt, so no fall-back warning
        history = trainer.fit(InMemory(x, y, batch_size=16, seed=3), epochs=2).history
    assert history["loss"][1] < history["loss"][0]


def numpy_step_on_partial_batches(trainer, x, y, sample_weight=None):
    """XLA compiles this step for full batches of 16 rows and cannot for any other size."""
    return (numpy_step if x.shape[0] != 16 else step_lib.train_step)(trainer, x, y, sample_weight)


def test_by_default_a_long_fit_runs_its_partial_last_batches_on_the_graph():
    # Each epoch ends with a batch of 6: compiling it with XLA would fail, warn and move the run to the graph.
    x, y = arrays()
    epochs = -(-XLA_AUTO_MIN_STEPS // 10)
    trainer = trainer_for(None, step=numpy_step_on_partial_batches, dropout=0.0, steps_per_execution=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = trainer.fit(InMemory(x, y, batch_size=16, seed=3), epochs=epochs).history
    assert history["loss"][-1] < history["loss"][0]
    assert trainer._xla_groups  # the full batches' groups stayed on XLA
    trainer = trainer_for(True, step=numpy_step_on_partial_batches, dropout=0.0, steps_per_execution=10)
    with pytest.raises((tf.errors.InvalidArgumentError, tf.errors.UnimplementedError)):  # XLA everywhere
        trainer.fit(InMemory(x, y, batch_size=16, seed=3), epochs=1)


def test_xla_asked_for_does_not_fall_back():
    x, y = arrays()
    trainer = trainer_for(True, step=numpy_step, dropout=0.0)
    with pytest.raises((tf.errors.InvalidArgumentError, tf.errors.UnimplementedError)):
        trainer.fit(InMemory(x, y, batch_size=16, seed=3), epochs=1)


def test_under_a_strategy_in_memory_data_runs_as_a_dataset():
    x, y = arrays()
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(3)])
        trainer = Trainer(
            model,
            optimizer=keras.optimizers.Adam(1e-2),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            strategy=strategy,
        )
    epoch = InMemory(x, y, batch_size=16, seed=3)(0)
    assert isinstance(epoch, Epoch) and not isinstance(trainer.make_iterator(epoch), Position)
    assert len(trainer.fit(InMemory(x, y, batch_size=16, seed=3), epochs=2).history["loss"]) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (dict(x=np.zeros((4, 2)), y=np.zeros(5)), "same number of rows"),
        (dict(x=np.zeros((0, 2)), y=np.zeros(0)), "at least 1"),
        (dict(x=np.zeros((4, 2)), y=np.zeros(4), batch_size=0), "batch_size must be a positive integer"),
    ],
)
def test_in_memory_checks_its_arrays(args, message):
    with pytest.raises(ValueError, match=message):
        InMemory(**{"batch_size": 2, **args})


def test_a_long_fit_of_a_model_with_convolutions_stays_on_the_graph():
    # XLA's CPU convolutions are far slower than oneDNN's; the numpy step would warn if XLA were tried.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 6, 6, 1)).astype("float32"), rng.integers(0, 3, 40)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3), keras.layers.Flatten(), keras.layers.Dense(3)]
    )
    trainer = Trainer(
        model,
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        train_step=numpy_step,
        options=CompileOptions(steps_per_execution=64),
    )
    epochs = -(-XLA_AUTO_MIN_STEPS // 40)  # of 40 steps
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = trainer.fit(InMemory(x, y, batch_size=1, seed=0), epochs=epochs).history
    assert len(history["loss"]) == epochs


def test_fit_on_one_device_never_makes_the_epochs_dataset(monkeypatch):
    # tf.data captures tensors by value: a dataset of the epoch would hold another copy of the arrays.
    monkeypatch.setattr(Epoch, "dataset", lambda self: pytest.fail("Epoch.dataset() made on one device"))
    x, y = arrays()
    val = data.make_dataset(x[:40], y[:40], batch_size=16, shuffle=False)
    history = trainer_for(False).fit(InMemory(x, y, batch_size=16, seed=3), validation_data=val, epochs=2).history
    assert len(history["loss"]) == len(history["val_loss"]) == 2


MEMORY_SCRIPT = """
import re, numpy as np, keras, gradloop
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
def trainer():
    return gradloop.Trainer(keras.Sequential([keras.Input((784,)), keras.layers.Dense(10)]), optimizer="sgd",
                            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                            options=gradloop.CompileOptions(jit_compile=False))
x = np.random.default_rng(0).random((100_000, 784), dtype=np.float32)  # 314 MB
y = np.random.default_rng(1).integers(0, 10, 100_000)
trainer().fit(gradloop.InMemory(x[:64], y[:64], batch_size=32), epochs=1, verbose=0)  # TensorFlow's own start-up
before = rss()
data = gradloop.InMemory(x, y, batch_size=1000)
made = rss()
trainer().fit(data, epochs=1, verbose=0)
print((made - before) / x.nbytes, (rss() - before) / x.nbytes)
"""


def test_in_memory_data_and_its_fit_hold_one_copy_of_the_arrays():
    """Measured in a fresh process: ``InMemory`` keeps one tensor copy of the arrays (not the two a numpy
    conversion leaves for a while), and its fit adds none (a dataset of them would hold another)."""
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    made, fitted = map(float, result.stdout.split()[-2:])
    assert 0.8 < made < 1.4 and 0.8 < fitted < 1.4, (
        f"copies of the arrays: {made:.2f} when made, {fitted:.2f} after fit"
    )
