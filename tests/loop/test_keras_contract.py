"""Keras' training contract in Trainer: each item against model.fit / evaluate / predict on the same
initial weights and the same data order (Keras' own optimizer update: ``fused_optimizer=False``)."""

from __future__ import annotations

import io

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradloop import CompileOptions, Trainer
from gradloop.loop.progress import Progress

N, DIM, CLASSES = 120, 6, 3
KERAS_UPDATE = CompileOptions(fused_optimizer=False, steps_per_execution=4)


def data(n: int = N, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, DIM)).astype("float32")
    y = np.argmax(x[:, :CLASSES], axis=1).astype("int64")
    weight = rng.uniform(0.1, 3.0, size=n).astype("float32")
    return x, y, weight


def mlp(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((DIM,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(hidden))


def twins(build=mlp):
    """Two models with the same initial weights: ours and Keras'."""
    ours, theirs = build(), build()
    theirs.set_weights(ours.get_weights())
    return ours, theirs


def sparse_ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def assert_same_history(ours: dict, theirs: dict, rel: float = 1e-5) -> None:
    assert set(ours) - {"train_time"} == set(theirs)
    for key, values in theirs.items():
        assert ours[key] == pytest.approx(values, rel=rel, abs=1e-7), key


def assert_same_weights(ours: keras.Model, theirs: keras.Model) -> None:
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------- sample and class weights


def test_sample_weights_weigh_the_loss_and_the_weighted_metrics_as_keras_does():
    x, y, w = data()
    ds = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(16)  # 120 = 7 batches of 16 and one of 8
    val = tf.data.Dataset.from_tensor_slices((x[:50], y[:50], w[:50])).batch(20)
    ours, theirs = twins()
    compile_args = dict(loss=sparse_ce(), metrics=["accuracy"], weighted_metrics=["accuracy"])
    history = (
        Trainer(ours, optimizer=keras.optimizers.Adam(1e-2), options=KERAS_UPDATE, **compile_args)
        .fit(ds, validation_data=val, epochs=3, verbose=0)
        .history
    )
    theirs.compile(optimizer=keras.optimizers.Adam(1e-2), **compile_args)
    reference = theirs.fit(ds, validation_data=val, epochs=3, verbose=0).history
    assert_same_history(history, reference)
    assert "weighted_accuracy" in history and history["weighted_accuracy"] != history["accuracy"]
    assert_same_weights(ours, theirs)


def test_class_weights_weigh_each_sample_by_its_class_as_keras_does():
    x, y, _ = data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    class_weight = {0: 0.5, 1: 4.0, 2: 1.0}
    ours, theirs = twins()
    compile_args = dict(loss=sparse_ce(), weighted_metrics=["accuracy"])
    history = (
        Trainer(ours, optimizer=keras.optimizers.Adam(1e-2), options=KERAS_UPDATE, **compile_args)
        .fit(ds, validation_data=ds, epochs=2, class_weight=class_weight, verbose=0)
        .history
    )
    theirs.compile(optimizer=keras.optimizers.Adam(1e-2), **compile_args)
    reference = theirs.fit(ds, validation_data=ds, epochs=2, class_weight=class_weight, verbose=0).history
    assert_same_history(history, reference)
    assert_same_weights(ours, theirs)


def test_a_class_without_a_weight_weighs_1_where_keras_fails():
    x, y, _ = data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    histories = [
        Trainer(mlp(), optimizer="sgd", loss=sparse_ce(), options=KERAS_UPDATE)
        .fit(ds, epochs=1, class_weight=weights, verbose=0)
        .history["loss"]
        for weights in ({0: 2.0}, {0: 2.0, 1: 1.0, 2: 1.0})
    ]
    assert histories[0] == histories[1]


def test_class_weights_read_one_hot_labels_by_their_largest_entry():
    x, y, _ = data()
    ds = tf.data.Dataset.from_tensor_slices((x, keras.utils.to_categorical(y, CLASSES))).batch(32)
    ours, theirs = twins()
    loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    history = (
        Trainer(ours, optimizer="sgd", loss=loss, options=KERAS_UPDATE)
        .fit(ds, epochs=2, class_weight={0: 1.0, 1: 1.0, 2: 3.0}, verbose=0)
        .history
    )
    theirs.compile(optimizer="sgd", loss=loss)
    assert_same_history(history, theirs.fit(ds, epochs=2, class_weight={0: 1.0, 1: 1.0, 2: 3.0}, verbose=0).history)


def test_class_weights_with_sample_weights_are_refused():
    x, y, w = data()
    trainer = Trainer(mlp(), optimizer="adam", loss=sparse_ce())
    with pytest.raises(ValueError, match="sample weights and class_weight"):
        trainer.fit(tf.data.Dataset.from_tensor_slices((x, y, w)).batch(16), class_weight={0: 2.0}, verbose=0)


def test_a_three_argument_step_keeps_working_and_is_refused_weighted_data_with_the_fix():
    x, y, w = data()

    def my_step(trainer, xb, yb):
        with tf.GradientTape() as tape:
            loss = trainer.compute_loss(yb, trainer.model(xb, training=True))
        variables = trainer.model.trainable_variables
        trainer.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss, trainer.model(xb)

    trainer = Trainer(mlp(), optimizer="adam", loss=sparse_ce(), train_step=my_step)
    assert len(trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), verbose=0).history["loss"]) == 1
    trainer = Trainer(mlp(), optimizer="adam", loss=sparse_ce(), train_step=my_step)
    with pytest.raises(TypeError, match="takes none: give it a parameter sample_weight=None"):
        trainer.fit(tf.data.Dataset.from_tensor_slices((x, y, w)).batch(16), verbose=0)


