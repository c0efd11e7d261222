"""The learning-rate range test: its arithmetic (gradloop.loop.lr_range), the rate it sets at every
step of a compiled call, and ``gradloop lr-find`` on real data, whose suggestion trains the
reference MLP at least as well as the default rate."""

from __future__ import annotations

import io
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradloop import Trainer, cli
from gradloop.app.config import TrainConfig
from gradloop.app.train import train
from gradloop.loop import step as step_lib
from gradloop.loop.lr_range import LearningRateRangeTest, smooth, suggest_lr


def test_the_rates_grow_exponentially_from_start_to_end():
    test = LearningRateRangeTest(start_lr=1e-6, end_lr=1.0, steps=13)  # half a decade per step
    assert test.learning_rates()[::2] == pytest.approx([1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    assert test.epochs_for(steps_per_epoch=4) == 4


def test_the_smoothed_loss_is_bias_corrected():
    assert smooth(np.full(5, 2.0), 0.9) == pytest.approx([2.0] * 5)  # no pull towards 0 at the start
    assert smooth(np.array([1.0, 3.0]), 0.5) == pytest.approx([1.0, (0.25 + 1.5) / 0.75])


def test_the_suggestion_is_the_steepest_fall_before_the_minimum():
    lrs = np.logspace(-6, 0, 61)  # ten points a decade
    loss = 2.0 - np.tanh(2 * (np.log10(lrs) + 3))  # falls fastest at 1e-3
    loss[50:] = loss[49] + np.linspace(0, 5, 11)  # then rises
    assert suggest_lr(lrs, loss) == pytest.approx(1e-3)
    assert suggest_lr(lrs, np.linspace(1, 2, 61)) is None  # a loss that never falls suggests nothing


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"start_lr": 0.0}, "start_lr must be a finite number > 0"),
        ({"end_lr": math.inf}, "end_lr must be a finite number > 0"),
        ({"start_lr": 1.0, "end_lr": 0.1}, "must be above start_lr"),
        ({"steps": 9}, "steps must be an integer >= 10"),
        ({"smoothing": 1.0}, "smoothing must be in [0, 1)"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        LearningRateRangeTest(**kwargs)


def test_every_step_of_a_compiled_call_gets_its_own_rate():
    """SGD on a linear model, 8 steps an epoch in calls of up to 32 steps: the weights and each step's
    loss are those of the same 20 updates replayed in numpy at the test's rates (the calls run to the
    epoch's end, so steps 21 to 24 repeat the last rate)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]])).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
    test = LearningRateRangeTest(start_lr=1e-3, end_lr=1e-1, steps=20)
    trainer = Trainer(
        model,
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.MeanSquaredError(),
        train_step=test.watch(step_lib.train_step),
    )
    trainer.fit(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=test.epochs_for(8), callbacks=[test], verbose=0
    )

    rates, w, losses = test.learning_rates(), np.zeros((3, 1)), []
    for k in range(24):
        xb, yb = x[k % 8 * 8 : (k % 8 + 1) * 8].astype(np.float64), y[k % 8 * 8 : (k % 8 + 1) * 8].astype(np.float64)
        error = xb @ w - yb
        losses.append(float(np.mean(error**2)))
        w -= rates[min(k, 19)] * 2 / 8 * xb.T @ error
    result = test.result()
    assert result.losses == pytest.approx(losses[:20], rel=1e-4)
    assert model.get_weights()[0] == pytest.approx(w, rel=1e-4)
    assert float(trainer.optimizer.learning_rate.numpy()) == pytest.approx(rates[-1])
    assert not result.diverged and len(result.lrs) == 20


def test_a_diverging_loss_stops_the_test_at_the_end_of_its_call():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(256, 4)).astype("float32")
    y = (x.sum(axis=1, keepdims=True) > 0).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    test = LearningRateRangeTest(start_lr=1e-4, end_lr=1e6, steps=400)
    trainer = Trainer(
        model,
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.MeanSquaredError(),
        train_step=test.watch(step_lib.train_step),
    )
    trainer.fit(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(16), epochs=test.epochs_for(16), callbacks=[test], verbose=0
    )
    result = test.result()
    assert result.diverged and int(test.step_count.numpy()) < 400  # stopped early, within one call of 32 steps
    assert np.all(np.isfinite(result.smoothed)) and result.smoothed[-1] <= 4 * result.smoothed.min()
    assert result.suggestion is not None and result.suggestion < result.min_loss_lr


def test_lr_find_writes_nothing_without_run_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["lr-find", "--dataset", "mnist-sample", "--hidden", "32", "--steps", "100"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("gradloop: suggested lr ")
    assert list(tmp_path.iterdir()) == []


def test_lr_find_with_run_dir_writes_the_plot_and_the_json(tmp_path, capsys):
    out = tmp_path / "lr"
    assert (
        cli.main(
            [
                "lr-find",
                "--dataset",
                "mnist-sample",
                "--hidden",
                "32",
                "--steps",
                "100",
                "--run-dir",
                str(out),
                "--lr-schedule",
                "cosine",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    saved = json.loads((out / "lr_find.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["lr_find.json", "lr_find.png"]
    assert lines[0] == f"gradloop: suggested lr {saved['suggested_lr']:.2g} " + lines[0].split(" ", 4)[4]
    assert saved["steps"] == 100 and len(saved["lrs"]) == len(saved["losses"]) == saved["steps_used"] <= 100
    assert saved["lrs"][0] == pytest.approx(1e-7) and saved["start_lr"] < saved["suggested_lr"] < saved["lrs"][-1]
    assert saved["config"]["lr_schedule"] == "constant"  # the test sets the rate itself


@pytest.mark.slow
def test_the_suggested_lr_trains_the_reference_mlp_at_least_as_well_as_the_default(tmp_path, capsys):
    """lr-find on mnist-sample, then the reference MLP for 2 epochs at its suggestion and at 1e-4."""
    assert cli.main(["lr-find", "--dataset", "mnist-sample", "--run-dir", str(tmp_path / "lr")]) == 0
    suggested = json.loads((tmp_path / "lr" / "lr_find.json").read_text())["suggested_lr"]
    accuracy = {}
    for name, lr in (("suggested", suggested), ("default", TrainConfig.lr)):
        config = TrainConfig(dataset="mnist-sample", epochs=2, lr=lr, run_dir=str(tmp_path / name))
        run = train(config, out=io.StringIO(), notify=lambda line: None)
        accuracy[name] = json.loads((run / "history.json").read_text())["val_accuracy"][-1]
    print(f"suggested lr {suggested:.3g}: val_accuracy {accuracy}")
    assert suggested != TrainConfig.lr and accuracy["suggested"] >= accuracy["default"]
