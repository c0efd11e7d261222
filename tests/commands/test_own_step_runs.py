"""The commands after train on runs of a model that brings its own training (issue 27, sections 1, 3, 4):
evaluate runs its test_step, predict its predict_step (call), report plots every logged value, export
serves its call(), runs/compare/sweep take any logged key; a model that did not serialize is rebuilt
through the run's function and model.weights.h5, with --trust-code only.

The runs are made as ``gradloop train --model FILE.py:FUNC`` makes them: the library's
``Trainer(model)`` fits the compiled model, and the run folder gets run.json, history.json (the
tutorial's names), model.weights.h5 always, model.keras only when the model serializes, and the
model's file copied as model_source.py (:func:`make_run`).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

import gradloop
from gradloop.app import assemble, models, own_step, specs
from gradloop.app.config import build_config
from gradloop.cli import main
from gradloop.commands import evaluate as evaluation
from gradloop.errors import RunDirError
from gradloop.run import files as run_files
from gradloop.run import folder as run_folder
from gradloop.run import history as run_history

FEATURES, SAMPLES, BATCH = 6, 48, 8

# The user's files: keras.io's guide GAN (examples/guide_gan.py: no call, no test_step, no get_config, so it does
# not serialize) and an autoencoder with its own train_step and test_step whose call() is its inference.
GAN_FILE = Path(__file__).resolve().parents[2] / "examples" / "guide_gan.py"
MODEL_PY = """
import keras
import tensorflow as tf


class AutoEncoder(keras.Model):
    def __init__(self, features, **kwargs):
        super().__init__(**kwargs)
        self.features = features
        self.encode = keras.layers.Dense(3, activation="tanh")
        self.decode = keras.layers.Dense(features)
        self.tracker = keras.metrics.Mean(name="reconstruction")

    @property
    def metrics(self):
        return [self.tracker]

    def call(self, x, training=False):
        return self.decode(self.encode(x))

    def error(self, data, training):
        x = data[0] if isinstance(data, tuple) else data
        return tf.reduce_mean(tf.square(self(x, training=training) - x))

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss = self.error(data, True)
        self.optimizer.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)
        self.tracker.update_state(loss)
        return {"reconstruction": self.tracker.result()}

    def test_step(self, data):
        self.tracker.update_state(self.error(data, False))
        return {"reconstruction": self.tracker.result()}

    def get_config(self):
        return {**super().get_config(), "features": self.features}


def autoencoder(input_shape):
    keras.utils.set_random_seed(0)
    model = AutoEncoder(input_shape[-1])
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    return model
"""


def x_only(n: int = SAMPLES, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, FEATURES)).astype(np.float32)


def make_run(path: Path, function: str, *, serialized: bool, epochs: int = 2) -> Path:
    """A finished run of ``function`` ("gan": the guide GAN's ``build``, "autoencoder") on x alone (task
    "none"), written as train writes one."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path.parent / "model.py").write_text(GAN_FILE.read_text() if function == "gan" else MODEL_PY)
    function = "build" if function == "gan" else function
    np.savez(path.parent / "x.npz", x=x_only())
    val_fraction = 0.25 if function == "autoencoder" else 0.0  # a GAN validates nothing: no test_step
    config = build_config(
        {
            "data": str(path.parent / "x.npz"),
            "model": f"{path.parent / 'model.py'}:{function}",
            "epochs": epochs,
            "batch_size": BATCH,
            "val_fraction": val_fraction,
        }
    )
    data = assemble.load_run_data(
        specs.data_spec(config), classes=None, val_fraction=val_fraction, seed=config.seed, notify=lambda line: None
    )
    model = models.user_model(config.model, input_shape=data.train.element_shape)
    trainer = gradloop.Trainer(model)
    val = data.val.batches(None, BATCH) if data.val is not None and data.val.n else None
    history = trainer.fit(data.train.batches(None, BATCH), validation_data=val, epochs=epochs, verbose=0).history
    shutil.copy(path.parent / "model.py", path / "model_source.py")
    run = run_folder.RunDir(path)
    run.start(
        {
            "config": config.to_dict(),
            "data_source": data.description,
            "task": data.task,
            "classes": None,
            "n_classes": None,
            "n_outputs": None,
            "n_train": data.train.n,
            "n_val": data.val.n if data.val is not None else 0,
            "data": {
                "kind": data.kind,
                "fingerprint": data.fingerprint,
                "preprocessing": data.preprocessing,
                "source_classes": None,
            },
            "model": model.name,
            "model_source": f"model_source.py:{function}",
            "model_files": own_step.saved_files(serialized=serialized),  # as train records it
            "parameters": sum(int(np.prod(v.shape)) for v in model.weights),  # an unbuilt GAN has no count_params
            "best": dict(run_history.BEST),  # what train records when nothing names a measure
        }
    )
    for epoch in range(epochs):
        run.record_epoch({k: v[epoch] for k, v in history.items()})
    model.built = True  # a GAN has no call() to build it by; its parts are built (the train side's assumption)
    model.save_weights(path / run_files.WEIGHTS)
    if serialized:
        model.save(path / "model.keras")
    run.finished(seconds=1.0)
    return path


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("gan") / "run", "gan", serialized=False)