# --------------------------------------------------------------------- several inputs and outputs


def two_in_two_out(seed: int = 0) -> keras.Model:
    """An image and numeric columns in; a class and a number out."""
    keras.utils.set_random_seed(seed)
    image = keras.Input((4, 4, 1), name="image")
    columns = keras.Input((DIM,), name="columns")
    joined = keras.layers.Concatenate()([keras.layers.Flatten()(image), columns])
    hidden = keras.layers.Dense(16, activation="relu")(joined)
    kind = keras.layers.Dense(CLASSES, name="kind")(hidden)
    size = keras.layers.Dense(1, name="size")(hidden)
    return keras.Model({"image": image, "columns": columns}, {"kind": kind, "size": size})


def two_in_two_out_data():
    x, y, _ = data()
    images = np.random.default_rng(1).normal(size=(N, 4, 4, 1)).astype("float32")
    size = (x[:, 3] * 2 + images.mean(axis=(1, 2, 3))).astype("float32")[:, None]
    return tf.data.Dataset.from_tensor_slices(({"image": images, "columns": x}, {"kind": y, "size": size})).batch(16)


def test_several_inputs_and_outputs_with_a_loss_and_metrics_per_output_match_keras_and_its_names():
    ds = two_in_two_out_data()
    ours, theirs = twins(two_in_two_out)
    compile_args = dict(
        loss={"kind": sparse_ce(), "size": "mse"},
        loss_weights={"kind": 1.0, "size": 0.5},
        metrics={"kind": ["accuracy"], "size": ["mae"]},
    )
    history = (
        Trainer(ours, optimizer=keras.optimizers.Adam(1e-2), options=KERAS_UPDATE, **compile_args)
        .fit(ds, validation_data=ds, epochs=2, verbose=0)
        .history
    )
    theirs.compile(optimizer=keras.optimizers.Adam(1e-2), **compile_args)
    reference = theirs.fit(ds, validation_data=ds, epochs=2, verbose=0).history
    assert {"kind_loss", "size_loss", "kind_accuracy", "size_mae", "val_size_mae"} <= set(reference)
    assert_same_history(history, reference)
    assert_same_weights(ours, theirs)


def test_a_list_of_losses_follows_the_outputs_order():
    ds = two_in_two_out_data().map(lambda x, y: (x, (y["kind"], y["size"])))
    ours, theirs = twins(lambda: (lambda m: keras.Model(m.inputs, [m.outputs[0], m.outputs[1]]))(two_in_two_out()))
    compile_args = dict(loss=[sparse_ce(), "mse"], loss_weights=[0.3, 2.0])
    history = Trainer(ours, optimizer="sgd", options=KERAS_UPDATE, **compile_args).fit(ds, epochs=2, verbose=0).history
    theirs.compile(optimizer="sgd", **compile_args)
    assert_same_history(history, theirs.fit(ds, epochs=2, verbose=0).history)


