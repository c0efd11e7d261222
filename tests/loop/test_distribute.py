"""tf.distribute: the same numbers as one device, on 2 replicas and on 2 worker processes;
multi-worker runs killed, stopped by signals and resumed, equal to a run never stopped.

Mirrored and multi-worker runs need a fresh TensorFlow (logical devices and
collective ops are set up at start), so they run as real `gradloop` processes;
a single-replica MirroredStrategy runs in-process.
"""

from __future__ import annotations

import contextlib
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

from gradloop import Trainer
from gradloop.app import assemble
from gradloop.commands import launch
from gradloop.loop import distribute

TOLERANCE = dict(rel=1e-4, abs=1e-5)  # float32 sums in a different order across replicas
TRAIN = [
    "train",
    "--dataset",
    "mnist-sample",
    "--epochs",
    "3",
    "--hidden",
    "32",
    "--batch-size",
    "32",
    "--seed",
    "3",
    "--deterministic",
]  # 40 steps per epoch


def gradloop(*argv: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gradloop", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


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


# ----------------------------------------------------------------- multi-worker runs, stopped and resumed

RESUMABLE = [*TRAIN, "--checkpoint-every", "10", "--checkpoint-seconds", "0.2"]  # time saves: all workers decide


def start_launch(run_dir, name: str, *argv: str) -> subprocess.Popen:
    """``gradloop launch --workers 2 -- <argv> --run-dir run_dir`` in the background, its stderr in NAME.err
    and its temporary folders (the workers' logs and scratch run directories) in NAME.tmp/, beside run_dir."""
    (run_dir.parent / f"{name}.tmp").mkdir()
    return subprocess.Popen(
        [sys.executable, "-m", "gradloop", "launch", "--workers", "2", "--", *argv, "--run-dir", str(run_dir)],
        stdout=subprocess.DEVNULL,
        stderr=(run_dir.parent / f"{name}.err").open("w"),
        env={**os.environ, "TMPDIR": str(run_dir.parent / f"{name}.tmp")},
    )


def worker_pids(err_file) -> list[int]:
    return [int(pid) for pid in re.findall(r"launched worker \d+ \(pid (\d+)\)", err_file.read_text())]


def wait_for(root, procs: dict[str, subprocess.Popen], stops=None, *, timeout: float = 600) -> dict[str, tuple]:
    """Wait for the launches to end, calling ``stops[name]()`` once run NAME's 3rd checkpoint (of about 16)
    is its latest; returns {name: (exit status, seconds from the stop to the end)}. Killed, workers and
    all, at the timeout."""
    stops, stopped, ended = dict(stops or {}), {}, {}
    deadline = time.monotonic() + timeout
    try:
        while len(ended) < len(procs) and time.monotonic() < deadline:
            for name in [n for n in stops if n not in stopped and latest_checkpoint_number(root / n) >= 3]:
                stops[name]()
                stopped[name] = time.monotonic()
            ended.update({n: time.monotonic() for n, p in procs.items() if n not in ended and p.poll() is not None})
            time.sleep(0.02)
    finally:
        for name, proc in procs.items():
            if proc.poll() is None:
                for pid in [*worker_pids(root / f"{name}.err"), proc.pid]:  # not yet reaped: still theirs
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait()
    return {n: (p.returncode, ended[n] - stopped[n] if n in stopped else None) for n, p in procs.items()}


def latest_checkpoint_number(run_dir) -> int:
    try:
        first = (run_dir / "checkpoints" / "checkpoint").read_text().splitlines()[0]
    except (OSError, IndexError):
        return 0
    return int(first.rsplit("-", 1)[1].rstrip('"'))


def saved_position(run_dir) -> tuple[int, int, set[str]]:
    """(epoch, step, top-level names) of the latest checkpoint in run_dir."""
    path = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    saved = tf.train.load_checkpoint(path)
    epoch, step = (int(saved.get_tensor(f"{k}/.ATTRIBUTES/VARIABLE_VALUE")) for k in ("epoch", "step"))
    return epoch, step, {name.split("/")[0] for name, _ in tf.train.list_variables(path)}


@pytest.fixture(scope="module")
def multi_worker_runs(tmp_path_factory):
    """2-worker runs of RESUMABLE, 3 epochs of 40 steps. U: never stopped. K: worker 1 SIGKILLed, then
    resumed. T: the launch SIGTERMed, then resumed. S: worker 1 alone SIGTERMed."""
    root = tmp_path_factory.mktemp("multi_worker")
    procs = {name: start_launch(root / name, name, *RESUMABLE) for name in "UKTS"}
    first = wait_for(
        root,
        procs,
        {
            "K": lambda: os.kill(worker_pids(root / "K.err")[1], signal.SIGKILL),
            "T": lambda: procs["T"].send_signal(signal.SIGTERM),
            "S": lambda: os.kill(worker_pids(root / "S.err")[1], signal.SIGTERM),
        },
    )
    stopped = {name: json.loads((root / name / "run.json").read_text()) for name in "KTS"}
    saved = {name: saved_position(root / name) for name in "KTS"}  # before the resumes replace the checkpoints
    resumed = wait_for(root, {name: start_launch(root / name, f"{name}-resumed", "train", "--resume") for name in "KT"})
    return root, first, stopped, saved, resumed


def test_two_workers_on_localhost_match_one_device(single_device, multi_worker_runs):
    root, first, *_ = multi_worker_runs
    assert first["U"][0] == 0, (root / "U.err").read_text()
    run = json.loads((root / "U" / "run.json").read_text())
    assert (run["num_replicas"], run["workers"], run["strategy"]) == (2, 2, "multi_worker")
    assert_same_history(history(root / "U"), history(single_device))
    assert len(list((root / "U.tmp").glob("gradloop-launch-*/worker-1.log"))) == 1  # the other worker wrote
    assert not list((root / "U.tmp").glob("gradloop-worker-*"))  # elsewhere: a scratch run directory, now gone


def test_a_killed_worker_fails_the_launch_quickly(multi_worker_runs):
    root, first, stopped, _, _ = multi_worker_runs
    code, seconds = first["K"]
    assert code == 1 and seconds < 60
    assert (
        f"gradloop: error: worker 1 exited with status -9 (its output is in {root / 'K.tmp'}"
        in (root / "K.err").read_text()
    )
    assert stopped["K"]["status"] == "running"  # the chief was killed too: it could not say more


def interrupted_at(text: str) -> tuple[int, int]:
    """(epoch, step) of the one 'gradloop: interrupted at epoch E step S; ...' line in a worker's output."""
    (match,) = re.findall(r"^gradloop: interrupted at epoch (\d+) step (\d+);", text, re.M)
    return int(match[0]), int(match[1])


def worker_1_output(root, name: str) -> str:
    (log,) = (root / f"{name}.tmp").glob("gradloop-launch-*/worker-1.log")
    return log.read_text()


def test_sigterm_to_the_launch_stops_every_worker_after_one_checkpoint(multi_worker_runs):
    root, first, stopped, saved, _ = multi_worker_runs
    assert first["T"][0] == 143
    err = (root / "T.err").read_text()
    assert "gradloop: SIGTERM: telling 2 workers to save a checkpoint and stop" in err
    epoch, step = interrupted_at(err)  # the chief's line: the resume command, once
    assert [line for line in err.splitlines() if "resume with" in line] == [
        (
            f"gradloop: interrupted at epoch {epoch} step {step}; "
            f"resume with: gradloop launch --workers 2 -- train --resume --run-dir {root / 'T'}"
        )
    ]
    assert interrupted_at(worker_1_output(root, "T")) == (epoch, step)  # the same step on both workers
    assert stopped["T"]["status"] == "interrupted" and stopped["T"]["interrupted_at"] == {"epoch": epoch, "step": step}
    assert saved["T"][:2] == (epoch - 1, step)
    assert "iterator" not in saved["T"][2]  # a distributed iterator is not saved: a resume skips to the step
    assert not list((root / "T.tmp").glob("gradloop-worker-*"))  # worker 1's scratch run directory is gone


def test_sigterm_to_one_worker_stops_them_all_at_the_same_step(multi_worker_runs):
    root, first, stopped, saved, _ = multi_worker_runs
    assert first["S"][0] == 143  # both workers stopped by SIGTERM after a checkpoint
    err = (root / "S.err").read_text()
    assert "telling" not in err  # the launch got no signal: the chief stopped because worker 1 did
    epoch, step = interrupted_at(err)
    assert interrupted_at(worker_1_output(root, "S")) == (epoch, step)
    assert stopped["S"]["interrupted_at"] == {"epoch": epoch, "step": step} and saved["S"][:2] == (epoch - 1, step)


@pytest.mark.parametrize("name", ["K", "T"])
def test_a_resumed_multi_worker_run_equals_one_never_stopped(multi_worker_runs, name):
    root, _, _, saved, resumed = multi_worker_runs
    assert resumed[name][0] == 0, (root / f"{name}-resumed.err").read_text()
    epoch, step, _ = saved[name]
    assert 0 < epoch * 40 + step < 120  # it was stopped mid-run
    info = json.loads((root / name / "run.json").read_text())
    assert info["resumed"][0]["epoch"] == epoch + 1 and info["resumed"][0]["step"] == step
    assert info["status"] == "finished" and info["epochs_done"] == 3 and len(info["resumed"]) == 1
    assert history(root / name) == history(root / "U")  # exactly, not just within TOLERANCE
    weights = [keras.models.load_model(root / run / "model.keras", compile=False).get_weights() for run in ("U", name)]
    assert len(weights[0]) == len(weights[1]) == 4 and all(np.array_equal(a, b) for a, b in zip(*weights))
    assert not list((root / f"{name}-resumed.tmp").glob("gradloop-worker-*"))


@pytest.mark.parametrize("argv", [["launch", "--workers", "3", "--", "train"], ["train", "--strategy", "multi_worker"]])
def test_a_resume_on_another_number_of_workers_is_one_line(multi_worker_runs, argv):
    """Refused by the launch before it starts a worker, or by each worker of a TF_CONFIG cluster (here: of 1)."""
    run = multi_worker_runs[0] / "U"
    one_worker = {
        "cluster": {"worker": [f"127.0.0.1:{launch.free_ports(1)[0]}"]},
        "task": {"type": "worker", "index": 0},
    }
    snapshot = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = gradloop(
        *argv,
        "--resume",
        "--run-dir",
        str(run),
        "--epochs",
        "4",
        env={"TF_CONFIG": json.dumps(one_worker)} if argv[0] == "train" else None,
    )
    workers = 3 if argv[0] == "launch" else 1
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        (
            f"gradloop: error: run {run} trained on 2 workers but this resume has {workers}; a multi-worker run "
            "resumes on as many workers as it trained on (gradloop launch --workers 2, or a TF_CONFIG of 2)"
        )
    ]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == snapshot


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
        trainer = Trainer(
            model,
            optimizer=keras.optimizers.Adam(1e-2),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            strategy=strategy,
        )
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
    assert assemble.tf_config()["task"]["index"] == 1
    assert distribute.is_chief(tf.distribute.get_strategy())  # not multi-worker: this process writes


