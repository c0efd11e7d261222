"""The run directory: its layout, run.json's format and status, history files, atomic writes."""

from __future__ import annotations

import csv
import json

import pytest

from gradloop import atomic
from gradloop.errors import ConfigError, RunDirError
from gradloop.run import files as run_files
from gradloop.run import folder as run_folder
from gradloop.run import start as run_start
from gradloop.run.folder import RunDir


def test_a_failed_write_leaves_the_old_file_and_no_partial_file(tmp_path):
    path = tmp_path / "run.json"
    run_files.write_json(path, {"a": 1})

    def half_then_crash(tmp):
        tmp.write_text('{"a": ')
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic.write_atomically(path, half_then_crash)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_the_temporary_name_keeps_the_suffix_keras_chooses_the_format_by(tmp_path):
    seen = []
    atomic.write_atomically(tmp_path / "model.keras", lambda tmp: (seen.append(tmp.name), tmp.write_text("x")))
    assert seen == ["model.partial.keras"]
    assert (tmp_path / "model.keras").read_text() == "x"


def test_status_moves_through_start_interrupt_resume_finish(tmp_path):
    run = run_start.claim(tmp_path / "r")
    run.start({"config": {"epochs": 2}})
    assert read(run)["status"] == "running" and read(run)["format"] == run_folder.FORMAT
    run.interrupted(epoch=1, step=7)
    assert read(run)["status"] == "interrupted" and read(run)["interrupted_at"] == {"epoch": 1, "step": 7}
    again = run_start.open_to_resume(run.path)
    again.resume(config={"epochs": 3}, epoch=1, step=7, onednn_kernels=True)
    info = read(again)
    assert info["status"] == "running" and "interrupted_at" not in info and info["config"] == {"epochs": 3}
    assert [{k: v for k, v in r.items() if k != "at"} for r in info["resumed"]] == [
        {"epoch": 1, "step": 7, "onednn_kernels": True}
    ]
    again.finished(epochs_done=3)
    assert read(again)["status"] == "finished" and read(again)["epochs_done"] == 3


def test_a_failed_run_records_its_error(tmp_path):
    run = run_start.claim(tmp_path / "r")
    run.start({"config": {}})
    run.failed("the training loss became nan at step 2")
    assert read(run)["status"] == "failed" and read(run)["error"] == "the training loss became nan at step 2"


def read(run: RunDir) -> dict:
    return json.loads((run / run_files.RUN_JSON).read_text())


def test_history_files_grow_an_epoch_at_a_time_in_the_tutorials_names(tmp_path):
    run = RunDir(tmp_path)
    run.continue_history({"loss": [0.5], "val_loss": [0.6]})  # a resumed run's first epoch
    run.record_epoch({"loss": 0.25, "val_loss": 0.375})
    assert json.loads((tmp_path / run_files.HISTORY_JSON).read_text()) == {
        "train_loss": [0.5, 0.25],
        "val_loss": [0.6, 0.375],
    }
    rows = list(csv.reader((tmp_path / run_files.HISTORY_CSV).open()))
    assert rows == [["epoch", "train_loss", "val_loss"], ["1", "0.5", "0.6"], ["2", "0.25", "0.375"]]
    assert run.read_history() == {"train_loss": [0.5, 0.25], "val_loss": [0.6, 0.375]}


def test_a_run_json_without_a_format_is_upgraded_and_a_newer_one_refused(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"config": {}, "strategy": "multi_worker", "num_replicas": 2}))
    info = RunDir.open(tmp_path).info
    assert (info["format"], info["workers"]) == (run_folder.FORMAT, 2)  # before format 1: a replica per worker
    (tmp_path / "run.json").write_text(json.dumps({"config": {}, "strategy": "mirrored", "num_replicas": 2}))
    assert RunDir.open(tmp_path).info["workers"] == 1  # two replicas of one process
    (tmp_path / "run.json").write_text(json.dumps({"config": {}, "format": run_folder.FORMAT + 1}))
    with pytest.raises(RunDirError, match=f"format {run_folder.FORMAT + 1}, newer than this gradloop's"):
        RunDir.open(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"config": {}, "format": "1"}))
    with pytest.raises(RunDirError, match="not a version number"):
        RunDir.open(tmp_path)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_text("x"), "is not a folder"),
        (lambda p: p.mkdir(), "no run.json"),
        (lambda p: (p.mkdir(), (p / "run.json").write_text("[]")), "has no config"),
        (lambda p: (p.mkdir(), (p / "run.json").write_text("{")), "the run directory is damaged"),
        (lambda p: (p.mkdir(), (p / "run.json").write_text('{"config": {}, "status": "done"}')), "has status 'done'"),
        (lambda p: (p.mkdir(), (p / "run.json").write_text('{"config": {}, "workers": "2"}')), "not a count"),
    ],
)
def test_only_a_folder_with_a_valid_run_json_opens(tmp_path, make, message):
    make(tmp_path / "r")
    with pytest.raises(RunDirError, match=message):
        RunDir.open(tmp_path / "r")


def test_a_new_run_never_lands_in_an_earlier_ones_folder(tmp_path):
    assert run_start.check_new(tmp_path / "new") == tmp_path / "new"
    run = run_start.claim(tmp_path / "new")
    with pytest.raises(RunDirError, match="in use by another gradloop process"):  # while its process holds it
        run_start.claim(run.path)
    run.lock.release()  # and once that process is gone, its run.json still claims the folder
    with pytest.raises(RunDirError, match="taken by another run meanwhile"):
        run_start.claim(run.path)
    run.start({"config": {}})
    with pytest.raises(RunDirError, match="already exists and is not empty"):
        run_start.check_new(run.path)
    assert run_start.check_new(run.path, overwrite=True) == run.path
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="so --overwrite leaves it alone"):
        run_start.check_new(tmp_path / "foreign", overwrite=True)


def test_only_a_run_with_a_checkpoint_and_epochs_left_resumes(tmp_path):
    run = run_start.claim(tmp_path / "r")
    run.start({"config": {}, "strategy": "multi_worker", "workers": 2})
    run.lock.release()  # the process that wrote it has ended
    with pytest.raises(RunDirError, match="has no checkpoint to resume from"):
        run_start.check_resumable(run.path, epochs=3, workers=2)
    (run / run_files.CHECKPOINTS).mkdir()
    (run / run_files.CHECKPOINTS / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
    assert run_start.check_resumable(run.path, epochs=3, workers=2).info["workers"] == 2
    with pytest.raises(ConfigError, match="trained on 2 workers but this resume has 3"):
        run_start.check_resumable(run.path, epochs=3, workers=3)
    run.finished(epochs_done=3, stopped_early=None)
    with pytest.raises(RunDirError, match="already finished 3 epochs"):
        run_start.check_resumable(run.path, epochs=3, workers=2)
    assert run_start.check_resumable(run.path, epochs=4, workers=2).info["epochs_done"] == 3
