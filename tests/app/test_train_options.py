"""gradloop train's options from Keras' training contract: --class-weight, --validation-every, --ema,
and the model summary every run directory holds."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import sklearn.datasets
import sklearn.utils.class_weight

from gradloop.app import assemble
from gradloop.app import train as training
from gradloop.app.config import TrainConfig

QUICK = dict(dataset="mnist-sample", hidden=(32,), batch_size=64, seed=3)


def train(tmp_path: Path, name: str, **options) -> Path:
    config = TrainConfig(run_dir=str(tmp_path / name), **{**QUICK, **options})
    return training.train(config, out=io.StringIO(), notify=lambda line: None)


def history(run: Path) -> dict:
    return json.loads((run / "history.json").read_text())


def without_time(h: dict) -> dict:
    return {k: v for k, v in h.items() if k != "train_time"}


@pytest.fixture(scope="module")
def cancer_csv(tmp_path_factory) -> Path:
    """Scikit-learn's breast cancer table (212 malignant, 357 benign) as a CSV with a named target."""
    table = sklearn.datasets.load_breast_cancer()
    path = tmp_path_factory.mktemp("cancer") / "cancer.csv"
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([*(f"f{i}" for i in range(table.data.shape[1])), "diagnosis"])
        writer.writerows([*map(float, row), str(table.target_names[t])] for row, t in zip(table.data, table.target))
    return path


def test_class_weight_balanced_is_scikit_learns_on_the_training_split_and_recorded_by_name(cancer_csv, tmp_path):
    options = dict(data=str(cancer_csv), target="diagnosis", epochs=2, batch_size=32, seed=3)
    run = training.train(
        TrainConfig(run_dir=str(tmp_path / "balanced"), class_weight="balanced", **options),
        out=io.StringIO(),
        notify=lambda line: None,
    )
    data = assemble.load_data(TrainConfig(**options), notify=lambda line: None)
    expected = sklearn.utils.class_weight.compute_class_weight("balanced", classes=np.arange(2), y=data.train.y)
    recorded = json.loads((run / "run.json").read_text())["class_weight"]
    assert recorded == pytest.approx(dict(zip(data.class_names, expected)), rel=1e-12)
    assert recorded["malignant"] > 1 > recorded["benign"]  # the rarer class weighs more
    plain = training.train(
        TrainConfig(run_dir=str(tmp_path / "plain"), **options), out=io.StringIO(), notify=lambda line: None
    )
    assert json.loads((plain / "run.json").read_text())["class_weight"] is None
    assert history(run)["train_loss"] != pytest.approx(history(plain)["train_loss"], rel=1e-4)
    # A mapping names the classes; weights of 1 train exactly as no weights.
    ones = training.train(
        TrainConfig(run_dir=str(tmp_path / "ones"), class_weight={"malignant": 1, "benign": 1.0}, **options),
        out=io.StringIO(),
        notify=lambda line: None,
    )
    assert without_time(history(ones)) == without_time(history(plain))


def test_validation_every_2_leaves_null_entries_and_a_resume_keeps_them_in_place(tmp_path):
    whole = train(tmp_path, "whole", epochs=4, validation_every=2)
    h = history(whole)
    assert [v is None for v in h["val_loss"]] == [True, False, True, False]
    assert len(h["train_loss"]) == 4
    rows = list(csv.reader((whole / "history.csv").open()))
    assert rows[1][rows[0].index("val_loss")] == "" and rows[2][rows[0].index("val_loss")] != ""
    info = json.loads((whole / "run.json").read_text())
    best = 2 if h["val_accuracy"][1] >= h["val_accuracy"][3] else 4  # the highest val_accuracy, first on ties
    assert (info["best"]["metric"], info["best"]["epoch"]) == ("val_accuracy", best)
    # Two epochs, then two more by --resume: the same files as one run of four.
    part = train(tmp_path, "part", epochs=2, validation_every=2)
    config = TrainConfig(run_dir=str(part), epochs=4, validation_every=2, **QUICK)
    training.train(config, resume=True, out=io.StringIO(), notify=lambda line: None)
    assert without_time(history(part)) == without_time(h)


def test_ema_validates_and_saves_the_moving_average(tmp_path):
    run = train(tmp_path, "ema", epochs=3, ema=0.9, lr=1e-3)
    plain = train(tmp_path, "plain", epochs=3, lr=1e-3)
    h, p = history(run), history(plain)
    assert h["train_loss"] == pytest.approx(p["train_loss"], rel=1e-6)  # the average does not change training
    assert h["val_loss"] != pytest.approx(p["val_loss"], rel=1e-3)  # validation ran on other weights
    data = assemble.load_data(TrainConfig(**QUICK), notify=lambda line: None)
    x, y = data.val.x, data.val.y
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def val_loss(path: Path) -> float:
        return float(loss(y, keras.models.load_model(path, compile=False).predict(x, verbose=0)))

    assert val_loss(run / "model.keras") == pytest.approx(h["val_loss"][-1], rel=1e-4)  # the last epoch's average
    assert val_loss(run / "model.best.keras") == pytest.approx(min(h["val_loss"]), rel=1e-4)
    assert json.loads((run / "run.json").read_text())["config"]["ema"] == 0.9


def test_every_run_directory_holds_the_model_summary(tmp_path):
    run = train(tmp_path, "summary", epochs=1)
    text = (run / "model_summary.txt").read_text()
    parameters = json.loads((run / "run.json").read_text())["parameters"]
    assert "Layer (type)" in text and f"Trainable params: {parameters:,}" in text  # (with the optimizer's in the total)


def test_an_ema_run_resumed_ends_with_the_averages_of_one_never_stopped(tmp_path):
    whole = train(tmp_path, "whole", epochs=3, ema=0.9, lr=1e-3)
    part = train(tmp_path, "part", epochs=1, ema=0.9, lr=1e-3)
    config = TrainConfig(run_dir=str(part), epochs=3, ema=0.9, lr=1e-3, **QUICK)
    training.train(config, resume=True, out=io.StringIO(), notify=lambda line: None)
    assert without_time(history(part)) == without_time(history(whole))
    for name in ("model.keras", "model.best.keras"):
        ours = keras.models.load_model(part / name, compile=False).get_weights()
        theirs = keras.models.load_model(whole / name, compile=False).get_weights()
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(a, b)


def test_val_fraction_0_trains_on_every_sample_without_validation(tmp_path):
    run = train(tmp_path, "all", epochs=1, val_fraction=0.0)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["n_val"] == 0 and info["n_train"] == 1500
    assert set(history(run)) == {"train_loss", "train_accuracy", "train_time"}


def test_validation_every_with_early_stop_counts_patience_in_validations_and_names_the_epoch(tmp_path):
    run = train(tmp_path, "stop", epochs=12, validation_every=2, early_stop=1, lr=0.5)  # overshoots soon
    info, h = json.loads((run / "run.json").read_text()), history(run)
    validated = [(i + 1, v) for i, v in enumerate(h["val_loss"]) if v is not None]
    assert [epoch for epoch, _ in validated] == list(range(2, len(h["train_loss"]) + 1, 2))
    # Keras' rule on the validated epochs: stop at the first validation not below the best so far.
    best, expected = float("inf"), None
    for epoch, value in validated:
        if value >= best:
            expected = epoch
            break
        best = value
    assert expected is not None and expected < 12, "the run was meant to stop early"
    assert info["stopped_early"] == expected == info["epochs_done"] == len(h["train_loss"])
