"""The CLI end to end: a run directory on the bundled sample, evaluate, one-line errors."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from fractions import Fraction

import keras
import pytest

from gradloop.app import config, cpu
from gradloop.cli import build_parser, main


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gradloop", *argv],
        capture_output=True,
        text=True,
        timeout=600,
        env=None if env is None else os.environ | env,
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
    assert run["onednn_kernels"] is cpu.onednn_kernels() is not None
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
        ["train", "--lr-schedule", "linear"],
        ["train", "--clip-norm", "-1"],
        ["train", "--accumulate-steps", "0"],
        ["train", "--precision", "float16"],
        ["report", "/nonexistent-run"],
        ["export", "/nonexistent-run"],
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


@pytest.mark.parametrize(
    "argv", [["evaluate", "/nonexistent-run"], ["train", "--resume", "--run-dir", "/nonexistent-run"]]
)
def test_errors_stay_one_line_where_tensorflow_announces_its_onednn_kernels(argv):
    """TensorFlow writes the notice past TF_CPP_MIN_LOG_LEVEL when its oneDNN kernels are on: the
    CLI's default, and TensorFlow's on CPUs with AVX-VNNI, AVX-512 VNNI or BF16, or AMX. These errors come after
    TensorFlow is imported."""
    result = run_cli(*argv, env={"TF_ENABLE_ONEDNN_OPTS": "1"})
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("gradloop: error: ")


# What the CLI's TensorFlow does with a NaN: a Keras Dense ReLU layer in a compiled function, as in every step.
KERNELS_AND_NANS = """
from gradloop.app import cpu
cpu.import_tensorflow()
import keras, numpy as np, tensorflow as tf
layer = keras.layers.Dense(3, activation="relu")
x = np.ones((2, 4), np.float32)
x[0, 0] = np.nan
print(cpu.onednn_kernels(), np.isnan(tf.function(layer)(x).numpy()[0]).all())
"""


@pytest.mark.parametrize(("setting", "kernels"), [(None, "True"), ("1", "True"), ("0", "False")])
def test_the_cli_runs_onednn_kernels_unless_told_not_to_and_nans_stay_visible_through_them(setting, kernels):
    """oneDNN's fused MatMul+BiasAdd+ReLU would turn the NaN into 0, hiding a divergence from the NaN guard."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    result = subprocess.run(
        [sys.executable, "-c", KERNELS_AND_NANS], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [kernels, "True"]
    assert "oneDNN custom operations" not in result.stderr


