"""gradloop.commands.launch: free ports, the workers' command, each worker's TF_CONFIG, failing fast, signals.

Most tests launch stand-in workers: ``sys.executable`` becomes a small script that records what it
was started with (argv, TF_CONFIG, pid), waits for the other workers' records, then exits with the
status it is told, or waits for a signal, so the launch's own behaviour shows in a second, without TensorFlow.
One test launches real
``gradloop train`` workers that fail on bad data. The multi-worker runs the launch makes (equal to
one device, killed, stopped and resumed) are in test_distribute.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from gradloop.commands.launch import MAX_WORKERS, WORKERS_ENV, WorkerFailed, free_ports, launch, train_argv, worker_env
from gradloop.errors import ConfigError

STAND_IN = """#!{python}
import json, os, signal, sys, time
tf_config = json.loads(os.environ["TF_CONFIG"])
index = tf_config["task"]["index"]
out = os.path.join(os.environ["STAND_IN_OUT"], f"worker-{{index}}")

def stop(signum, frame):
    with open(out + ".signal", "w") as f:
        f.write(signal.Signals(signum).name)
    sys.exit(128 + signum)

signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
record = {{"argv": sys.argv[1:], "tf_config": tf_config, "workers": os.environ.get("{workers_env}"), \
"pid": os.getpid()}}
with open(out + ".tmp", "w") as f:
    json.dump(record, f)
os.replace(out + ".tmp", out + ".json")
deadline = time.monotonic() + 10  # like TensorFlow's workers, meet the others before going on
while len([n for n in os.listdir(os.environ["STAND_IN_OUT"]) if n.endswith(".json")]) < int(record["workers"]):
    if time.monotonic() > deadline:
        sys.exit(98)
    time.sleep(0.01)
status = json.loads(os.environ.get("STAND_IN_EXIT", "{{}}")).get(str(index), 0)
if status == "wait":  # until a signal, or a minute: longer than any test here may take
    time.sleep(60)
    sys.exit(99)
sys.exit(status)
"""


@pytest.fixture
def stand_in(tmp_path) -> Path:
    """The stand-in worker script; its records go to tmp_path/out, the launch's logs to tmp_path/tmp."""
    script = tmp_path / "stand_in_python"
    script.write_text(STAND_IN.format(python=sys.executable, workers_env=WORKERS_ENV))
    script.chmod(0o755)
    (tmp_path / "out").mkdir()
    (tmp_path / "tmp").mkdir()
    return script


@pytest.fixture
def stand_in_launch(stand_in, tmp_path, monkeypatch) -> Path:
    """``launch()`` in this process starts stand-in workers; returns the folder of their records."""
    monkeypatch.setattr(sys, "executable", str(stand_in))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setenv("STAND_IN_OUT", str(tmp_path / "out"))
    return tmp_path / "out"


def records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("worker-*.json"))]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --------------------------------------------------------------------- ports and the workers' command


def test_free_ports_are_distinct_and_can_all_be_bound_at_once():
    ports = free_ports(8)
    assert len(ports) == len(set(ports)) == 8
    sockets = [socket.socket() for _ in ports]
    try:
        for s, port in zip(sockets, ports):
            s.bind(("127.0.0.1", port))
    finally:
        for s in sockets:
            s.close()


@pytest.mark.parametrize(
    ("workers", "argv", "command"),
    [
        (2, ["--", "train", "--epochs", "3"], ["train", "--epochs", "3"]),
        (1, ["train"], ["train"]),
        (MAX_WORKERS, ["--", "train", "--", "x"], ["train", "--", "x"]),  # only the first -- is the launch's
    ],
)
def test_train_argv_is_the_train_command_after_the_separator(workers, argv, command):
    assert train_argv(workers, argv) == command