@pytest.fixture(scope="module")
def autoencoder_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("ae") / "run", "autoencoder", serialized=False)


@pytest.fixture(scope="module")
def saved_autoencoder_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("ae_saved") / "run", "autoencoder", serialized=True)


def trained_autoencoder(run: Path) -> keras.Model:
    """The run's model as training left it: rebuilt and its weights loaded, without gradloop's loader."""
    from gradloop import user_code

    model = user_code.load_function(f"{run / 'model_source.py'}:autoencoder", what="test")((FEATURES,))
    model(np.zeros((1, FEATURES), np.float32))
    model.load_weights(run / "model.weights.h5")
    return model


# --------------------------------------------------------------------- loading


def test_a_model_that_did_not_serialize_is_rebuilt_from_its_function_and_weights(autoencoder_run):
    with pytest.raises(RunDirError, match="did not serialize: it is rebuilt through its function"):
        evaluation.load_model(autoencoder_run, input_shape=(FEATURES,))
    model = evaluation.load_model(autoencoder_run, trust_code=True, input_shape=(FEATURES,))
    reference = trained_autoencoder(autoencoder_run)
    assert len(model.get_weights()) == len(reference.get_weights()) > 0
    for ours, theirs in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(ours, theirs)


def test_a_run_that_says_nothing_is_read_from_its_files(autoencoder_run, saved_autoencoder_run):
    """An older run.json without model_files: weights and a function but no model.keras means rebuilt."""
    info = json.loads((autoencoder_run / "run.json").read_text())
    del info["model_files"]
    assert not evaluation.run_model.serialized(info, autoencoder_run)
    info = json.loads((saved_autoencoder_run / "run.json").read_text())
    del info["model_files"]
    assert evaluation.run_model.serialized(info, saved_autoencoder_run)


# --------------------------------------------------------------------- evaluate