# Two replicas' per-step losses whose float32 running sums end one ulp apart when a restore splits them.
SPLIT_BY_A_RESTORE = """
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from gradloop.loop.compiled import CompiledModel
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
losses = tf.constant([[1.7263578176498413, 1.0829224586486816, 0.5994237661361694, 0.8453744649887085],
                      [0.05663934350013733, 0.24856655299663544, 1.341248869895935, 1.2943789958953857]])

def tracker(dtype):
    if dtype is None:  # gradloop's own
        with strategy.scope():
            model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
        return CompiledModel(model, optimizer="adam", loss="mse", strategy=strategy).loss_tracker
    with strategy.scope():
        return keras.metrics.Mean(dtype=dtype)

def add(mean, steps):
    def replica_step():
        mine = tf.gather(losses, tf.distribute.get_replica_context().replica_id_in_sync_group)
        for i in steps:
            mean.update_state(mine[i])
    tf.function(lambda: strategy.run(replica_step))()

for dtype in (None, "float32"):
    unstopped, stopped, resumed = tracker(dtype), tracker(dtype), tracker(dtype)
    add(unstopped, range(4))
    add(stopped, range(2))
    path = tf.train.Checkpoint(metrics=stopped.variables).save("{directory}/ckpt")
    tf.train.Checkpoint(metrics=resumed.variables).restore(path).assert_consumed()
    add(resumed, range(2, 4))
    print(np.float32(unstopped.result()) == np.float32(resumed.result()))
"""


def test_a_restored_loss_sum_split_over_replicas_ends_at_the_same_mean(tmp_path):
    """TensorFlow restores a replica-summed metric split evenly over the replicas, unlike the split the
    run had; float32 sums then end an ulp apart (the control), gradloop's float64 loss sums do not."""
    script = SPLIT_BY_A_RESTORE.replace("{directory}", str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "False"]