# --------------------------------------------------------------------- predict


def test_predict_returns_what_model_predict_returns_for_arrays_datasets_and_several_outputs():
    x, y, _ = data(101)
    model = mlp()
    trainer = Trainer(model, optimizer="adam", loss=sparse_ce(), options=CompileOptions(steps_per_execution=3))
    np.testing.assert_array_equal(trainer.predict(x, batch_size=10), model.predict(x, batch_size=10, verbose=0))
    by_dataset = trainer.predict(tf.data.Dataset.from_tensor_slices((x, y)).batch(10))  # y is ignored
    np.testing.assert_array_equal(by_dataset, model.predict(x, batch_size=10, verbose=0))

    double = two_in_two_out()
    inputs = next(iter(two_in_two_out_data().unbatch().batch(N)))[0]
    ours = Trainer(double, optimizer="adam", loss={"kind": sparse_ce(), "size": "mse"}).predict(
        {k: v.numpy() for k, v in inputs.items()}, batch_size=7
    )
    theirs = double.predict({k: v.numpy() for k, v in inputs.items()}, batch_size=7, verbose=0)
    assert set(ours) == {"kind", "size"} and ours["kind"].shape == (N, CLASSES)
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name])


# --------------------------------------------------------------------- callbacks, EMA, validation_freq