@pytest.mark.parametrize(
    ("workers", "argv", "message"),
    [
        (0, ["train"], "--workers must be from 1 to 32 on one machine, got 0"),
        (MAX_WORKERS + 1, ["train"], "--workers must be from 1 to 32 on one machine, got 33"),
        (2, ["--"], "give the command after --"),
        (2, ["--", "evaluate", "runs/x"], "give the command after --"),
        (2, ["--", "train", "--epochs", "1", "--strategy", "mirrored"], "drop --strategy"),
    ],
)
def test_train_argv_refuses_what_a_launch_cannot_run(workers, argv, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        train_argv(workers, argv)


def test_worker_env_adds_the_cluster_and_the_workers_index_to_this_environment(monkeypatch):
    monkeypatch.setenv("GRADLOOP_TEST_MARK", "kept")
    env = worker_env(["127.0.0.1:1001", "127.0.0.1:1002", "127.0.0.1:1003"], 2)
    assert json.loads(env["TF_CONFIG"]) == {
        "cluster": {"worker": ["127.0.0.1:1001", "127.0.0.1:1002", "127.0.0.1:1003"]},
        "task": {"type": "worker", "index": 2},
    }
    assert env[WORKERS_ENV] == "3" and env["GRADLOOP_TEST_MARK"] == "kept"


# --------------------------------------------------------------------- stand-in workers


def test_each_worker_runs_the_command_with_its_own_index_in_one_loopback_cluster(stand_in_launch, capsys):
    assert launch(3, ["--", "train", "--epochs", "2"]) == 0
    seen = records(stand_in_launch)
    assert [r["argv"] for r in seen] == [["-m", "gradloop", "train", "--epochs", "2", "--strategy", "multi_worker"]] * 3
    cluster = seen[0]["tf_config"]["cluster"]["worker"]
    assert len(set(cluster)) == 3 and all(re.fullmatch(r"127\.0\.0\.1:\d+", address) for address in cluster)
    assert [r["tf_config"] for r in seen] == [
        {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": i}} for i in range(3)
    ]
    assert [r["workers"] for r in seen] == ["3", "3", "3"]
    (logs,) = (stand_in_launch.parent / "tmp").glob("gradloop-launch-*")
    assert capsys.readouterr().err.splitlines() == [
        f"gradloop: launched worker 0 (pid {seen[0]['pid']}) on {cluster[0]}",
        f"gradloop: launched worker 1 (pid {seen[1]['pid']}) on {cluster[1]}, output in {logs / 'worker-1.log'}",
        f"gradloop: launched worker 2 (pid {seen[2]['pid']}) on {cluster[2]}, output in {logs / 'worker-2.log'}",
    ]


@pytest.mark.parametrize(("statuses", "status"), [((0, 0), 0), ((143, 143), 143), ((130, 0), 130), ((0, 143), 143)])
def test_workers_stopped_by_a_signal_end_the_launch_with_that_status(stand_in_launch, monkeypatch, statuses, status):
    monkeypatch.setenv("STAND_IN_EXIT", json.dumps({str(i): s for i, s in enumerate(statuses)}))
    assert launch(2, ["train"]) == status


@pytest.mark.parametrize(("failing", "where"), [(0, "above"), (2, "in {logs}/worker-2.log")])
def test_a_failing_worker_fails_the_launch_at_once_and_the_others_are_killed(
    stand_in_launch, monkeypatch, failing, where
):
    monkeypatch.setenv("STAND_IN_EXIT", json.dumps({"0": "wait", "1": "wait", "2": "wait", str(failing): 3}))
    start = time.monotonic()
    with pytest.raises(WorkerFailed) as failed:
        launch(3, ["train"])
    assert time.monotonic() - start < 10  # the others would wait a minute
    (logs,) = (stand_in_launch.parent / "tmp").glob("gradloop-launch-*")
    assert str(failed.value) == (
        f"worker {failing} exited with status 3 (its output is {where.format(logs=logs)}); stopped the others"
    )
    others = [r["pid"] for r in records(stand_in_launch) if r["tf_config"]["task"]["index"] != failing]
    assert len(others) == 2 and not any(map(alive, others))
    assert not list(stand_in_launch.glob("*.signal"))  # killed, not asked to stop


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_the_launch_is_passed_to_every_worker_once(stand_in, tmp_path, signum, status):
    """The launch runs in its own process here: the signal goes to it, not to pytest."""
    code = (
        f"import sys; sys.executable = {str(stand_in)!r}; from gradloop.cli import main; "
        "sys.exit(main(['launch', '--workers', '2', '--', 'train']))"
    )
    env = {
        **os.environ,
        "STAND_IN_OUT": str(tmp_path / "out"),
        "STAND_IN_EXIT": '{"0": "wait", "1": "wait"}',
        "TMPDIR": str(tmp_path / "tmp"),
    }
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 30
        while len(records(tmp_path / "out")) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == status, err
    name = signal.Signals(signum).name
    assert f"gradloop: {name}: telling 2 workers to save a checkpoint and stop" in err.splitlines()
    assert err.count("telling") == 1
    assert {p.name: p.read_text() for p in (tmp_path / "out").glob("*.signal")} == {
        "worker-0.signal": name,
        "worker-1.signal": name,
    }


# --------------------------------------------------------------------- real workers


@pytest.mark.slow
def test_real_workers_failing_on_bad_data_fail_the_launch_in_one_line(tmp_path):
    """The launch checks the flags, not the data: each worker finds these files damaged, exits 2, and
    the launch exits 1 naming the worker it saw fail first."""
    (tmp_path / "bad").mkdir()
    (tmp_path / "tmp").mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (tmp_path / "bad" / name).write_bytes(b"not an IDX file")
    start = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradloop",
            "launch",
            "--workers",
            "2",
            "--",
            "train",
            "--data-dir",
            str(tmp_path / "bad"),
            "--epochs",
            "1",
            "--run-dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TMPDIR": str(tmp_path / "tmp")},
    )
    seconds = time.monotonic() - start
    assert result.returncode == 1, result.stderr
    last = result.stderr.splitlines()[-1]
    (logs,) = (tmp_path / "tmp").glob("gradloop-launch-*")
    match = re.fullmatch(
        r"gradloop: error: worker (\d) exited with status 2 \(its output is (.*)\); stopped the others", last
    )
    assert match, result.stderr
    worker = int(match[1])
    assert match[2] == ("above" if worker == 0 else f"in {logs / 'worker-1.log'}")
    output = result.stderr if worker == 0 else (logs / "worker-1.log").read_text()
    assert f"gradloop: error: {tmp_path / 'bad' / 'train-images-idx3-ubyte'}" in output
    assert seconds < 60  # TensorFlow's start-up in two processes on a shared machine: about 12 s here


@pytest.mark.parametrize("flag", [["--strategy=mirrored"], ["--strat", "mirrored"], ["--strategy", "default"]])
def test_train_argv_refuses_the_strategy_in_every_spelling_argparse_takes(flag):
    with pytest.raises(ConfigError, match="drop --strategy"):
        train_argv(2, ["--", "train", *flag])
