"""``gradloop train --model FILE.py:FUNC`` for a model that brings its own training (gradloop.app.own_step):
keras.io's guide GAN, shrunk to Dense layers on sklearn's 8x8 digits without labels, trained by the CLI as
compiled; its run folder (history in the tutorial's names of what the step logs, weights beside or instead
of model.keras, TensorBoard scalars of every logged value); and a SIGKILL mid-epoch resumed bit for bit."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from sklearn.datasets import load_digits

from gradloop.cli import main

# keras.io's guide GAN as users train it: gradloop train --model examples/guide_gan.py:build
GAN_FILE = Path(__file__).resolve().parents[2] / "examples" / "guide_gan.py"

COMPILED_FILE = """
import keras


def build(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    outputs = keras.layers.Dense(num_classes)(keras.layers.Dense(16, activation="relu")(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model
"""

# 1797 digits in batches of 16: 113 steps an epoch, a checkpoint every 10 steps.
GAN_RUN = ["--batch-size", "16", "--val-fraction", "0", "--deterministic", "--checkpoint-every", "10"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("own")
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")  # 64 pixels in [0, 1]
    np.savez(root / "digits.npz", x=x)
    np.savez(root / "labelled.npz", x=x[:400], y=digits.target[:400])
    (root / "compiled.py").write_text(COMPILED_FILE)
    return {
        "x": root / "digits.npz",
        "xy": root / "labelled.npz",
        "gan": GAN_FILE,
        "compiled": root / "compiled.py",
    }


def gradloop(*argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gradloop", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def latest_number(run_dir: Path) -> int:
    try:
        first = (run_dir / "checkpoints" / "checkpoint").read_text().splitlines()[0]
    except (OSError, IndexError):
        return 0
    return int(first.rsplit("-", 1)[1].rstrip('"'))


def weights(path: Path) -> dict[str, np.ndarray]:
    found = {}
    with h5py.File(path, "r") as file:
        file.visititems(lambda name, item: found.update({name: item[()]}) if isinstance(item, h5py.Dataset) else None)
    return found


@pytest.fixture(scope="module")
def gan_runs(files, tmp_path_factory) -> dict:
    """A: the GAN trained 2 epochs. B: the same, SIGKILLed mid-epoch 1 and resumed."""
    root = tmp_path_factory.mktemp("gan")
    a, b = root / "A", root / "B"
    argv = ["train", "--data", str(files["x"]), "--model", f"{files['gan']}:build", *GAN_RUN, "--epochs", "2"]
    first = {"A": gradloop(*argv, "--run-dir", str(a)), "B": gradloop(*argv, "--run-dir", str(b))}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and latest_number(b) < 3 and first["B"].poll() is None:
        time.sleep(0.02)  # saved before training, then after steps 10, 20: mid-epoch 1
    first["B"].send_signal(signal.SIGKILL)
    done = {name: (proc.wait(timeout=600), *proc.communicate()) for name, proc in first.items()}
    resumed = subprocess.run(
        [sys.executable, "-m", "gradloop", "train", "--resume", "--run-dir", str(b)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return {"A": a, "B": b, "first": done, "resumed": resumed}


def test_the_gan_trains_as_compiled_on_unlabeled_digits(gan_runs):
    code, out, err = gan_runs["first"]["A"]
    assert code == 0, err
    assert "training gan" in out and "no labels" in out and "0 outputs" not in out
    assert "cannot be saved whole" in err  # one line: the GAN has no get_config
    run = gan_runs["A"]
    history = json.loads((run / "history.json").read_text())
    assert {"train_d_loss", "train_g_loss"} <= set(history) and len(history["train_d_loss"]) == 2
    assert all(np.isfinite(history["train_d_loss"] + history["train_g_loss"]))
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["task"] == "none" and info["own_train_step"] is True
    assert info["model_files"] == {
        "model": None,
        "weights": "model.weights.h5",
        "best": "model.best.weights.h5",
        "serialized": False,
    }
    assert info["best"]["metric"] == "train_d_loss" and info["best"]["epoch"] in (1, 2)
    assert info["epochs_done"] == 2 and info["loss"] == "the model's own"
    assert (run / "model.weights.h5").is_file() and (run / "model.best.weights.h5").is_file()
    assert not (run / "model.keras").exists() and (run / "model_source.py").is_file()
    assert (run / "history.png").is_file()


def test_tensorboard_has_every_logged_value_and_each_optimizers_rate(gan_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(gan_runs["A"] / "tensorboard" / "train"), size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"])
    assert {"epoch_d_loss", "epoch_g_loss", "batch_d_loss", "batch_g_loss"} <= tags, tags
    assert {"epoch_d_optimizer_learning_rate", "epoch_g_optimizer_learning_rate"} <= tags, tags


def test_a_gan_killed_mid_epoch_resumes_bit_identical(gan_runs):
    code, _, err = gan_runs["first"]["B"]
    assert code == -signal.SIGKILL, err
    resumed = gan_runs["resumed"]
    assert resumed.returncode == 0, resumed.stderr
    where = resumed.stdout.split("resuming gan at epoch ", 1)[1].split(" (")[0]
    epoch, step = int(where.split(" step ")[0]), int(where.split(" step ")[1])
    assert epoch == 1 and 0 < step < 113, where  # mid-epoch 1
    a, b = gan_runs["A"], gan_runs["B"]
    ha, hb = (json.loads((r / "history.json").read_text()) for r in (a, b))
    assert {k: v for k, v in ha.items() if k != "train_time"} == {k: v for k, v in hb.items() if k != "train_time"}
    wa, wb = weights(a / "model.weights.h5"), weights(b / "model.weights.h5")
    assert wa.keys() == wb.keys() and wa
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)


def test_a_compiled_model_trains_with_its_own_compile_and_keeps_model_keras(files, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--data", str(files["xy"]), "--model", f"{files['compiled']}:build", "--epochs", "2"]
    assert main([*argv, "--monitor", "val_accuracy", "--early-stop", "5", "--run-dir", str(run)]) == 0
    capsys.readouterr()
    info = json.loads((run / "run.json").read_text())
    assert info["own_train_step"] is True and info["config"]["optimizer"] == "adam"  # unused: compile's SGD ran
    assert info["model_files"]["serialized"] is True and info["model_files"]["model"] == "model.keras"
    assert info["best"]["metric"] == "val_accuracy" and info["best"]["mode"] == "max"
    history = json.loads((run / "history.json").read_text())
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy"} <= set(history)
    for name in ("model.keras", "model.weights.h5", "model.best.keras"):
        assert (run / name).is_file(), name
    import keras

    model = keras.models.load_model(run / "model.keras")
    assert model.optimizer.__class__.__name__ == "SGD"  # trained by its own compile, not gradloop's Adam
