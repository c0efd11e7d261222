"""The CLI end to end: a run directory on the bundled sample, evaluate, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import pytest

from gradloop.cli import build_parser, main


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gradloop", *argv], capture_output=True, text=True, timeout=600
    )


def test_parser_reads_the_train_flags():
    args = build_parser().parse_args(["train", "--epochs", "3", "--classes", "all", "--jit"])
    assert (args.command, args.epochs, args.classes, args.jit_compile) == ("train", 3, "all", True)


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "r1"
    code = main(["train", "--dataset", "mnist-sample", "--epochs", "2", "--run-dir", str(run_dir)])
    assert code == 0
    return run_dir


def test_train_writes_a_complete_run_directory(sample_run):
    names = {p.name for p in sample_run.iterdir()}
    assert {"history.json", "history.csv", "history.png", "model.keras", "run.json"} <= names
    history = json.loads((sample_run / "history.json").read_text())
    assert set(history) == {"train_loss", "val_loss", "train_accuracy", "val_accuracy", "train_time"}
    assert all(len(v) == 2 for v in history.values())
    assert history["val_accuracy"][-1] > 0.9
    run = json.loads((sample_run / "run.json").read_text())
    assert run["status"] == "finished"
    assert (run["n_train"], run["n_val"], run["n_classes"], run["classes"]) == (1250, 250, 3, [0, 1, 2])
    assert run["num_replicas"] == 1 and run["versions"]["tensorflow"]
    assert run["config"]["hidden"] == [512, 256, 128] and run["data_source"]
    csv_lines = (sample_run / "history.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,") and len(csv_lines) == 3
    model = keras.models.load_model(sample_run / "model.keras")
    assert model.output_shape == (None, 3)


def test_evaluate_on_real_held_out_digits(sample_run, shared_mnist, capsys):
    assert main(["evaluate", str(sample_run), "--data-dir", str(shared_mnist), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_samples"] == 980 + 1135 + 1032  # test digits 0, 1, 2
    assert result["accuracy"] > 0.9
    assert sum(map(sum, result["confusion_matrix"])) == result["n_samples"]
    assert set(result["per_class_accuracy"]) == {"0", "1", "2"}


def test_an_existing_run_directory_is_refused_and_kept(sample_run, capsys):
    before = (sample_run / "history.json").read_text()
    assert main(["train", "--dataset", "mnist-sample", "--run-dir", str(sample_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gradloop: error: run directory") and "\n" not in err
    assert (sample_run / "history.json").read_text() == before


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--epochs", "0"],
        ["train", "--epochs", "many"],
        ["train", "--lr", "nan"],
        ["train", "--classes", "0,11"],
        ["train", "--hidden", "512,-1"],
        ["train", "--val-fraction", "1.5"],
        ["train", "--dataset", "cifar"],
        ["train", "--config", "/nonexistent.yaml"],
        ["evaluate", "/nonexistent-run"],
        ["frobnicate"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, tmp_path):
    result = run_cli(*argv, *(["--run-dir", str(tmp_path / "r")] if argv[0] == "train" else []))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradloop: error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