class Recorder(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __getattribute__(self, name):
        if name.startswith("on_"):
            return lambda *args, **kwargs: self.calls.append((name, *[a for a in args if isinstance(a, int)]))
        return super().__getattribute__(name)


def test_every_callback_hook_is_called_when_keras_calls_it():
    x, y, _ = data(100)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(10)  # 10 steps, groups of 4: 4, 4, 2
    val = tf.data.Dataset.from_tensor_slices((x[:30], y[:30])).batch(10)
    ours, theirs = Recorder(), Recorder()
    trainer = Trainer(mlp(), optimizer="adam", loss=sparse_ce(), options=KERAS_UPDATE)
    trainer.fit(ds, validation_data=val, epochs=2, callbacks=[ours], verbose=0)
    trainer.evaluate(val, callbacks=[ours])
    trainer.predict(x[:25], batch_size=10, callbacks=[ours])
    model = mlp()
    model.compile(optimizer="adam", loss=sparse_ce(), steps_per_execution=4)
    model.fit(ds, validation_data=val, epochs=2, callbacks=[theirs], verbose=0)
    model.evaluate(val, callbacks=[theirs], verbose=0)
    model.predict(x[:25], batch_size=10, callbacks=[theirs], verbose=0)
    assert [c[0] for c in ours.calls] == [c[0] for c in theirs.calls]
    # The batch indices too, except that Keras ends a short last group at begin + steps_per_execution - 1
    # (batch 11 of 10); the hook here names the last batch that ran.
    last = {"on_train_batch_end": 9, "on_test_batch_end": 2, "on_predict_batch_end": 2}
    assert ours.calls == [(c[0], min(c[1], last[c[0]])) if c[0] in last else c for c in theirs.calls]


def ema_model():
    return mlp(seed=5)


def test_swap_ema_weights_validates_on_the_moving_average_and_fit_ends_with_it_as_in_keras():
    x, y, _ = data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    ours, theirs = twins(ema_model)

    def adam():
        return keras.optimizers.Adam(1e-2, use_ema=True, ema_momentum=0.9)

    history = (
        Trainer(ours, optimizer=adam(), loss=sparse_ce(), metrics=["accuracy"], options=KERAS_UPDATE)
        .fit(ds, validation_data=ds, epochs=3, callbacks=[keras.callbacks.SwapEMAWeights()], verbose=0)
        .history
    )
    theirs.compile(optimizer=adam(), loss=sparse_ce(), metrics=["accuracy"])
    reference = theirs.fit(ds, validation_data=ds, epochs=3, callbacks=[keras.callbacks.SwapEMAWeights()], verbose=0)
    assert_same_history(history, reference.history)
    assert_same_weights(ours, theirs)  # both hold the averages now
    plain = Trainer(twins(ema_model)[0], optimizer=adam(), loss=sparse_ce(), options=KERAS_UPDATE)
    plain_history = plain.fit(ds, validation_data=ds, epochs=3, verbose=0).history
    assert plain_history["loss"] == pytest.approx(history["loss"], rel=1e-6)  # the same training
    assert plain_history["val_loss"] != pytest.approx(history["val_loss"], rel=1e-3)  # validated on other weights


@pytest.mark.parametrize("validation_freq", [2, [1, 3]])
def test_validation_freq_validates_the_epochs_keras_validates(validation_freq):
    x, y, _ = data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    ours, theirs = twins()
    history = (
        Trainer(ours, optimizer="adam", loss=sparse_ce(), metrics=["accuracy"], options=KERAS_UPDATE)
        .fit(ds, validation_data=ds, epochs=4, validation_freq=validation_freq, verbose=0)
        .history
    )
    theirs.compile(optimizer="adam", loss=sparse_ce(), metrics=["accuracy"])
    reference = theirs.fit(ds, validation_data=ds, epochs=4, validation_freq=validation_freq, verbose=0).history
    assert len(history["val_loss"]) == 2 and len(history["loss"]) == 4
    assert_same_history(history, reference)


def test_the_history_figure_draws_validation_at_the_validated_epochs():
    from gradloop.pages import plots

    ds = tf.data.Dataset.from_tensor_slices(data()[:2]).batch(16)
    fitted = Trainer(mlp(), optimizer="adam", loss=sparse_ce()).fit(
        ds, validation_data=ds, epochs=4, validation_freq=2, verbose=0
    )
    figure = plots.history_figure(fitted)
    lines = {line.get_label(): list(line.get_xdata()) for ax in figure.axes for line in ax.lines}
    assert lines == {"train_loss": [1, 2, 3, 4], "val_loss": [2, 4]}


@pytest.mark.parametrize("bad", [0, -1, True, [0, 2], "2"])
def test_a_bad_validation_freq_is_refused(bad):
    with pytest.raises(ValueError, match="validation_freq must be"):
        Trainer(mlp(), optimizer="adam", loss=sparse_ce()).fit(
            tf.data.Dataset.from_tensor_slices(data()[:2]).batch(16), validation_freq=bad, verbose=0
        )


# --------------------------------------------------------------------- progress


def test_fit_shows_progress_by_default_and_nothing_with_verbose_0(capsys):
    ds = tf.data.Dataset.from_tensor_slices(data()[:2]).batch(16)
    Trainer(mlp(), optimizer="adam", loss=sparse_ce(), metrics=["accuracy"]).fit(ds, epochs=2)
    out = capsys.readouterr().out
    assert "epoch 1/2" in out and "epoch 2/2" in out and "accuracy" in out
    Trainer(mlp(), optimizer="adam", loss=sparse_ce()).fit(ds, epochs=2, verbose=0)
    assert capsys.readouterr().out == ""


def test_verbose_2_prints_one_line_per_epoch(capsys):
    ds = tf.data.Dataset.from_tensor_slices(data()[:2]).batch(4)  # 30 steps
    Trainer(mlp(), optimizer="adam", loss=sparse_ce()).fit(ds, epochs=3, verbose=2)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["epoch", "1/3"], ["epoch", "2/3"], ["epoch", "3/3"]]


def test_progress_in_a_file_prints_plain_lines_not_a_bar():
    stream = io.StringIO()
    ds = tf.data.Dataset.from_tensor_slices(data()[:2]).batch(4)
    trainer = Trainer(mlp(), optimizer="adam", loss=sparse_ce(), options=CompileOptions(steps_per_execution=1))
    trainer.fit(ds, epochs=1, callbacks=[Progress(stream=stream)], verbose=0)
    text = stream.getvalue()
    assert "\r" not in text and "epoch 1 step" in text and text.rstrip().splitlines()[-1].startswith("epoch 1/1")


# --------------------------------------------------------------------- under a strategy

