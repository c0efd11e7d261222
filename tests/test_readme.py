"""README's library examples run as written, so they cannot rot; then their numbers are checked."""

from __future__ import annotations

import json
import re
import shlex

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO

from gradloop.cli import main


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


def readme_commands(name: str) -> list[list[str]]:
    """The gradloop commands of the ```bash block after ``<!-- readme-commands: NAME -->``, comments dropped."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- readme-commands: {name} -->\n```bash\n(.*?)\n```", text, re.S)
    assert match, f"README.md has no commands marked {name!r}"
    return [shlex.split(line, comments=True) for line in match.group(1).splitlines() if line.strip()]


@pytest.mark.slow
def test_the_own_data_commands_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_example("own-data-files")
    commands = readme_commands("own-data")
    assert all(argv[0] == "gradloop" for argv in commands) and len(commands) == 7
    for argv in commands:
        assert main(argv[1:]) == 0, (argv, capsys.readouterr().err)
    out = capsys.readouterr().out
    runs = {
        name: json.loads((tmp_path / "runs" / name / "run.json").read_text())
        for name in ("images", "iris", "diabetes", "digits")
    }
    assert {name: (run["task"], run["status"]) for name, run in runs.items()} == {
        "images": ("classification", "finished"),
        "iris": ("classification", "finished"),
        "diabetes": ("regression", "finished"),
        "digits": ("classification", "finished"),
    }
    assert runs["images"]["classes"] == ["one", "two", "zero"] and runs["iris"]["n_classes"] == 3
    assert runs["iris"]["final"]["val_accuracy"] > 0.8  # 5 epochs of a real, easy table
    assert (
        runs["digits"]["model_source"] == "model_source.py:build"
        and (tmp_path / "runs/digits/model_source.py").is_file()
    )
    assert "mae" in out and (tmp_path / "runs/digits/report/report.html").is_file()


def test_the_own_data_example_learns_its_made_up_rule(capsys):
    ns = run_example("own-data")
    history = ns["history"].history
    assert len(history["val_accuracy"]) == 5 and history["val_accuracy"][-1] > 0.9  # y = [x0 + x1 > 0]
    assert ns["trainer"].evaluate(ns["val"])["accuracy"] == pytest.approx(history["val_accuracy"][-1])


def test_the_contract_example_learns_both_outputs_names_them_as_keras_and_predicts_as_model_predict(capsys):
    ns = run_example("contract")
    history = ns["history"]
    assert {"kind_loss", "size_loss", "kind_accuracy", "size_mae", "val_kind_accuracy", "val_size_mae"} <= set(history)
    assert history["val_kind_accuracy"][-1] > 0.9 and history["val_size_mae"][-1] < 0.3
    theirs = ns["model"].predict({"image": ns["images"][1000:], "columns": ns["columns"][1000:]}, verbose=0)
    for name in ("kind", "size"):
        np.testing.assert_array_equal(ns["predicted"][name], theirs[name])
    # The rare class, weighed 9 times, is found far more often than by the same model unweighted.
    import keras

    import gradloop

    x, rare = ns["columns"], ns["rare"]
    weighted_recall = np.mean(ns["weighted"].predict(x[rare == 1]).argmax(axis=1) == 1)
    keras.utils.set_random_seed(0)
    plain = gradloop.Trainer(
        keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]),
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    plain.fit(tf.data.Dataset.from_tensor_slices((x, rare)).batch(32), epochs=5, verbose=0)
    plain_recall = np.mean(plain.predict(x[rare == 1]).argmax(axis=1) == 1)
    assert weighted_recall > plain_recall + 0.2


def test_the_cnn_example_learns_and_its_step_adds_the_penalty(capsys):
    ns = run_example("cnn")
    history = ns["history"].history
    assert history["val_accuracy"][-1] > 0.95
    assert ns["trainer"].evaluate(ns["val"])["accuracy"] > 0.95

    # The README's step, on one batch with the update switched off: the reported loss is
    # the cross-entropy minus PENALTY x the mean entropy, computed here with numpy.
    import keras

    import gradloop

    trainer = gradloop.Trainer(
        ns["cnn"],
        optimizer=keras.optimizers.SGD(0.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        train_step=ns["step_with_confidence_penalty"],
    )
    x, y = ns["val_x"][:64], ns["val_y"][:64]
    reported = trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(64), epochs=1).history["loss"][0]
    logits = ns["cnn"](x, training=False).numpy().astype(np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    cross_entropy = -np.mean(np.log(p[np.arange(len(y)), y]))
    entropy = -np.mean(np.sum(p * np.log(p + 1e-7), axis=1))
    assert entropy > 1e-4
    assert reported == pytest.approx(cross_entropy - ns["PENALTY"] * entropy, rel=1e-4, abs=1e-6)


@pytest.mark.slow
def test_the_runs_and_compare_commands_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    commands = readme_commands("runs-compare")
    assert [argv[:2] for argv in commands] == [["gradloop", "train"]] * 2 + [
        ["gradloop", "runs"],
        ["gradloop", "compare"],
    ]
    for argv in commands:
        capsys.readouterr()
        assert main(argv[1:]) == 0, (argv, capsys.readouterr().err)
        if argv[1] == "runs":
            lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[1:]] == [["lr-1e-4", "finished"], ["lr-1e-3", "finished"]]
    page = (tmp_path / "compare.html").read_text()
    assert "<td>lr</td><td>0.0001</td><td>0.001</td>" in page and page.count("<td>epochs</td>") == 1  # runs table only


def test_the_guide_gan_command_trains_the_models_own_step(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(REPO / "examples")  # the command's path, from a folder of its own
    (argv,) = readme_commands("guide-gan")
    assert argv[:2] == ["gradloop", "train"]
    assert main(argv[1:]) == 0, capsys.readouterr().err
    (run,) = (tmp_path / "runs").iterdir()
    info = json.loads((run / "run.json").read_text())
    assert info["own_train_step"] is True and info["status"] == "finished" and info["epochs_done"] == 20
    history = json.loads((run / "history.json").read_text())
    assert len(history["train_d_loss"]) == len(history["train_g_loss"]) == 20
    assert np.isfinite(history["train_d_loss"] + history["train_g_loss"]).all()
    assert history["train_g_loss"][-1] != history["train_g_loss"][0]  # both networks trained, epoch after epoch


def test_the_gan_example_trains_both_models_and_writes_an_image(tmp_path, monkeypatch, capsys):
    import warnings

    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ns = run_example("gan")
    assert not [w for w in caught if "stateful random" in str(w.message)]  # keras.random: resumes exactly
    history = ns["history"].history
    assert set(history) == {"d_loss", "g_loss", "train_time"}
    assert all(np.isfinite(history[k][0]) and history[k][0] > 0 for k in ("d_loss", "g_loss"))
    trainer = ns["trainer"]
    assert [int(trainer.optimizers[name].iterations) for name in ("generator", "discriminator")] == [8, 8]
    assert trainer.models["generator"] is ns["generator"]
    assert (tmp_path / "generated" / "generated_img_0.png").stat().st_size > 100
