"""A run folder from someone else: reading it runs none of its code and follows none of its paths out.

Each crafted folder starts as a copy of a real finished run; the commands that read runs
(evaluate, report, export, predict, compare, runs) either refuse it in one line, exit 2,
or read it; a marker file that the folder's code would write never appears, and nothing
is written outside the folder. ``--trust-code`` lets the code run (the marker then appears:
the trap is live)."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from gradloop.cli import main
from gradloop.commands import evaluate as evaluation
from gradloop.run import files as run_files
from gradloop.run import schema as run_schema

READERS = ("evaluate", "report", "export", "predict")  # the commands that load a run's model


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    """A copy of a finished run, to craft."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("report", "saved_model")))


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "outside" / "code-ran"


def command(name: str, run: Path, tmp_path: Path, *extra: str) -> list[str]:
    """``name`` on ``run``, writing (if at all) inside the run folder or a fresh folder of the test."""
    if name == "predict":
        x = tmp_path / "x.npy"
        if not x.exists():
            np.save(x, np.zeros((2, 28, 28), np.uint8))
        return ["predict", str(run), str(x), *extra]
    if name == "compare":
        return ["compare", str(run), str(run.parent / "other"), "--out", str(tmp_path / "page.html"), *extra]
    if name == "evaluate":
        return ["evaluate", str(run), "--split", "val", *extra]  # the bundled sample has no test split
    return [name, str(run), *extra]


def refused(capsys, argv: list[str], *, match: str) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (argv, out, err)
    assert err.count("\n") == 1 and err.startswith("gradloop: error: ") and "Traceback" not in err, err
    assert match in err, err
    return err


def edit_info(run: Path, **changes) -> None:
    info = json.loads((run / "run.json").read_text())
    info.update(changes)
    (run / "run.json").write_text(json.dumps(info))


def writes(marker: Path) -> str:
    """Python that creates ``marker`` (the folder's code running), and returns nothing of note."""
    return (
        f"(__import__('pathlib').Path({str(marker)!r}).parent.mkdir(exist_ok=True), open({str(marker)!r}, 'w').close())"
    )


def outputs(run: Path) -> int:
    return json.loads((run / "run.json").read_text())["n_outputs"]


# --------------------------------------------------------------------- code in the folder


@keras.saving.register_keras_serializable(package="untrusted_test")
class Scale(keras.layers.Layer):
    """A layer Keras does not have: model_source.py defines it too."""

    def call(self, x):
        return x * 2.0


def save_model_with(run: Path, layer: keras.layers.Layer) -> None:
    inputs = keras.Input((784,))
    outputs_ = layer(keras.layers.Dense(outputs(run))(inputs))
    (run / "model.keras").unlink()
    keras.Model(inputs, outputs_).save(run / "model.keras")
    shutil.rmtree(run.parent / "outside", ignore_errors=True)  # building the model here called the layer once


@pytest.mark.parametrize("name", READERS)
def test_a_lambda_layer_is_refused_and_never_runs(run, marker, tmp_path, capsys, name):
    code = writes(marker)
    save_model_with(run, keras.layers.Lambda(eval(f"lambda x: ({code}, x)[1]")))  # noqa: S307  (the trap's code)
    assert not marker.exists()
    refused(capsys, command(name, run, tmp_path), match="needs a Lambda layer's Python code")
    assert not marker.exists()


def test_a_lambda_layer_runs_with_trust_code(run, marker, tmp_path, capsys):
    code = writes(marker)
    save_model_with(run, keras.layers.Lambda(eval(f"lambda x: ({code}, x)[1]")))  # noqa: S307
    assert main(command("evaluate", run, tmp_path, "--trust-code")) == 0, capsys.readouterr().err
    assert marker.exists()  # the trap is live: without the flag, nothing ran


MODEL_SOURCE = """\
import keras
{code}


@keras.saving.register_keras_serializable(package="untrusted_test")
class Scale(keras.layers.Layer):
    def call(self, x):
        return x * 2.0


def build(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, Scale()(keras.layers.Dense(num_classes)(inputs)))
"""


