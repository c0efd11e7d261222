"""One process per run: a run being written is locked (``RUN_DIR/run.lock``), a second writer is
refused in one line naming the holder's pid before it changes anything, readers still read it,
and the kernel drops the lock of a killed process."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gradloop.cli import main
from gradloop.errors import RunDirError
from gradloop.run import files as run_files
from gradloop.run import lock as run_lock
from gradloop.run import start as run_start

RUN = ["--dataset", "mnist-sample", "--classes", "0,1", "--hidden", "8", "--batch-size", "16", "--deterministic"]


def holder(run_dir: Path) -> subprocess.Popen:
    """Another process holding the run's lock as ``gradloop train`` does (run_lock.lock), until killed."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from gradloop.run import lock as run_lock; held = run_lock.lock({str(run_dir)!r}); "
            "print('held', flush=True); import time; time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "held\n"
    return proc


def files(folder: Path) -> dict[str, str]:
    """Every file's sha256 and every folder, by path in ``folder``: equal only if nothing was written."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for p in sorted(folder.rglob("*"))
    }


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def test_lock_holder_is_the_live_holders_pid_and_none_once_it_is_killed(tmp_path):
    assert run_lock.lock_holder(tmp_path) is None
    assert list(tmp_path.iterdir()) == []  # reading creates nothing
    proc = holder(tmp_path)
    try:
        assert run_lock.lock_holder(tmp_path) == proc.pid
        assert (tmp_path / run_files.LOCK).read_text() == f"{proc.pid} {socket.gethostname()}\n"
    finally:
        kill(proc)
    assert run_lock.lock_holder(tmp_path) is None  # no stale lock: the kernel dropped it with the process
    assert [p.name for p in tmp_path.iterdir()] == [run_files.LOCK]
    with run_lock.lock(tmp_path):  # and it can be taken again
        assert run_lock.lock_holder(tmp_path) == os.getpid()
    assert run_lock.lock_holder(tmp_path) is None


def test_a_second_lock_is_refused_naming_the_holder_even_in_the_same_process(tmp_path):
    first = run_lock.lock(tmp_path)
    with pytest.raises(
        RunDirError, match=rf"is in use by another gradloop process \(pid {os.getpid()} on .*kill {os.getpid()}"
    ):
        run_lock.lock(tmp_path)
    first.release()
    run_lock.lock(tmp_path).release()


def test_a_lone_free_lock_file_does_not_make_a_folder_taken(tmp_path):
    """A start that died between locking and creating run.json leaves only run.lock: the folder is still new."""
    run_lock.lock(tmp_path).release()
    assert run_start.check_new(tmp_path) == tmp_path
    run = run_start.claim(tmp_path)
    assert run_lock.lock_holder(tmp_path) == os.getpid()
    run.lock.release()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("lock") / "run"
    assert main(["train", *RUN, "--epochs", "1", "--run-dir", str(run_dir)]) == 0
    info = json.loads((run_dir / "run.json").read_text())
    assert (info["pid"], info["host"]) == (os.getpid(), socket.gethostname())  # who wrote it, for `gradloop runs`
    assert run_lock.lock_holder(run_dir) is None  # released when train returned
    return run_dir


@pytest.mark.parametrize(
    "flags", [["--resume", "--epochs", "2"], ["--overwrite"], []], ids=["resume", "overwrite", "new"]
)
def test_a_second_writer_is_refused_before_it_changes_anything(finished, capsys, flags):
    proc = holder(finished)
    try:
        before = files(finished)
        capsys.readouterr()
        argv = ["train", *([] if "--resume" in flags else RUN), *flags, "--run-dir", str(finished)]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == (
            f"gradloop: error: run directory {finished} is in use by another gradloop process (pid {proc.pid} on "
            f"{socket.gethostname()}); wait for it to end, stop it (kill {proc.pid}), or choose another --run-dir\n"
        )
        assert files(finished) == before  # --overwrite deleted nothing
    finally:
        kill(proc)


def test_a_second_writer_that_passed_the_check_is_still_stopped_by_the_lock(finished, tmp_path):
    """The early check and the lock are separate moments: taking the lock is what decides."""
    proc = holder(finished)
    try:
        with pytest.raises(RunDirError, match=f"pid {proc.pid}"):
            run_start.claim(finished, held=None)
        assert (finished / "run.json").stat().st_size > 0
    finally:
        kill(proc)


def test_a_running_train_is_locked_readable_and_free_once_killed(finished, tmp_path, capsys):
    """The real thing: `gradloop train --resume` running in another process holds the run; a second
    resume, an --overwrite and a new run in its folder are refused naming its pid and leave every file
    byte-identical, evaluate still reads the run, and once the process is SIGKILLed the run resumes."""
    run_dir = tmp_path / "run"
    subprocess.run(["cp", "-a", str(finished), str(run_dir)], check=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradloop", "train", "--resume", "--epochs", "500", "--run-dir", str(run_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while (
            run_lock.lock_holder(run_dir) != proc.pid
            or json.loads((run_dir / "run.json").read_text()).get("pid") != proc.pid
        ):
            assert proc.poll() is None and time.monotonic() < deadline, (
                proc.stderr.read() if proc.poll() is not None else "slow"
            )
            time.sleep(0.1)
        assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
        capsys.readouterr()
        # Frozen, the training process still holds the lock but writes nothing: any change is the refused one's.
        proc.send_signal(signal.SIGSTOP)
        for argv in (["--resume", "--epochs", "600"], [*RUN, "--overwrite"], RUN):
            before = files(run_dir)
            assert main(["train", *argv, "--run-dir", str(run_dir)]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"in use by another gradloop process (pid {proc.pid} on" in err, err
            assert files(run_dir) == before, argv  # not a byte changed, not a file added or removed
        proc.send_signal(signal.SIGCONT)
        assert (run_dir / "model.keras").is_file() and (run_dir / "checkpoints" / "checkpoint").is_file()
        assert main(["evaluate", str(run_dir), "--split", "val", "--json"]) == 0  # a running run is still read
        assert json.loads(capsys.readouterr().out)["n_samples"] > 0
    finally:
        kill(proc)
    assert run_lock.lock_holder(run_dir) is None
    assert main(["train", "--resume", "--epochs", "2", "--run-dir", str(run_dir)]) == 0
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_under_multi_worker_the_chief_holds_the_run_and_the_others_resume_beside_it(tmp_path):
    run_dir = tmp_path / "mw"
    err = tmp_path / "launch.err"

    def launch(*argv: str) -> subprocess.Popen:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gradloop",
                "launch",
                "--workers",
                "2",
                "--",
                "train",
                *argv,
                "--run-dir",
                str(run_dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=err.open("w"),
        )

    proc = launch(*RUN, "--epochs", "1")
    deadline, holder = time.monotonic() + 300, None
    while holder is None and proc.poll() is None and time.monotonic() < deadline:
        holder = run_lock.lock_holder(run_dir)
        time.sleep(0.05)
    assert proc.wait(timeout=300) == 0, err.read_text()
    pids = dict((int(w), int(p)) for w, p in re.findall(r"launched worker (\d+) \(pid (\d+)\)", err.read_text()))
    assert holder == pids[0] and json.loads((run_dir / "run.json").read_text())["pid"] == pids[0]  # the chief
    resumed = launch("--resume", "--epochs", "2")  # worker 1 reads the run while the chief holds it
    assert resumed.wait(timeout=300) == 0, err.read_text()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
