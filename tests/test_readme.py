"""README's library examples run as written, so they cannot rot; then their numbers are checked."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO


def readme_example(name: str) -> str:
    """The ```python block right after ``<!-- readme-example: NAME -->`` in README.md."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- readme-example: {name} -->\n```python\n(.*?)\n```", text, re.S)
    assert match, f"README.md has no example marked {name!r}"
    return match.group(1)


def run_example(name: str) -> dict:
    namespace: dict = {"__name__": f"readme_{name}"}
    exec(compile(readme_example(name), f"README.md:{name}", "exec"), namespace)
    return namespace


def test_the_walkthrough_trains_the_tutorials_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ns = run_example("walkthrough")
    history = ns["history"]
    assert set(history) == {"train_loss", "val_loss", "train_accuracy", "val_accuracy", "train_time"}
    assert len(history["val_accuracy"]) == 10 and history["val_accuracy"][-1] > 0.97  # real digits
    assert history["train_loss"][-1] < history["train_loss"][0] / 5
    assert (tmp_path / "history.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert out.count("epoch 10/10") == 1 and f"validation accuracy {history['val_accuracy'][-1]:.4f}" in out


def test_the_own_data_example_learns_its_made_up_rule(capsys):
    ns = run_example("own-data")
    history = ns["history"].history
    assert len(history["val_accuracy"]) == 5 and history["val_accuracy"][-1] > 0.9  # y = [x0 + x1 > 0]
    assert ns["trainer"].evaluate(ns["val"])["accuracy"] == pytest.approx(history["val_accuracy"][-1])


def test_the_cnn_example_learns_and_its_step_adds_the_penalty(capsys):
    ns = run_example("cnn")
    history = ns["history"].history
    assert history["val_accuracy"][-1] > 0.95
    assert ns["trainer"].evaluate(ns["val"])["accuracy"] > 0.95

    # The README's step, on one batch with the update switched off: the reported loss is
    # the cross-entropy minus PENALTY x the mean entropy, computed here with numpy.
    import keras

    import gradloop

    trainer = gradloop.Trainer(ns["cnn"], optimizer=keras.optimizers.SGD(0.0),
                               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                               train_step=ns["step_with_confidence_penalty"])
    x, y = ns["val_x"][:64], ns["val_y"][:64]
    reported = trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(64), epochs=1).history["loss"][0]
    logits = ns["cnn"](x, training=False).numpy().astype(np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    cross_entropy = -np.mean(np.log(p[np.arange(len(y)), y]))
    entropy = -np.mean(np.sum(p * np.log(p + 1e-7), axis=1))
    assert entropy > 1e-4
    assert reported == pytest.approx(cross_entropy - ns["PENALTY"] * entropy, rel=1e-4, abs=1e-6)