# One non-default value per config key: (flag arguments, YAML value).
CONFIG_SAMPLES = {
    "dataset": (["--dataset", "fashion_mnist"], "fashion_mnist"),
    "data_dir": (["--data-dir", "/data/digits"], "/data/digits"),
    "classes": (["--classes", "3,5"], [3, 5]),
    "model": (["--model", "cnn"], "cnn"),
    "hidden": (["--hidden", "64,32"], [64, 32]),
    "epochs": (["--epochs", "3"], 3),
    "batch_size": (["--batch-size", "16"], 16),
    "lr": (["--lr", "0.002"], 0.002),
    "lr_schedule": (["--lr-schedule", "cosine"], "cosine"),
    "warmup_steps": (["--warmup-steps", "100"], 100),
    "decay_steps": (["--decay-steps", "500"], 500),
    "decay_rate": (["--decay-rate", "0.5"], 0.5),
    "clip_norm": (["--clip-norm", "1.5"], 1.5),
    "accumulate_steps": (["--accumulate-steps", "4"], 4),
    "precision": (["--precision", "mixed_bfloat16"], "mixed_bfloat16"),
    "val_fraction": (["--val-fraction", "0.25"], 0.25),
    "seed": (["--seed", "7"], 7),
    "steps_per_execution": (["--steps-per-execution", "4"], 4),
    "jit_compile": (["--jit"], True),
    "summary_every": (["--summary-every", "10"], 10),
    "strategy": (["--strategy", "mirrored"], "mirrored"),
    "replicas": (["--replicas", "2"], 2),
    "run_dir": (["--run-dir", "/tmp/somewhere"], "/tmp/somewhere"),
    "deterministic": (["--deterministic"], True),
    "checkpoint_every": (["--checkpoint-every", "50"], 50),
    "checkpoint_seconds": (["--checkpoint-seconds", "60.5"], 60.5),
    "early_stop": (["--early-stop", "3"], 3),
    "monitor": (["--monitor", "val_accuracy"], "val_accuracy"),
    "validation_every": (["--validation-every", "2"], 2),
    "class_weight": (["--class-weight", "balanced"], "balanced"),
    "ema": (["--ema", "0.999"], 0.999),
    "loss": (["--loss", "categorical_focal_crossentropy"], "categorical_focal_crossentropy"),
    "metrics": (["--metrics", "accuracy,auc"], ["accuracy", "auc"]),
    "optimizer": (["--optimizer", "sgd"], "sgd"),
    "callbacks": (["--callback", "cb.py:Save", "--callback", "pkg.cbs:Count"], ["cb.py:Save", "pkg.cbs:Count"]),
}
# The keys of your own data (--data excludes --dataset and --data-dir, and reads classes by name).
OWN_DATA_SAMPLES = {
    "data": (["--data", "/data/table.csv"], "/data/table.csv"),
    "image_cache": (["--image-cache", "off"], "off"),
    "target": (["--target", "species"], "species"),
    "task": (["--task", "regression"], "regression"),
    "image_size": (["--image-size", "32,48"], [32, 48]),
    "color_mode": (["--color-mode", "rgb"], "rgb"),
    "fill": (["--fill", "mean"], "mean"),
    "header": (["--header", "no"], "no"),
    "classes": (["--classes", "setosa,virginica"], ["setosa", "virginica"]),
}
FILE_ONLY_KEYS = {"model_args", "callback_args"}  # mappings: --config file keys without a flag


def command_parser(name: str):
    return build_parser()._subparsers._group_actions[0].choices[name]


def train_flag_destinations() -> set[str]:
    from gradloop.commands.train import NON_CONFIG_TRAIN_FLAGS

    train = command_parser("train")
    return {a.dest for a in train._actions if a.dest != "help" and a.dest not in NON_CONFIG_TRAIN_FLAGS}


def test_every_train_flag_is_a_config_file_key():
    from gradloop.app.config import CONFIG_KEYS

    assert train_flag_destinations() == set(CONFIG_KEYS) - FILE_ONLY_KEYS
    assert set(CONFIG_SAMPLES) | set(OWN_DATA_SAMPLES) | FILE_ONLY_KEYS == set(CONFIG_KEYS), (
        "add a sample for each new key"
    )


def test_each_config_field_is_exactly_one_train_flag_named_after_it():
    train = command_parser("train")
    for field in dataclasses.fields(config.TrainConfig):
        actions = [a for a in train._actions if a.dest == field.name]
        if field.name in FILE_ONLY_KEYS:
            assert actions == []
            continue
        (action,) = actions
        assert action.option_strings == [config.flag_name(field.name)]
        assert action.default is None  # "not given": a --config file's value stands
    assert (config.flag_name("jit_compile"), config.flag_name("batch_size")) == ("--jit", "--batch-size")


def test_the_train_help_states_each_default_of_the_config():
    train = command_parser("train")
    for field in dataclasses.fields(config.TrainConfig):
        if field.name in FILE_ONLY_KEYS:
            continue
        (action,) = [a for a in train._actions if a.dest == field.name]
        if isinstance(field.default, bool):  # a switch turns an option on: it must start off
            assert field.default is False and "default" not in action.help
            continue
        shown = re.fullmatch(r".+ \(default: (.+)\)", action.help).group(1)
        if field.default is None:
            assert shown == field.metadata["flag"].unset != ""
        elif isinstance(field.default, float):
            assert float(Fraction(shown)) == field.default, field.name  # 0.0001, 300, 1/6
        else:
            value = getattr(train.parse_args([action.option_strings[0], shown]), field.name)
            assert config.build_config(**{field.name: value}) == config.TrainConfig(), field.name