# Two CPU replicas against one device: weighted samples (an uneven last batch included), two outputs, predict.
ON_TWO_REPLICAS = """
import json, sys
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
sys.path.insert(0, sys.argv[1])
from test_keras_contract import two_in_two_out, two_in_two_out_data, data, sparse_ce, N
from gradloop import CompileOptions, Trainer
ds = two_in_two_out_data().unbatch().batch(25)  # 120 = 4 x 25 + 20: the last batch splits 10 and 10
weights = tf.data.Dataset.from_tensor_slices(data()[2]).batch(25)
ds = tf.data.Dataset.zip(ds, weights).map(lambda xy, w: (*xy, w))
results = {}
# One strategy object for both parts: a second MirroredStrategy in a process can reuse the first's collective keys.
strategies = [("one", tf.distribute.get_strategy()), ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))]
for name, strategy in strategies:
    with strategy.scope():
        trainer = Trainer(two_in_two_out(), optimizer=keras.optimizers.Adam(1e-2), strategy=strategy,
                          loss={"kind": sparse_ce(), "size": "mse"}, metrics={"kind": ["accuracy"]},
                          weighted_metrics={"size": ["mae"]}, \
options=CompileOptions(fused_optimizer=False, steps_per_execution=3))
    history = trainer.fit(ds, validation_data=ds, epochs=2, verbose=0).history
    predicted = trainer.predict(ds)
    results[name] = {"history": history, "kind": predicted["kind"].tolist(), "replicas": strategy.num_replicas_in_sync}
# One output with class weights; predict before any fit (Keras' metrics are built on the first batch with labels).
from test_keras_contract import mlp, data as table
x, y, _ = table()
plain_ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(25)
for name, strategy in strategies:
    with strategy.scope():
        trainer = Trainer(mlp(), optimizer=keras.optimizers.Adam(1e-2), strategy=strategy, loss=sparse_ce(),
                          weighted_metrics=["accuracy"], \
options=CompileOptions(fused_optimizer=False, steps_per_execution=3))
    before = trainer.predict(x, batch_size=25)
    history = trainer.fit(plain_ds, validation_data=plain_ds, epochs=2, \
class_weight={0: 3.0, 1: 0.5, 2: 1.0}, verbose=0).history
    results[name]["weighted"] = {"history": history, "before": before.tolist()}
print(json.dumps(results))
"""


