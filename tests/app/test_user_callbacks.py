"""A user's own Keras callback in a CLI run: ``gradloop train --callback FILE.py:NAME`` with
``callback_args`` from the config file (gradloop.app.user_callbacks).

The callback writes one JSON file per epoch (that epoch's logs) into the run folder it is given;
the files must be there, carry the epoch's numbers as history.json has them, and the config's
arguments. A resume runs the run's copy of the callback file (the original deleted), and only
with ``--trust-code``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gradloop.app.config import build_config
from gradloop.cli import main
from gradloop.errors import ConfigError
from gradloop.run import files as run_files

MONITOR = """
import json

import keras
from monitor_names import epoch_file


class SaveLogs(keras.callbacks.Callback):
    \"\"\"One JSON file per epoch, in the run's folder: the epoch's logs and a tag from the config.\"\"\"

    def __init__(self, run_dir, folder="epochs", tag="default"):
        super().__init__()
        self.folder, self.tag = run_dir / folder, tag

    def on_epoch_end(self, epoch, logs=None):
        self.folder.mkdir(exist_ok=True)
        logs = {key: float(value) for key, value in (logs or {}).items()}
        (self.folder / epoch_file(epoch)).write_text(json.dumps({"tag": self.tag, "logs": logs}))


def counting(run_dir, name="count.txt"):
    \"\"\"A function returning a callback: the number of epochs seen, in one file.\"\"\"
    path = run_dir / name

    def count(epoch, logs):
        path.write_text(str(epoch + 1))

    return keras.callbacks.LambdaCallback(on_epoch_end=count)
"""
NAMES = "def epoch_file(epoch):\n    return f'epoch_{epoch + 1}.json'\n"
CONFIG = "callback_args:\n  SaveLogs: {folder: per_epoch, tag: from-config}\n  counting: {name: seen.txt}\n"
TRAIN = ["train", "--dataset", "mnist-sample", "--hidden", "16", "--batch-size", "64", "--steps-per-execution", "4"]


@pytest.fixture
def user(tmp_path, monkeypatch) -> Path:
    """The user's folder: the callback file, the module beside it that it imports, and the config file;
    the working directory is elsewhere, and must get nothing."""
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "monitor.py").write_text(MONITOR)
    (folder / "monitor_names.py").write_text(NAMES)
    (folder / "c.yaml").write_text(CONFIG)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return folder


def train(user: Path, run: Path, *extra: str) -> list[str]:
    return [
        *TRAIN,
        "--config",
        str(user / "c.yaml"),
        "--callback",
        f"{user}/monitor.py:SaveLogs",
        "--callback",
        f"{user}/monitor.py:counting",
        "--run-dir",
        str(run),
        *extra,
    ]


def epoch_files(run: Path) -> dict[int, dict]:
    return {int(p.stem.split("_")[1]): json.loads(p.read_text()) for p in (run / "per_epoch").glob("epoch_*.json")}


def test_a_callback_writes_each_epoch_into_the_run_with_the_config_args(user, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train(user, run, "--epochs", "2")) == 0, capsys.readouterr().err
    history = json.loads((run / run_files.HISTORY_JSON).read_text())
    written = epoch_files(run)
    assert sorted(written) == [1, 2]
    assert {w["tag"] for w in written.values()} == {"from-config"}
    assert [written[e]["logs"]["loss"] for e in (1, 2)] == pytest.approx(history["train_loss"], rel=1e-6)
    assert (run / "seen.txt").read_text() == "2"  # the function's callback, with its own argument
    assert list((tmp_path / "cwd").iterdir()) == []  # nothing where gradloop was started

    info = json.loads((run / run_files.RUN_JSON).read_text())
    copy = f"{run_files.CALLBACKS}/SaveLogs/{run_files.CALLBACK_SOURCE}"
    assert info["callback_sources"] == [
        f"{copy}:SaveLogs",
        f"{run_files.CALLBACKS}/counting/{run_files.CALLBACK_SOURCE}:counting",
    ]
    assert (run / copy).read_text() == MONITOR
    assert (run / run_files.CALLBACKS / "SaveLogs" / "monitor_names.py").read_text() == NAMES
    assert info["config"]["callbacks"] == [f"{user}/monitor.py:SaveLogs", f"{user}/monitor.py:counting"]


def test_a_resume_runs_the_runs_copy_and_only_with_trust_code(user, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train(user, run, "--epochs", "1")) == 0, capsys.readouterr().err
    capsys.readouterr()
    shutil.rmtree(user)  # the resume must need nothing of the original
    resume = ["train", "--resume", "--run-dir", str(run), "--epochs", "2"]
    before = (run / run_files.RUN_JSON).read_bytes()

    assert main(resume) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "runs callbacks of its own" in err and "--trust-code" in err, err
    assert (run / run_files.RUN_JSON).read_bytes() == before and sorted(epoch_files(run)) == [1]

    assert main([*resume, "--trust-code"]) == 0, capsys.readouterr().err
    written = epoch_files(run)
    assert sorted(written) == [1, 2] and written[2]["tag"] == "from-config"
    assert (run / "seen.txt").read_text() == "2"
    history = json.loads((run / run_files.HISTORY_JSON).read_text())
    assert written[2]["logs"]["loss"] == pytest.approx(history["train_loss"][1], rel=1e-6)


def test_a_crafted_callback_source_pointing_out_of_the_run_is_refused(user, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train(user, run, "--epochs", "1")) == 0, capsys.readouterr().err
    capsys.readouterr()
    info = json.loads((run / run_files.RUN_JSON).read_text())
    info["callback_sources"][0] = "../../elsewhere.py:SaveLogs"
    (run / run_files.RUN_JSON).write_text(json.dumps(info))
    assert main(["train", "--resume", "--run-dir", str(run), "--epochs", "2", "--trust-code"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "callback_sources" in err and "the run directory is damaged" in err, err


def test_callback_args_come_by_name_and_the_flag_repeats():
    config = build_config(
        {"callbacks": ["a.py:Save", "pkg.mod:Count"], "callback_args": {"Count": {"every": 2}}},
        callbacks=None,
    )
    assert config.callbacks == ("a.py:Save", "pkg.mod:Count")
    assert build_config({"callbacks": "a.py:Save"}).callbacks == ("a.py:Save",)
    with pytest.raises(ConfigError, match="callback_args names 'Other', which is no --callback's NAME"):
        build_config({"callbacks": ["a.py:Save"], "callback_args": {"Other": {}}})
    with pytest.raises(ConfigError, match="two callbacks are named Save"):
        build_config({"callbacks": ["a.py:Save", "b.py:Save"]})