def craft_model_source(run: Path, marker: Path, *, custom_layer: bool) -> None:
    """A run of ``--model model.py:build``: its copy model_source.py writes ``marker`` when imported."""
    (run / "model_source.py").write_text(MODEL_SOURCE.format(code=writes(marker)))
    edit_info(run, model_source="model_source.py:build")
    if custom_layer:
        save_model_with(run, Scale())
        keras.saving.get_custom_objects().pop("untrusted_test>Scale")  # as in a fresh process: Keras has no Scale


@pytest.mark.parametrize("name", READERS)
def test_a_model_of_the_runs_own_classes_is_refused_and_model_source_never_imported(
    run, marker, tmp_path, capsys, name
):
    craft_model_source(run, marker, custom_layer=True)
    try:
        refused(capsys, command(name, run, tmp_path), match="needs Scale, which Keras does not have")
    finally:
        keras.saving.get_custom_objects()["untrusted_test>Scale"] = Scale
    assert not marker.exists()


def test_trust_code_imports_model_source_for_its_classes(run, marker, tmp_path, capsys):
    craft_model_source(run, marker, custom_layer=True)
    try:
        assert main(command("evaluate", run, tmp_path, "--trust-code")) == 0, capsys.readouterr().err
    finally:
        keras.saving.get_custom_objects()["untrusted_test>Scale"] = Scale
    assert marker.exists()


def test_a_model_of_keras_layers_loads_without_importing_model_source(run, marker, tmp_path, capsys):
    """model_source.py built the model, but model.keras needs none of its code: nothing of it runs."""
    craft_model_source(run, marker, custom_layer=False)
    for name in READERS:
        assert main(command(name, run, tmp_path)) == 0, (name, capsys.readouterr().err)
    assert not marker.exists()


def test_a_data_function_named_by_run_json_is_not_run(run, marker, tmp_path, capsys):
    evil = tmp_path / "evil.py"
    evil.write_text(f"{writes(marker)}\n\ndef load(seed):\n    return {{}}\n")
    info = json.loads((run / "run.json").read_text())
    edit_info(
        run,
        config={**info["config"], "data": f"{evil}:load", "dataset": None},
        data={"kind": "function", "fingerprint": {}, "preprocessing": {}, "source_classes": None},
    )
    for name in ("evaluate", "report"):
        refused(capsys, command(name, run, tmp_path), match="data function")
    assert not marker.exists()