def test_evaluate_runs_the_models_own_test_step_and_prints_its_logs(autoencoder_run, capsys):
    assert main(["evaluate", str(autoencoder_run), "--split", "val", "--json", "--trust-code"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "none" and result["step"] == "test_step" and result["n_samples"] == 12
    assert "accuracy" not in result and "confusion_matrix" not in result
    # the number model.evaluate gives on the same examples
    data = np.load(autoencoder_run.parent / "x.npz")["x"]
    info = json.loads((autoencoder_run / "run.json").read_text())
    config = evaluation.run_config(info, autoencoder_run)
    examples, _, _ = evaluation.own_data(config, info, autoencoder_run, data_path=None, split="val", notify=print)
    assert examples.n == 12 and data.shape == (SAMPLES, FEATURES)
    model = trained_autoencoder(autoencoder_run)
    expected = model.evaluate(examples.x, batch_size=256, verbose=0, return_dict=True)
    assert result["logs"] == pytest.approx(expected, rel=1e-6)
    # the last epoch's val_reconstruction is the same step on the same split, in training's batches
    history = json.loads((autoencoder_run / "history.json").read_text())
    in_batches = model.evaluate(examples.x, batch_size=BATCH, verbose=0, return_dict=True)
    assert in_batches["reconstruction"] == pytest.approx(history["val_reconstruction"][-1], rel=1e-5)

    assert main(["evaluate", str(autoencoder_run), "--split", "val", "--trust-code"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].startswith("val split of ") and text[0].endswith(": 12 samples")
    assert text[1] == f"test_step: reconstruction {result['logs']['reconstruction']:.4f}"


def test_evaluate_a_serialized_model_loads_model_keras(saved_autoencoder_run, capsys):
    assert main(["evaluate", str(saved_autoencoder_run), "--split", "val", "--json", "--trust-code"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == "test_step" and set(result["logs"]) == {"reconstruction"}


# --------------------------------------------------------------------- predict


def test_predict_writes_the_outputs_of_call_as_out_columns(autoencoder_run, tmp_path, capsys):
    x = x_only(5, seed=9)
    np.savez(tmp_path / "new.npz", x=x)
    out = tmp_path / "p.csv"
    assert main(["predict", str(autoencoder_run), str(tmp_path / "new.npz"), "--out", str(out), "--trust-code"]) == 0
    rows = list(csv.reader(io.StringIO(out.read_text())))
    assert rows[0] == ["index", *(f"out_{i}" for i in range(FEATURES))]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2", "3", "4"]
    expected = trained_autoencoder(autoencoder_run).predict(x, verbose=0)
    np.testing.assert_array_equal(np.array([[np.float32(v) for v in r[1:]] for r in rows[1:]]), expected)


# --------------------------------------------------------------------- report, export


def test_report_plots_every_logged_value_and_no_evaluation_figures(gan_run, capsys):
    assert main(["report", str(gan_run), "--split", "train", "--trust-code"]) == 0
    files = sorted(p.name for p in (gan_run / "report").iterdir())
    assert files == ["history_d_loss.png", "history_g_loss.png", "report.html"]
    html = (gan_run / "report" / "report.html").read_text()
    assert "d_loss per epoch" in html and "g_loss per epoch" in html
    assert "has no test_step of its own" in html and "confusion" not in html.lower()
    # the default split, val, is empty (a GAN validates nothing): the page is the history, and says why
    assert main(["report", str(gan_run), "--trust-code"]) == 0
    assert "held out no validation data" in (gan_run / "report" / "report.html").read_text()


def test_report_of_a_model_with_its_own_test_step_shows_its_logs(autoencoder_run):
    assert main(["report", str(autoencoder_run), "--trust-code"]) == 0
    files = sorted(p.name for p in (autoencoder_run / "report").iterdir())
    assert files == ["history_reconstruction.png", "report.html"]
    html = (autoencoder_run / "report" / "report.html").read_text()
    assert "what the model&#x27;s test_step logs" in html or "what the model's test_step logs" in html


def test_logged_figure_draws_train_and_val_curves():
    from gradloop.pages import plots

    history = {"train_d_loss": [1.0, 0.5], "val_d_loss": [None, 0.7], "train_time": [1.0, 1.0]}
    assert plots.logged_names(history) == ["d_loss"]
    figure = plots.logged_figure(history, "d_loss")
    try:
        (ax,) = figure.axes
        assert [line.get_label() for line in ax.lines] == ["train_d_loss", "val_d_loss"]
        assert list(ax.lines[1].get_xdata()) == [2] and list(ax.lines[1].get_ydata()) == [0.7]
    finally:
        plots.plt.close(figure)


def test_export_serves_the_rebuilt_models_call(autoencoder_run, tmp_path, capsys):
    import tensorflow as tf

    out = tmp_path / "served"
    assert main(["export", str(autoencoder_run), "--out", str(out), "--trust-code"]) == 0
    served = tf.saved_model.load(str(out))
    x = x_only(3, seed=5)
    expected = trained_autoencoder(autoencoder_run).predict(x, verbose=0)
    np.testing.assert_allclose(served.serve(tf.constant(x)).numpy(), expected, rtol=1e-6)


# --------------------------------------------------------------------- runs, compare, sweep


def test_runs_and_compare_judge_a_run_by_its_own_logged_loss(gan_run, autoencoder_run, tmp_path, capsys):
    from gradloop.commands import runs

    info = json.loads((gan_run / "run.json").read_text())
    history = json.loads((gan_run / "history.json").read_text())
    assert set(history) == {"train_d_loss", "train_g_loss", "train_time"}
    best = info["best"]
    assert best["metric"] == "train_d_loss" and best["value"] == min(history["train_d_loss"])
    assert runs.describe_best(best).startswith("train_d_loss ")
    best = json.loads((autoencoder_run / "run.json").read_text())["best"]
    assert best == run_history.BEST  # it logs no loss: which way is better is not gradloop's to guess

    out = tmp_path / "c.html"
    assert main(["compare", str(gan_run), str(autoencoder_run), "--out", str(out)]) == 0
    page = out.read_text()
    assert "final train_g_loss" in page and "final val_reconstruction" in page


def test_a_run_that_logs_a_loss_keeps_val_loss_as_its_default_best():
    assert run_history.default_best({"train_loss": [1.0], "train_auc": [0.5]}) == run_history.BEST
    assert run_history.default_best({"train_g_loss": [1.0], "val_d_loss": [2.0]}) == {
        "metric": "val_d_loss",
        "mode": "min",
    }
    assert run_history.progress({"train_g_loss": [2.0, 1.0]}, run_history.BEST)["best"] == {
        "metric": "train_g_loss",
        "mode": "min",
        "value": 1.0,
        "epoch": 2,
    }


def test_a_sweep_accepts_any_metric_the_models_own_step_logs(tmp_path):
    from gradloop.sweep import spec as sweep_spec
    from gradloop.sweep import trials

    (tmp_path / "model.py").write_text(MODEL_PY)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "xy.npz", x=rng.normal(size=(40, FEATURES)).astype(np.float32), y=np.arange(40) % 2)
    (tmp_path / "s.yaml").write_text(
        f"trials: 1\nmetric: val_reconstruction\ndirection: minimize\n"
        f"train: {{data: {tmp_path / 'xy.npz'}, model: '{tmp_path / 'model.py'}:autoencoder', epochs: 1}}\n"
        "space: {lr: [0.01]}\n"
    )
    spec = sweep_spec.read_spec(tmp_path / "s.yaml")
    trials.check_metric(spec, notify=lambda line: None)  # no error: the model logs its own names
