"""tf.distribute: the same numbers as one device, on 2 replicas and on 2 worker processes.

Mirrored and multi-worker runs need a fresh TensorFlow (logical devices and
collective ops are set up at start), so they run as real `gradloop` processes;
a single-replica MirroredStrategy runs in-process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradloop import Trainer, distribute

TOLERANCE = dict(rel=1e-4, abs=1e-5)  # float32 sums in a different order across replicas
TRAIN = ["train", "--dataset", "mnist-sample", "--epochs", "2", "--hidden", "32", "--batch-size", "32", "--seed", "3"]


def gradloop(*argv: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradloop", *argv], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def history(run_dir) -> dict:
    values = json.loads((run_dir / "history.json").read_text())
    values.pop("train_time")
    return values


def assert_same_history(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], **TOLERANCE), key


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("single") / "run"
    result = gradloop(*TRAIN, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr
    return run_dir


def test_mirrored_on_two_cpu_replicas_matches_one_device(single_device, tmp_path):
    run_dir = tmp_path / "mirrored"
    result = gradloop(*TRAIN, "--strategy", "mirrored", "--replicas", "2", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr
    assert json.loads((run_dir / "run.json").read_text())["num_replicas"] == 2
    assert_same_history(history(run_dir), history(single_device))


def test_two_workers_on_localhost_match_one_device(single_device, tmp_path):
    run_dir = tmp_path / "workers"
    result = gradloop("launch", "--workers", "2", "--", *TRAIN, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr
    run = json.loads((run_dir / "run.json").read_text())
    assert (run["num_replicas"], run["strategy"]) == (2, "multi_worker")
    assert_same_history(history(run_dir), history(single_device))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["workers"]  # the other worker wrote elsewhere


def test_a_failing_worker_fails_the_launch_quickly(tmp_path):
    argv = ["train", "--dataset", "mnist-sample", "--epochs", "200", "--hidden", "32", "--run-dir", str(tmp_path / "r")]
    launch = subprocess.Popen([sys.executable, "-m", "gradloop", "launch", "--workers", "2", "--", *argv],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pid = None
    for line in launch.stderr:
        if match := re.search(r"launched worker 1 \(pid (\d+)\)", line):
            pid = int(match.group(1))
            break
    assert pid is not None
    deadline = time.monotonic() + 120
    while not (tmp_path / "r" / "run.json").exists() and time.monotonic() < deadline:
        time.sleep(0.5)  # the chief has started training
    time.sleep(3)
    assert launch.poll() is None
    os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    _, err = launch.communicate(timeout=120)
    assert time.monotonic() - start < 60
    assert launch.returncode == 1
    assert "gradloop: error: worker 1 exited with status -9" in err


@pytest.mark.parametrize(
    ("env", "argv", "message"),
    [
        ({"TF_CONFIG": "{not json"}, ["train", "--strategy", "multi_worker"], "TF_CONFIG is not valid"),
        ({"TF_CONFIG": ""}, ["train", "--strategy", "multi_worker"], "needs TF_CONFIG"),
        ({}, ["train", "--strategy", "ring"], "strategy must be one of"),
        ({}, ["train", "--strategy", "mirrored", "--replicas", "0"], "replicas must be"),
        ({}, ["launch", "--workers", "2", "--", "evaluate", "x"], "give the command after --"),
        ({}, ["launch", "--workers", "2", "--", "train", "--strategy", "default"], "drop --strategy"),
        ({}, ["launch", "--workers", "0", "--", "train"], "--workers must be from 1 to 32"),
        ({}, ["launch", "--workers", "1000", "--", "train"], "--workers must be from 1 to 32"),
        ({}, ["launch", "--workers", "2", "--", "train", "--epochs", "0"], "epochs must be"),
    ],
)
def test_bad_distribution_input_is_one_line(env, argv, message, tmp_path):
    result = gradloop(*argv, *(["--run-dir", str(tmp_path / "r")] if argv[0] == "train" else []), env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradloop: error: ") and message in lines[0], result.stderr


def tiny(strategy):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 8)).astype("float32")
    y = np.argmax(x[:, :3], 1).astype("int64")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8,))
        hidden = keras.layers.Dense(16, activation="relu", kernel_regularizer=keras.regularizers.L2(0.01))(inputs)
        model = keras.Model(inputs, keras.layers.Dense(3)(hidden))
        trainer = Trainer(model, optimizer=keras.optimizers.Adam(1e-2),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          metrics=["accuracy"], strategy=strategy)
    return trainer, ds


def test_in_process_mirrored_strategy_matches_the_default():
    mirrored, ds = tiny(tf.distribute.MirroredStrategy(["/cpu:0"]))
    plain, _ = tiny(tf.distribute.get_strategy())
    assert distribute.is_distributed(mirrored.strategy) and not distribute.is_distributed(plain.strategy)
    a = mirrored.fit(ds, validation_data=ds, epochs=2).history
    b = plain.fit(ds, validation_data=ds, epochs=2).history
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert a[key] == pytest.approx(b[key], **TOLERANCE)


def test_a_model_built_outside_the_scope_is_refused():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    trainer, ds = tiny(tf.distribute.get_strategy())
    trainer = Trainer(trainer.model, optimizer=keras.optimizers.Adam(), loss="mse", strategy=strategy)
    with pytest.raises(ValueError, match="outside strategy.scope"):
        trainer.fit(ds, epochs=1)


def test_chief_is_worker_zero_without_a_chief(monkeypatch):
    cluster = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    assert distribute.tf_config()["task"]["index"] == 1
    assert distribute.is_chief(tf.distribute.get_strategy())  # not multi-worker: this process writes