def test_weighted_samples_two_outputs_and_predict_on_two_replicas_equal_one_device():
    import json
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run(
        [sys.executable, "-c", ON_TWO_REPLICAS, str(Path(__file__).parent)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    one, two = results["one"], results["two"]
    assert (one["replicas"], two["replicas"]) == (1, 2)
    assert (
        set(one["history"])
        == set(two["history"])
        >= {"kind_loss", "size_loss", "kind_accuracy", "size_mae", "val_size_mae"}
    )
    for key, values in one["history"].items():
        # Keras averages each output's own loss over batches, not samples (each replica's part of a batch
        # counts once): those two differ by the uneven splits; the loss trained on and the metrics do not.
        per_output_loss = key.endswith("_loss") and key not in ("loss", "val_loss")
        if key != "train_time":
            assert two["history"][key] == pytest.approx(values, rel=1e-2 if per_output_loss else 1e-5, abs=1e-6), key
    np.testing.assert_allclose(two["kind"], one["kind"], rtol=1e-5, atol=1e-5)
    assert len(one["kind"]) == N
    for key, values in one["weighted"]["history"].items():
        if key != "train_time":
            assert two["weighted"]["history"][key] == pytest.approx(values, rel=1e-5, abs=1e-6), key
    np.testing.assert_allclose(two["weighted"]["before"], one["weighted"]["before"], rtol=1e-5, atol=1e-6)


def test_class_weights_with_gradient_accumulation_match_keras():
    x, y, _ = data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    ours, theirs = twins()

    def sgd():
        return keras.optimizers.SGD(0.1, momentum=0.9, gradient_accumulation_steps=3)

    class_weight = {0: 2.0, 1: 0.5, 2: 1.0}
    history = (
        Trainer(ours, optimizer=sgd(), loss=sparse_ce(), options=KERAS_UPDATE)
        .fit(ds, epochs=2, class_weight=class_weight, verbose=0)
        .history
    )
    theirs.compile(optimizer=sgd(), loss=sparse_ce())
    assert_same_history(history, theirs.fit(ds, epochs=2, class_weight=class_weight, verbose=0).history)
    assert_same_weights(ours, theirs)


def test_ema_with_early_stopping_restoring_the_best_weights_ends_as_keras_does():
    x, y, _ = data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    val = tf.data.Dataset.from_tensor_slices((x[::-1], y[::-1])).batch(16)
    ours, theirs = twins(ema_model)

    def setup():
        return (
            keras.optimizers.Adam(5e-2, use_ema=True, ema_momentum=0.5),
            [keras.callbacks.EarlyStopping(patience=1, restore_best_weights=True, start_from_epoch=0)],
        )

    optimizer, callbacks = setup()
    Trainer(ours, optimizer=optimizer, loss=sparse_ce(), options=KERAS_UPDATE).fit(
        ds, validation_data=val, epochs=6, callbacks=callbacks, verbose=0
    )
    optimizer, callbacks = setup()
    theirs.compile(optimizer=optimizer, loss=sparse_ce())
    theirs.fit(ds, validation_data=val, epochs=6, callbacks=callbacks, verbose=0)
    assert_same_weights(ours, theirs)


def test_predict_before_fit_takes_a_tuple_as_several_inputs_and_outputs_of_another_length():
    keras.utils.set_random_seed(0)
    a, b = keras.Input((None, 2)), keras.Input((None, 2))
    model = keras.Model((a, b), keras.layers.Dense(3)(keras.layers.Add()([a, b])))
    trainer = Trainer(model, optimizer="adam", loss="mse")
    rng = np.random.default_rng(0)
    short = (rng.normal(size=(8, 10, 2)).astype("float32"), rng.normal(size=(8, 10, 2)).astype("float32"))
    np.testing.assert_array_equal(trainer.predict(short), model.predict(short, verbose=0))
    longer = (rng.normal(size=(8, 12, 2)).astype("float32"), rng.normal(size=(8, 12, 2)).astype("float32"))
    assert trainer.predict(longer).shape == (8, 12, 3)
    target = rng.normal(size=(8, 10, 3)).astype("float32")
    history = trainer.fit(tf.data.Dataset.from_tensor_slices((short, target)).batch(4), epochs=2, verbose=0).history
    assert len(history["loss"]) == 2 and trainer.metric_names == []


def test_a_step_taking_sample_weight_by_keyword_gets_the_weights():
    x, y, w = data()
    seen = []

    def keyword_step(trainer, xb, yb, *, sample_weight=None):
        seen.append(sample_weight is not None)
        with tf.GradientTape() as tape:
            y_pred = trainer.model(xb, training=True)
            loss = trainer.compute_loss(yb, y_pred, sample_weight)
        variables = trainer.model.trainable_variables
        trainer.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss, y_pred

    ours, theirs = twins()
    history = (
        Trainer(ours, optimizer="sgd", loss=sparse_ce(), train_step=keyword_step, options=KERAS_UPDATE)
        .fit(tf.data.Dataset.from_tensor_slices((x, y, w)).batch(16), epochs=1, verbose=0)
        .history
    )
    theirs.compile(optimizer="sgd", loss=sparse_ce())
    assert_same_history(
        history, theirs.fit(tf.data.Dataset.from_tensor_slices((x, y, w)).batch(16), epochs=1, verbose=0).history
    )
    assert seen == [True]  # traced once, with the weights


def test_arrays_where_a_dataset_belongs_are_one_sentence():
    x, y, _ = data()
    trainer = Trainer(mlp(), optimizer="adam", loss=sparse_ce())
    with pytest.raises(TypeError, match=r"validation_data must be a tf.data.Dataset of batches, got tuple; for arrays"):
        trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), validation_data=(x, y), verbose=0)
    with pytest.raises(TypeError, match=r"train must be a tf.data.Dataset of batches, got ndarray"):
        trainer.fit(x, verbose=0)


def test_a_models_own_train_step_is_named_as_unused():
    class Custom(keras.Model):
        def train_step(self, data):
            raise AssertionError("not called")

    inputs = keras.Input((DIM,))
    with pytest.warns(UserWarning, match="Custom.train_step is not used: gradloop runs its own step"):
        Trainer(Custom(inputs, keras.layers.Dense(CLASSES)(inputs)), optimizer="adam", loss=sparse_ce())