class Trap:
    """Unpickled, it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_in_the_runs_data_is_never_unpickled(run, marker, tmp_path, capsys):
    marker.parent.mkdir()
    npz = run / "data.npz"
    np.savez(npz, x=np.array([Trap(marker)] * 2, dtype=object), y=np.array([0, 1]))
    with zipfile.ZipFile(npz) as archive:  # the trap is armed: numpy would call open() unpickling it
        assert b"code-ran" in archive.read("x.npy")
    info = json.loads((run / "run.json").read_text())
    edit_info(
        run,
        config={**info["config"], "data": str(npz), "dataset": None},
        data={"kind": "arrays", "fingerprint": {}, "preprocessing": {}, "source_classes": ["0", "1"]},
    )
    for name in ("evaluate", "report"):
        refused(capsys, command(name, run, tmp_path), match="never unpickles")
    assert not marker.exists()


# --------------------------------------------------------------------- run.json and history.json, crafted

DEEP = "[" * 100_000 + "]" * 100_000
BAD_INFO = {
    "classes a string": ({"classes": "0123456789"}, "has classes"),
    "n_outputs text": ({"n_outputs": "10"}, "has n_outputs"),
    "n_outputs huge": ({"n_outputs": 10**30}, "has n_outputs"),
    "task unknown": ({"task": "<script>"}, "has task"),
    "status a number": ({"status": 7}, "has status"),
    "versions a list": ({"versions": ["tf"]}, "has versions"),
    "best a number": ({"best": 3}, "has best"),
    "epochs_done negative": ({"epochs_done": -1}, "has epochs_done"),
    "data a list": ({"data": [1]}, "has data"),
    "data kind unknown": ({"data": {"kind": "pickle"}}, "has data kind"),
    "preprocessing a list": ({"data": {"kind": "images", "preprocessing": [1]}}, "has data preprocessing"),
    "image size huge": (
        {"data": {"kind": "images", "preprocessing": {"image_size": [10**9, 10**9], "color_mode": "rgb"}}},
        "has data image_size",
    ),
    "standardize std zero": (
        {
            "data": {
                "kind": "csv",
                "preprocessing": {"columns": ["a"], "standardize": {"columns": ["a"], "mean": [0.0], "std": [0.0]}},
            }
        },
        "has data standardize",
    ),
    "standardize mean text": (
        {
            "data": {
                "kind": "csv",
                "preprocessing": {"columns": ["a"], "standardize": {"columns": ["a"], "mean": ["x"], "std": [1.0]}},
            }
        },
        "has data standardize",
    ),
    "model_source up and out": ({"model_source": "../evil.py:build"}, "has model_source"),
    "model_source absolute": ({"model_source": "/tmp/evil.py:build"}, "has model_source"),
    "model_source another file": ({"model_source": "helpers.py:build"}, "has model_source"),
    "config epochs text": ({"config": "CONFIG:epochs=x"}, "invalid config"),
    "config hidden huge": ({"config": "CONFIG:hidden=[1000000000]"}, "invalid config"),
    "config not a dict": ({"config": [1]}, "has no config"),
    "classes too many": ({"classes": list(range(run_schema.MAX_ITEMS + 1))}, "has classes"),
}


def craft_info(run: Path, changes: dict) -> None:
    info = json.loads((run / "run.json").read_text())
    for key, value in changes.items():
        if isinstance(value, str) and value.startswith("CONFIG:"):
            name, _, text = value.removeprefix("CONFIG:").partition("=")
            value = {**info["config"], name: json.loads(text) if text[0] in "[{" else text}
        info[key] = value
    (run / "run.json").write_text(json.dumps(info))


@pytest.fixture
def other(run) -> Path:
    """A second, sound run beside the crafted one, for compare."""
    return Path(shutil.copytree(run, run.parent / "other"))


@pytest.mark.parametrize("case", BAD_INFO, ids=list(BAD_INFO))
def test_a_crafted_run_json_is_one_line(run, other, tmp_path, capsys, case):
    changes, message = BAD_INFO[case]
    craft_info(run, changes)
    # compare shows any config as text, and export builds nothing from it: the others refuse a bad one
    commands = [*READERS, "compare"] if "config" not in changes else ["evaluate", "report", "predict"]
    for name in commands:
        refused(capsys, command(name, run, tmp_path), match=message)
    assert main(["runs", str(run.parent), "--json"]) == 0  # listed as unreadable, the others still listed
    listed = {Path(r["path"]).name: r for r in json.loads(capsys.readouterr().out)}
    assert listed["other"]["status"] == "finished"
    assert listed["run"]["status"] == "unreadable" or "config" in changes


BAD_FILES = {
    "run.json too large": (
        "run.json",
        lambda: b'{"config": {}, "pad": "' + b"x" * run_files.MAX_JSON_BYTES + b'"}',
        "larger than",
    ),
    "run.json nested deep": ("run.json", lambda: DEEP.encode(), "cannot read"),
    "run.json not UTF-8": ("run.json", lambda: b'{"config": {"\xff": 1}}', "cannot read"),
    "history values text": (
        "history.json",
        lambda: json.dumps({"train_loss": ["x", "y"]}).encode(),
        "not a list of at most",
    ),
    "history values lists": (
        "history.json",
        lambda: json.dumps({"train_loss": [[1.0]]}).encode(),
        "not a list of at most",
    ),
    "history a list": ("history.json", lambda: b"[1, 2]", "not a history of per-epoch lists"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_a_crafted_run_file_is_one_line(run, other, tmp_path, capsys, case):
    name, content, message = BAD_FILES[case]
    (run / name).write_bytes(content())
    commands = ["report", "compare"] if name == "history.json" else [*READERS, "compare"]
    for command_name in commands:
        refused(capsys, command(command_name, run, tmp_path), match=message)


def test_a_fifo_for_run_json_is_refused_not_waited_on(run, other, tmp_path, capsys):
    (run / "run.json").unlink()
    os.mkfifo(run / "run.json")
    for name in READERS:
        refused(capsys, command(name, run, tmp_path), match="not a regular file")
    refused(capsys, command("compare", run, tmp_path), match="no run.json")  # runs and compare look for a file
    assert main(["runs", str(run.parent), "--json"]) == 0
    assert [r["status"] for r in json.loads(capsys.readouterr().out)] == ["finished"]


# --------------------------------------------------------------------- symlinks out of the folder


@pytest.mark.parametrize("name", ["model.keras", "run.json", "history.json"])
def test_a_file_linked_out_of_the_folder_is_not_read(run, other, tmp_path, capsys, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(run / name, outside / name)
    (run / name).symlink_to(outside / name)
    commands = {"model.keras": READERS, "run.json": [*READERS, "compare"], "history.json": ["report", "compare"]}[name]
    for command_name in commands:
        refused(capsys, command(command_name, run, tmp_path), match="leads out of the run directory")


@pytest.mark.parametrize("name, folder", [("report", "report"), ("export", "saved_model")])
def test_an_output_folder_linked_out_of_the_run_gets_nothing(run, tmp_path, capsys, name, folder):
    outside = tmp_path / "outside"
    outside.mkdir()
    (run / folder).symlink_to(outside)
    refused(capsys, [name, str(run)], match="leads out of the run directory")
    assert list(outside.iterdir()) == []


def test_a_partial_file_linked_out_is_replaced_not_written_through(run, tmp_path, capsys):
    """A planted temporary name (report.partial.html -> a file elsewhere): the write replaces the link."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (run / "report").mkdir()
    for partial in ("report.partial.html", "history.partial.png", "confusion_matrix.partial.png"):
        (run / "report" / partial).symlink_to(victim)
    assert main(["report", str(run)]) == 0, capsys.readouterr().err
    assert victim.read_text() == "keep me"
    assert (run / "report" / "report.html").is_file() and not (run / "report" / "report.html").is_symlink()