def test_argparse_checks_the_choices_of_lr_schedule_precision_and_image_cache_and_the_config_the_others():
    """Which check refuses a value decides the message: argparse's "invalid choice" or the config's "must be one of".
    --model takes files and modules too, so the config checks it."""
    train = command_parser("train")
    checked = {a.dest: a.choices for a in train._actions if a.choices is not None}
    assert checked == {
        "lr_schedule": config.LR_SCHEDULES,
        "precision": config.PRECISIONS,
        "image_cache": config.IMAGE_CACHE,
    }
    listed = {
        a.dest: a.metavar for a in train._actions if a.dest in ("dataset", "strategy", "task", "color_mode", "fill")
    }
    assert listed == {
        "dataset": "{mnist,fashion_mnist,mnist-sample}",
        "strategy": "{default,mirrored,multi_worker}",
        "task": "{classification,regression}",
        "color_mode": "{grayscale,rgb,rgba}",
        "fill": "{mean,zero,drop}",
    }


# Building the parser, parsing and printing help must not wait for TensorFlow.
NO_TENSORFLOW = """
import contextlib, io, sys
from gradloop import cli
parser = cli.build_parser()
parser.parse_args(["train", "--lr", "1e-3", "--jit"])
parser.parse_args(["bench", "--variants", "gradloop --jit"])
for argv in (["--help"], ["train", "--help"], ["bench", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        parser.parse_args(argv)
import gradloop.bench.runner
print(sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
"""


def test_parsing_and_help_do_not_import_tensorflow():
    result = subprocess.run([sys.executable, "-c", NO_TENSORFLOW], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "samples",
    [
        CONFIG_SAMPLES,
        {**{k: v for k, v in CONFIG_SAMPLES.items() if k not in ("dataset", "data_dir")}, **OWN_DATA_SAMPLES},
    ],
    ids=["built-in data", "own data"],
)
def test_a_config_file_with_every_key_equals_the_flags_and_print_config_round_trips(samples, tmp_path, capsys):
    import yaml

    flags = [arg for argv, _ in samples.values() for arg in argv]
    config_file = tmp_path / "all.yaml"
    values = {k: v for k, (_, v) in samples.items()}
    config_file.write_text(yaml.safe_dump({k.replace("_", "-"): v for k, v in values.items()}))
    assert main(["train", *flags, "--print-config"]) == 0
    from_flags = capsys.readouterr().out
    assert main(["train", "--config", str(config_file), "--print-config"]) == 0
    from_file = capsys.readouterr().out
    assert from_file == from_flags
    printed = yaml.safe_load(from_file)
    assert printed == {**config.TrainConfig().to_dict(), **values}
    again = tmp_path / "printed.yaml"
    again.write_text(from_file)
    assert main(["train", "--config", str(again), "--print-config"]) == 0
    assert capsys.readouterr().out == from_file
    assert not (tmp_path / "somewhere").exists()  # printing trains nothing


def test_print_config_shows_defaults_under_file_under_flags(tmp_path, capsys):
    import yaml

    config_file = tmp_path / "c.yaml"
    config_file.write_text("epochs: 4\nlr: 3.0e-4\n")
    assert main(["train", "--config", str(config_file), "--lr", "0.01", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["epochs"], printed["lr"], printed["batch_size"], printed["hidden"]) == (
        4,
        0.01,
        32,
        [512, 256, 128],
    )


def test_print_config_refuses_a_bad_value_in_one_line(tmp_path, capsys):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("summary-every: 0\n")
    assert main(["train", "--config", str(config_file), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradloop: error: summary_every must be") and err.count("\n") == 1