def test_a_link_inside_the_folder_is_fine(run, tmp_path, capsys):
    (run / "model.keras").rename(run / "model.last.keras")
    (run / "model.keras").symlink_to("model.last.keras")
    assert main(command("evaluate", run, tmp_path)) == 0, capsys.readouterr().err


def test_a_run_reached_through_a_link_is_fine(run, tmp_path, capsys):
    (tmp_path / "latest").symlink_to(run)
    assert main(command("evaluate", tmp_path / "latest", tmp_path)) == 0, capsys.readouterr().err


def test_what_run_json_holds_is_what_a_real_run_writes(tiny_run):
    """The checks accept every field a finished run writes (a stricter check would refuse real runs)."""
    info = json.loads((tiny_run / "run.json").read_text())
    run_schema.check_info(info, tiny_run / "run.json")
    assert evaluation.load_model(tiny_run).count_params() == info["parameters"]


def test_a_run_lock_linked_out_of_the_folder_is_never_written(run, tmp_path, capsys):
    victim = tmp_path / "outside" / "precious.txt"
    victim.parent.mkdir()
    victim.write_text("precious data")
    lock = run / "run.lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(victim)
    refused(capsys, ["train", "--resume", "--epochs", "3", "--run-dir", str(run)], match="cannot lock run directory")
    assert victim.read_text() == "precious data"


def test_a_fifo_for_run_lock_does_not_hang_runs(run, tmp_path, capsys):
    edit_info(run, status="running")
    (run / "run.lock").unlink(missing_ok=True)
    os.mkfifo(run / "run.lock")
    assert main(["runs", str(run.parent), "--json"]) == 0
    (listed,) = [r for r in json.loads(capsys.readouterr().out) if r["name"] == "run"]
    assert listed["status"] == "killed"


def test_a_cache_folder_linked_out_is_not_resumed_into(run, tmp_path, capsys):
    outside = tmp_path / "outside-cache"
    outside.mkdir()
    (run / "cache").symlink_to(outside)  # where a resume would decode an image folder's pixels
    refused(
        capsys, ["train", "--resume", "--epochs", "3", "--run-dir", str(run)], match="leads out of the run directory"
    )
    assert list(outside.iterdir()) == []


def test_a_checkpoints_folder_linked_out_is_not_resumed_into(run, tmp_path, capsys):
    outside = tmp_path / "outside-checkpoints"
    shutil.move(run / "checkpoints", outside)
    (run / "checkpoints").symlink_to(outside)
    refused(
        capsys, ["train", "--resume", "--epochs", "3", "--run-dir", str(run)], match="leads out of the run directory"
    )
