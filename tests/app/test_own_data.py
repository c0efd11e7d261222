"""Your own model and data (issue 15), each source end to end from the CLI.

The sources are made here, small and real: 360 PNG digits (0, 1, 2 of mnist-sample) in class folders with a
test/ folder; scikit-learn's iris (class names) and diabetes (a regression) written as CSV; sklearn's 8x8 digits
as an .npz, trained by a model file of the user's with model_args from a --config file; and a data function
returning sklearn's wine. For each source:

    it trains into a complete run directory
    its history equals Keras fit on the same split, initial weights and batch order (images, iris, diabetes)
    a SIGKILL mid-epoch and ``train --resume`` end bit-identical to an unstopped run (images, iris, npz + model)
    evaluate (its val split is the history's last epoch; other data of its kind), report and export work on it

and changed data is refused on resume and evaluate; a model file deleted after training does not matter.
The expected splits are computed here from the documented rules, not taken from gradloop: the examples in
their natural order (class folders sorted, files sorted; table rows; array rows), validation the last
round(n / 6) of ``numpy.random.default_rng(42).permutation(n)``, epoch e's batches in the order
``default_rng((42, e)).permutation(n_train)``.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from test_resume import latest_number

from gradloop import data as gradloop_data
from gradloop.app import models
from gradloop.cli import main

sklearn_datasets = pytest.importorskip("sklearn.datasets")

SEED = 42  # gradloop's default --seed; the default --val-fraction is 1/6
SLOW = pytest.mark.slow
DIGITS = {"zero": 0, "one": 1, "two": 2}  # class folder -> digit; the classes are the sorted names
CLASS_FOLDERS = tuple(sorted(DIGITS))  # ("one", "two", "zero"): label 0 is the digit 1
TRAIN_PER_CLASS, TEST_PER_CLASS = 100, 20
IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]

MODEL_FILE = """
import keras


def build(input_shape, num_classes, width=32):
    return keras.Sequential([keras.Input(shape=input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(width, activation="relu"), keras.layers.Dense(num_classes)],
                            name="my_digits_net")
"""

DATA_FUNCTION_FILE = """
import numpy as np
from sklearn.datasets import load_wine


def _wine(seed):
    x, y = load_wine(return_X_y=True)
    x = ((x - x.mean(axis=0)) / x.std(axis=0)).astype("float32")
    order = np.random.default_rng(seed).permutation(len(y))
    return x, y, order[28:], order[:28]


def load(seed):
    x, y, train, test = _wine(seed)
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}


def held_out(seed):
    x, y, _, test = _wine(seed)
    return {"x": x[test], "y": y[test]}
"""


def split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the training and validation splits of ``n`` examples, in the run's order."""
    order = np.random.default_rng(SEED).permutation(n)
    n_val = round(n / 6)
    return order[: n - n_val], order[n - n_val :]


# ----------------------------------------------------------------------------------- the sources, written here


@dataclass
class Files:
    """The data and model files, and the arrays each split must hold (x as the model takes it, y as labels)."""

    root: Path
    images: Path
    images_val: Path  # the images of the validation split, copied: other data of the same kind
    image_bytes: int  # every PNG under images/, test/ included
    iris: Path
    iris_val: Path
    diabetes: Path
    diabetes_val: Path
    digits: Path
    digits_test: Path  # the test arrays of digits.npz as x and y: other data of the same kind
    model_file: Path
    model_config: Path
    data_function: Path
    arrays: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # source -> split -> (x, y); a table's "raw val" too


def write_csv(path: Path, header: list[str], rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def standardised(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    """A table's numeric features as a run gives them: float32, standardised by the training split's statistics."""
    x = x.astype(np.float32)
    mean, std = x[train].astype(np.float64).mean(axis=0), x[train].astype(np.float64).std(axis=0)
    return ((x - mean) / std).astype(np.float32)


def import_file(path: Path):
    spec = importlib.util.spec_from_file_location(f"own_data_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Files:
    """Every source's files, and the arrays its splits must hold, computed from the documented rules."""
    root = tmp_path_factory.mktemp("own_data")
    arrays: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}

    # Images: digits 0, 1, 2 as 28x28 grayscale PNGs, 100 per class to train on and 20 in test/.
    sample = gradloop_data.load_mnist_sample()
    images = root / "images"
    written: dict[str, list[tuple[str, np.ndarray, int]]] = {"train": [], "test": []}
    for label, name in enumerate(CLASS_FOLDERS):
        rows = np.flatnonzero(sample.y_train == DIGITS[name])
        test_rows = rows[TRAIN_PER_CLASS : TRAIN_PER_CLASS + TEST_PER_CLASS]
        for part, folder, chosen in (
            ("train", images / name, rows[:TRAIN_PER_CLASS]),
            ("test", images / "test" / name, test_rows),
        ):
            folder.mkdir(parents=True)
            for i, row in enumerate(chosen):
                Image.fromarray(sample.x_train[row]).save(folder / f"{i:04d}.png")
                written[part].append((f"{name}/{i:04d}.png", sample.x_train[row], label))
    pixels = {
        part: (
            np.stack([p for _, p, _ in w])[..., None].astype(np.float32) / np.float32(255),
            np.array([label for _, _, label in w]),
        )
        for part, w in written.items()
    }
    train, val = split(len(written["train"]))
    images_val = root / "images_val"
    for row in val:
        relative = written["train"][row][0]
        (images_val / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(images / relative, images_val / relative)
    x, y = pixels["train"]
    arrays["images"] = {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": pixels["test"]}

    # Iris: four measurements and the species by name.
    iris = sklearn_datasets.load_iris()
    species = [str(iris.target_names[t]) for t in iris.target]
    rows = [[*map(float, features), s] for features, s in zip(iris.data, species)]
    train, val = split(len(rows))
    write_csv(root / "iris.csv", IRIS_COLUMNS + ["species"], rows)
    write_csv(root / "iris_val.csv", IRIS_COLUMNS + ["species"], [rows[i] for i in val])
    x = standardised(iris.data, train)
    arrays["csv"] = {
        "train": (x[train], iris.target[train]),
        "val": (x[val], iris.target[val]),
        "raw val": (iris.data[val].astype(np.float32), iris.target[val]),
    }

    # Diabetes: ten features and a decimal target ("151.0"), so a regression.
    diabetes = sklearn_datasets.load_diabetes()
    rows = [[*map(float, features), float(t)] for features, t in zip(diabetes.data, diabetes.target)]
    train, val = split(len(rows))
    write_csv(root / "diabetes.csv", [*diabetes.feature_names, "progression"], rows)
    write_csv(root / "diabetes_val.csv", [*diabetes.feature_names, "progression"], [rows[i] for i in val])
    x, y = standardised(diabetes.data, train), diabetes.target.astype(np.float32)
    arrays["regression"] = {
        "train": (x[train], y[train]),
        "val": (x[val], y[val]),
        "raw val": (diabetes.data[val].astype(np.float32), y[val]),
    }

    # Digits 8x8 (scaled to [0, 1] here) as an .npz with a test split, and its test split alone as x, y.
    digits = sklearn_datasets.load_digits()
    x, y = (digits.images / 16).astype(np.float32), digits.target.astype(np.int64)
    np.savez(root / "digits.npz", x_train=x[:1500], y_train=y[:1500], x_test=x[1500:], y_test=y[1500:])
    np.savez(root / "digits_test.npz", x=x[1500:], y=y[1500:])
    train, val = split(1500)
    arrays["model"] = {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (x[1500:], y[1500:])}

    (root / "user").mkdir()
    model_file = root / "user" / "model.py"
    model_file.write_text(MODEL_FILE)
    model_config = root / "model.yaml"
    model_config.write_text("model_args:\n  width: 24\n")
    data_function = root / "data_fn.py"
    data_function.write_text(DATA_FUNCTION_FILE)
    loaded = import_file(data_function).load(SEED)
    train, val = split(len(loaded["y_train"]))
    x, y = loaded["x_train"], loaded["y_train"]
    arrays["function"] = {
        "train": (x[train], y[train]),
        "val": (x[val], y[val]),
        "test": (loaded["x_test"], loaded["y_test"]),
    }

    return Files(
        root=root,
        images=images,
        images_val=images_val,
        image_bytes=sum(p.stat().st_size for p in images.rglob("*.png")),
        iris=root / "iris.csv",
        iris_val=root / "iris_val.csv",
        diabetes=root / "diabetes.csv",
        diabetes_val=root / "diabetes_val.csv",
        digits=root / "digits.npz",
        digits_test=root / "digits_test.npz",
        model_file=model_file,
        model_config=model_config,
        data_function=data_function,
        arrays=arrays,
    )


# ----------------------------------------------------------------------------------- the runs


# Each source trained twice: here, never stopped, and in a process SIGKILLed mid-epoch 1 and resumed in another;
# with a checkpoint every few steps, so that one exists mid-epoch. images: 250 train / 50 val, 16 steps an epoch;
# csv: 125 / 25, 8 steps; model: 1,250 / 250, 40 steps.
def process_flags(files: Files) -> dict[str, list[str]]:
    return {
        "images": [
            "--data",
            str(files.images),
            "--hidden",
            "32",
            "--epochs",
            "3",
            "--batch-size",
            "16",
            "--lr",
            "0.001",
            "--deterministic",
            "--checkpoint-every",
            "5",
        ],
        "csv": [
            "--data",
            str(files.iris),
            "--target",
            "species",
            "--hidden",
            "16",
            "--epochs",
            "20",
            "--batch-size",
            "16",
            "--lr",
            "0.01",
            "--deterministic",
            "--checkpoint-every",
            "2",
        ],
        "model": [
            "--data",
            str(files.digits),
            "--model",
            f"{files.model_file}:build",
            "--config",
            str(files.model_config),
            "--epochs",
            "3",
            "--batch-size",
            "32",
            "--lr",
            "0.01",
            "--deterministic",
            "--checkpoint-every",
            "10",
        ],
    }


STEPS_PER_EPOCH = {"images": 16, "csv": 8, "model": 40}
# Checkpoint 1 is saved before training, 2 after the first --checkpoint-every steps (epoch 1 step 5, 2 or 10). A
# kill as soon as it is the latest lands there, or a save or two later: each run has two more saves mid-epoch 1.
KILL_AFTER = 2


def start(*argv: str, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:  # a file, not a pipe, which a chatty process could fill
        return subprocess.Popen([sys.executable, "-m", "gradloop", *argv], stdout=out, stderr=subprocess.STDOUT)


def kill_each_after_checkpoint(runs: dict[str, tuple[subprocess.Popen, Path]], number: int) -> None:
    """SIGKILL each process as soon as checkpoint ``number`` of its run is the latest."""
    waiting, deadline = dict(runs), time.monotonic() + 600
    while waiting and time.monotonic() < deadline:
        for name, (proc, run_dir) in list(waiting.items()):
            if latest_number(run_dir) >= number or proc.poll() is not None:
                proc.send_signal(signal.SIGKILL)  # a process that already ended is not signalled
                del waiting[name]
        time.sleep(0.002)


@dataclass
class Processes:
    root: Path
    first: dict[str, int]  # exit status of each first process: "images killed", ..., "csv mirrored"
    before: dict[str, dict]  # run.json of each killed run, as the kill left it
    resumed: dict[str, tuple[int, str]]  # exit status and output of each resume
    model_file_bytes: bytes  # the model file, deleted before the resumes
    cached: dict[str, list[str]]  # the files in each killed image run's cache/ folder, as the kill left it

    def run(self, name: str) -> Path:
        return self.root / name.replace(" ", "_")

    def log(self, name: str) -> str:
        return (self.root / f"{name.replace(' ', '_')}.log").read_text()


@pytest.fixture(scope="module")
def processes(files, tmp_path_factory) -> Processes:
    """Four processes at once, one per killed run and the CSV run on two mirrored CPU replicas; once the three are
    killed, the unstopped runs train here; then, with the model file deleted, the killed runs resume, three at once."""
    root = tmp_path_factory.mktemp("processes")
    flags = process_flags(files)
    mirrored = [*flags["csv"][:-2], "--strategy", "mirrored", "--replicas", "2"]  # no mid-epoch checkpoints
    # "images off": killed with its images decoded into cache/, resumed with --image-cache off (from the files)
    argv = {
        **{f"{name} killed": f for name, f in flags.items()},
        "images off killed": flags["images"],
        "csv mirrored": mirrored,
    }
    procs = {
        name: start(
            "train", *a, "--run-dir", str(root / name.replace(" ", "_")), log=root / f"{name.replace(' ', '_')}.log"
        )
        for name, a in argv.items()
    }
    try:
        # Not in a thread beside the runs here: their tracing holds the GIL long enough for a kill to miss epoch 1.
        killed = {
            name: (procs[f"{name} killed"], root / f"{name.replace(' ', '_')}_killed")
            for name in [*flags, "images off"]
        }
        kill_each_after_checkpoint(killed, KILL_AFTER)
        for name, f in flags.items():
            train_here(*f, "--run-dir", str(root / name))
        first = {name: proc.wait(timeout=900) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:  # this fixture failed: leave no process behind
                proc.kill()
    before = {name: json.loads((root / f"{name}_killed" / "run.json").read_text()) for name in flags}
    cached = {
        name: sorted(p.name for p in (root / f"{name}_killed" / "cache").iterdir()) for name in ("images", "images_off")
    }
    model_file_bytes = files.model_file.read_bytes()
    files.model_file.unlink()  # the resume must build the model from the run's own copy
    again = {
        name: start("train", "--resume", "--run-dir", str(root / f"{name}_killed"), log=root / f"{name}_resumed.log")
        for name in flags
    }
    again["images off"] = start(
        "train",
        "--resume",
        "--run-dir",
        str(root / "images_off_killed"),
        "--image-cache",
        "off",
        log=root / "images off_resumed.log",
    )
    try:
        resumed = {
            name: (proc.wait(timeout=900), (root / f"{name}_resumed.log").read_text()) for name, proc in again.items()
        }
    finally:
        for proc in again.values():
            if proc.poll() is None:
                proc.kill()
    return Processes(root, first, before, resumed, model_file_bytes, cached)


def train_here(*argv: str) -> None:
    assert main(["train", *argv]) == 0


@pytest.fixture(scope="module")
def regression_run(files, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("regression") / "run"
    train_here(
        "--data",
        str(files.diabetes),
        "--target",
        "progression",
        "--hidden",
        "32",
        "--epochs",
        "30",
        "--batch-size",
        "32",
        "--lr",
        "0.05",
        "--deterministic",
        "--run-dir",
        str(run),
    )
    return run


@pytest.fixture(scope="module")
def function_run(files, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("function") / "run"
    train_here(
        "--data",
        f"{files.data_function}:load",
        "--hidden",
        "16",
        "--epochs",
        "5",
        "--batch-size",
        "16",
        "--lr",
        "0.01",
        "--deterministic",
        "--run-dir",
        str(run),
    )
    return run


@dataclass
class Expected:
    """What a source's finished run must record, and the other data of its kind that copies one of its splits."""

    data_kind: str
    n_train: int
    n_val: int
    classes: list[str] | None
    parameters: int
    other: str
    other_copies: str  # the split of the run's data that ``other`` holds


def expected(files: Files) -> dict[str, Expected]:
    return {
        "images": Expected(
            "images", 250, 50, list(CLASS_FOLDERS), 784 * 32 + 32 + 32 * 3 + 3, str(files.images_val), "val"
        ),
        "csv": Expected(
            "csv", 125, 25, ["setosa", "versicolor", "virginica"], 4 * 16 + 16 + 16 * 3 + 3, str(files.iris_val), "val"
        ),
        "regression": Expected("csv", 368, 74, None, 10 * 32 + 32 + 32 + 1, str(files.diabetes_val), "val"),
        "model": Expected(
            "arrays",
            1250,
            250,
            [str(d) for d in range(10)],
            64 * 24 + 24 + 24 * 10 + 10,
            str(files.digits_test),
            "test",
        ),
        "function": Expected(
            "function", 125, 25, ["0", "1", "2"], 13 * 16 + 16 + 16 * 3 + 3, f"{files.data_function}:held_out", "test"
        ),
    }


SOURCES = [
    pytest.param("images", marks=SLOW),
    pytest.param("csv", marks=SLOW),
    "regression",
    pytest.param("model", marks=SLOW),
    "function",
]


@pytest.fixture
def finished(request, files) -> Path:
    """The finished run of the source a test is parametrized with (never stopped)."""
    source = request.node.callspec.params["source"]
    if source == "regression":
        return request.getfixturevalue("regression_run")
    if source == "function":
        return request.getfixturevalue("function_run")
    return request.getfixturevalue("processes").run(source)


def history(run: Path) -> dict[str, list[float]]:
    return json.loads((run / "history.json").read_text())


def weights(path: Path) -> list[np.ndarray]:
    return keras.models.load_model(path, compile=False).get_weights()


# ----------------------------------------------------------------------------------- 1. it trains


@pytest.mark.parametrize("source", SOURCES)
def test_each_source_trains_into_a_complete_run_directory(source, finished, files):
    want = expected(files)[source]
    assert {"run.json", "history.json", "model.keras", "model.best.keras"} <= {p.name for p in finished.iterdir()}
    info = json.loads((finished / "run.json").read_text())
    epochs = info["config"]["epochs"]
    assert info["status"] == "finished" and info["epochs_done"] == epochs
    assert (info["data"]["kind"], info["n_train"], info["n_val"], info["classes"], info["parameters"]) == (
        want.data_kind,
        want.n_train,
        want.n_val,
        want.classes,
        want.parameters,
    )
    assert info["task"] == ("regression" if source == "regression" else "classification")
    assert all(len(values) == epochs for values in history(finished).values())
    model = keras.models.load_model(finished / "model.keras", compile=False)
    assert model.count_params() == want.parameters
    assert model.output_shape == (None, len(want.classes) if want.classes else 1)


@SLOW
def test_the_model_file_is_copied_into_the_run_and_model_args_reach_it(processes, files):
    info = json.loads((processes.run("model") / "run.json").read_text())
    assert info["model_source"] == "model_source.py:build" and info["model"] == "my_digits_net"
    assert info["config"]["model_args"] == {"width": 24}
    assert (processes.run("model") / "model_source.py").read_bytes() == processes.model_file_bytes


# ----------------------------------------------------------------------------------- 2. as Keras fit does

# gradloop's CLI updates Adam's variables with TensorFlow's fused kernel, Keras with its own formula: the same
# arithmetic in another order, so each step differs by float32 rounding, and the differences grow with the steps
# (measured here: at most 8e-6 relative in any epoch's loss, val_loss or val_mae). 1e-4 relative leaves room for
# other machines' kernels, while another batch order moves the numbers by 1e-3 to 6e-2 (the test's control), and
# other initial weights or a batch left out by more. An accuracy may differ by one example: a prediction within
# rounding of a tie between two classes (measured: none does).
TOLERANCE = 1e-4


def fit_with_keras(source: str, files: Files, run: Path, *, order_seed: int | None = None) -> dict[str, list[float]]:
    """The run's model built as gradloop builds it (seed set, then the builder), fit by Keras epoch by epoch on the
    same training arrays in gradloop's order for that epoch (or another seed's), with the same batch size,
    optimizer and loss."""
    config = json.loads((run / "run.json").read_text())["config"]
    (x, y), val = files.arrays[source]["train"], files.arrays[source]["val"]
    keras.utils.set_random_seed(config["seed"])
    n_outputs = 1 if source == "regression" else int(y.max()) + 1
    model = models.build_mlp(x.shape[1:], config["hidden"], n_outputs)
    if source == "regression":
        loss, metric = keras.losses.MeanSquaredError(), "mae"
    else:
        loss, metric = keras.losses.SparseCategoricalCrossentropy(from_logits=True), "accuracy"
    model.compile(optimizer=keras.optimizers.Adam(config["lr"]), loss=loss, metrics=[metric])
    fitted: dict[str, list[float]] = {}
    for epoch in range(config["epochs"]):
        order = np.random.default_rng((config["seed"] if order_seed is None else order_seed, epoch)).permutation(len(x))
        logs = model.fit(
            x[order], y[order], batch_size=config["batch_size"], epochs=1, shuffle=False, validation_data=val, verbose=0
        ).history
        for key, values in logs.items():
            fitted.setdefault(key, []).extend(values)
    return fitted


@pytest.mark.parametrize("source", [pytest.param("images", marks=SLOW), pytest.param("csv", marks=SLOW), "regression"])
def test_the_history_equals_keras_fit_on_the_same_split_weights_and_order(source, finished, files):
    ours, theirs = history(finished), fit_with_keras(source, files, finished)
    metric = "mae" if source == "regression" else "accuracy"
    assert ours["train_loss"] == pytest.approx(theirs["loss"], rel=TOLERANCE)
    assert ours["val_loss"] == pytest.approx(theirs["val_loss"], rel=TOLERANCE)
    if source == "regression":
        assert ours["val_mae"] == pytest.approx(theirs["val_mae"], rel=TOLERANCE)
    else:
        n_val = len(files.arrays[source]["val"][1])
        assert np.abs(np.array(ours["val_accuracy"]) - theirs["val_accuracy"]).max() <= 1 / n_val + 1e-6
    final = {"images": 0.98, "csv": 0.92, "regression": 47.56}[source]  # the numbers themselves, to 2 decimals
    assert ours[f"val_{metric}"][-1] == pytest.approx(final, abs=0.01)
    control = fit_with_keras(source, files, finished, order_seed=SEED + 1)  # the tolerance tells orders apart
    assert np.max(np.abs(np.array(ours["val_loss"]) / control["val_loss"] - 1)) > 10 * TOLERANCE


# ----------------------------------------------------------------------------------- 3. killed, resumed, identical

KILLED = [pytest.param(name, marks=SLOW) for name in ("images", "csv", "model")]


@pytest.mark.parametrize("source", KILLED)
def test_the_killed_processes_died_leaving_their_runs_running(processes, source):
    assert processes.first[f"{source} killed"] == -signal.SIGKILL, processes.log(f"{source} killed")
    assert processes.before[source]["status"] == "running"  # killed: it could not say more


@pytest.mark.parametrize("source", KILLED)
def test_the_kill_landed_mid_epoch(processes, source):
    code, out = processes.resumed[source]
    assert code == 0, out
    (where,) = json.loads((processes.run(f"{source} killed") / "run.json").read_text())["resumed"]
    assert where["epoch"] == 1 and 0 < where["step"] < STEPS_PER_EPOCH[source], where
    model = "my_digits_net" if source == "model" else "mlp"
    assert out.startswith(f"gradloop: resuming {model} at epoch 1 step {where['step']} ")


@pytest.mark.parametrize("source", KILLED)
def test_a_run_killed_mid_epoch_and_resumed_ends_bit_identical_to_an_unstopped_one(processes, source):
    unstopped, resumed = processes.run(source), processes.run(f"{source} killed")
    for model_file in ("model.keras", "model.best.keras"):
        expected, got = weights(unstopped / model_file), weights(resumed / model_file)
        assert len(got) == len(expected) == 4 and all(np.array_equal(a, b) for a, b in zip(expected, got)), model_file
    expected, got = history(unstopped), history(resumed)
    assert set(got) == set(expected)
    for key in set(expected) - {"train_time"}:  # train_time is the clock, which no resume can repeat
        assert got[key] == expected[key], key
    info = json.loads((resumed / "run.json").read_text())
    assert info["status"] == "finished" and info["epochs_done"] == info["config"]["epochs"]


@SLOW
def test_an_image_run_reads_its_decoded_copy_until_it_finishes_and_resumes_exactly_from_the_files(processes):
    for name in ("images", "images_off"):  # killed mid-epoch 1: each split decoded once, into a file of its own
        assert [re.sub("-[0-9a-f]{16}", "-KEY", f) for f in processes.cached[name]] == ["train-KEY.npy", "val-KEY.npy"]
    assert processes.resumed["images off"][0] == 0, processes.resumed["images off"][1]
    unstopped, resumed = processes.run("images"), processes.run("images off killed")
    for run in (unstopped, resumed, processes.run("images killed")):
        assert not (run / "cache").exists()  # gone when the run finished
    for model_file in ("model.keras", "model.best.keras"):  # the copy's pixels before the kill, the files' after it
        expected, got = weights(unstopped / model_file), weights(resumed / model_file)
        assert len(got) == len(expected) > 0 and all(np.array_equal(a, b) for a, b in zip(expected, got)), model_file
    expected, got = history(unstopped), history(resumed)
    assert all(got[key] == expected[key] for key in set(expected) - {"train_time"})
    assert json.loads((resumed / "run.json").read_text())["config"]["image_cache"] == "off"  # the resume's own


# ----------------------------------------------------------------------------------- 4. evaluate, report, export


def evaluated(capsys, run: Path, *flags: str) -> dict:
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json", *flags, *trusted(run)]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def trusted(run: Path) -> list[str]:
    """--trust-code for a run of a data function, whose own data evaluate and report read by running it."""
    return ["--trust-code"] if json.loads((run / "run.json").read_text())["data"]["kind"] == "function" else []


def predictions(run: Path, x: np.ndarray) -> np.ndarray:
    return keras.models.load_model(run / "model.keras", compile=False).predict(x, batch_size=256, verbose=0)


@pytest.mark.parametrize("source", SOURCES)
def test_evaluate_val_is_the_last_epoch_of_the_history_and_the_models_predictions(source, finished, files, capsys):
    result = evaluated(capsys, finished, "--split", "val")
    last = {key: values[-1] for key, values in history(finished).items()}
    x, y = files.arrays[source]["val"]
    assert (result["split"], result["n_samples"]) == ("val", len(y))
    assert result["loss"] == pytest.approx(last["val_loss"], rel=1e-5)
    if source == "regression":
        assert result["mae"] == pytest.approx(last["val_mae"], rel=1e-5)
        return
    assert result["accuracy"] == pytest.approx(last["val_accuracy"], abs=1e-5)
    predicted = predictions(finished, x).argmax(axis=1)
    assert result["accuracy"] == np.mean(predicted == y)
    k = len(result["classes"])
    assert result["confusion_matrix"] == [
        [int(np.sum((y == t) & (predicted == p))) for p in range(k)] for t in range(k)
    ]


@pytest.mark.parametrize(
    ("source", "split"),
    [
        pytest.param("images", "test", marks=SLOW),
        pytest.param("model", "test", marks=SLOW),
        ("function", "test"),
        pytest.param("images", "train", marks=SLOW),
        ("function", "train"),
    ],
)
def test_evaluate_test_and_train_are_the_models_predictions_on_those_splits(source, split, finished, files, capsys):
    result = evaluated(capsys, finished, "--split", split)
    x, y = files.arrays[source][split]
    assert (result["split"], result["n_samples"]) == (split, len(y))
    assert result["accuracy"] == np.mean(predictions(finished, x).argmax(axis=1) == y)


@pytest.mark.parametrize("source", SOURCES)
def test_evaluate_on_other_data_of_the_same_kind_scores_it_as_the_split_it_copies(source, finished, files, capsys):
    want = expected(files)[source]
    own = evaluated(capsys, finished, "--split", want.other_copies)
    other = evaluated(capsys, finished, "--data", want.other)
    assert (other["split"], other["n_samples"]) == ("all", own["n_samples"])
    scores = ("mae", "rmse", "r2") if source == "regression" else ("accuracy",)
    for key in ("loss", *scores):
        assert other[key] == pytest.approx(own[key], rel=1e-5), key
    if source != "regression":
        assert other["confusion_matrix"] == own["confusion_matrix"] and other["classes"] == want.classes


def test_evaluate_prints_a_regressions_mae_rmse_and_r2(regression_run, files, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(regression_run), "--split", "val"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        out[0] == f"val split of {files.diabetes} (CSV: 442 rows, 10 feature columns, target progression): 74 samples"
    )
    numbers = re.fullmatch(r"loss (\S+)  mae (\S+)  rmse (\S+)  r2 (\S+)", out[1])
    x, y = files.arrays["regression"]["val"]
    error = predictions(regression_run, x)[:, 0].astype(np.float64) - y
    r2 = 1 - np.sum(error**2) / np.sum((y - y.mean()) ** 2)
    mine = [np.mean(error**2), np.mean(np.abs(error)), np.sqrt(np.mean(error**2)), r2]
    assert [float(v) for v in numbers.groups()] == pytest.approx(mine, abs=1e-4, rel=1e-5)
    assert len(out) == 2


@pytest.mark.parametrize("source", SOURCES)
def test_report_writes_a_page_with_the_val_splits_scores(source, finished, tmp_path, capsys):
    result = evaluated(capsys, finished, "--split", "val")
    assert main(["report", str(finished), "--out", str(tmp_path), *trusted(finished)]) == 0
    assert capsys.readouterr().out == f"gradloop: wrote {tmp_path / 'report.html'}\n"
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    if source == "regression":
        assert f"MAE {result['mae']:.4f}, RMSE {result['rmse']:.4f}, R^2 {result['r2']:.4f}" in page
    else:
        assert f"accuracy {result['accuracy']:.4f}</p>" in page


@pytest.mark.parametrize("source", SOURCES)
def test_export_serves_the_outputs_of_model_keras_taking_a_tables_raw_features(source, finished, files, tmp_path):
    assert main(["export", str(finished), "--out", str(tmp_path / "served")]) == 0
    x = files.arrays[source]["val"][0][:5]
    given = files.arrays[source]["raw val" if source in ("csv", "regression") else "val"][0][:5]  # standardised inside
    served = tf.saved_model.load(str(tmp_path / "served"))  # kept: its function needs the object's variables
    np.testing.assert_allclose(served.serve(tf.constant(given)).numpy(), predictions(finished, x), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------- 5. changed data is refused


def refused(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gradloop: error: "), err
    return err.strip().removeprefix("gradloop: error: ")


def test_an_image_added_to_a_class_folder_is_refused_on_resume_and_evaluate(files, tmp_path, capsys):
    images, run = tmp_path / "images", tmp_path / "run"
    shutil.copytree(files.images, images)
    train_here("--data", str(images), "--hidden", "8", "--epochs", "1", "--batch-size", "32", "--run-dir", str(run))
    snapshot = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    added = images / "two" / "extra.png"
    shutil.copyfile(images / "two" / "0000.png", added)
    n, size = 3 * (TRAIN_PER_CLASS + TEST_PER_CLASS), files.image_bytes
    change = f"{n} files, {size:,} bytes then; {n + 1} files, {size + added.stat().st_size:,} bytes now"
    assert refused(capsys, "train", "--resume", "--run-dir", str(run), "--epochs", "2") == (
        f"the data in {images} changed since run {run} started ({change}); "
        "a resume needs the same data: put it back, or start a new run"
    )
    assert refused(capsys, "evaluate", str(run)) == (
        f"the data in {images} changed since run {run} trained on it ({change}); put it back, or pass --data PATH"
    )
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == snapshot


def test_a_csv_cell_edited_is_refused_on_resume_and_evaluate(files, tmp_path, capsys):
    table, run = tmp_path / "iris.csv", tmp_path / "run"
    shutil.copyfile(files.iris, table)
    train_here("--data", str(table), "--target", "species", "--hidden", "8", "--epochs", "1", "--run-dir", str(run))
    snapshot = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    content = table.read_bytes()
    first_flower = b"species\r\n5.1,"  # the header's end and the first cell below it, as csv.writer wrote them
    assert content.count(first_flower) == 1
    table.write_bytes(content.replace(first_flower, b"species\r\n5.9,"))  # the same size, other content
    change = f"the same 1 file and {table.stat().st_size:,} bytes, other content"
    assert refused(capsys, "train", "--resume", "--run-dir", str(run), "--epochs", "2") == (
        f"the data in {table} changed since run {run} started ({change}); "
        "a resume needs the same data: put it back, or start a new run"
    )
    assert refused(capsys, "evaluate", str(run), "--split", "val") == (
        f"the data in {table} changed since run {run} trained on it ({change}); put it back, or pass --data PATH"
    )
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == snapshot


# ----------------------------------------------------------------------------------- 6. the model file deleted


@SLOW
def test_a_model_file_deleted_after_training_still_resumes_and_evaluates_from_the_runs_copy(processes, files, capsys):
    assert not files.model_file.exists()
    assert processes.resumed["model"][0] == 0  # built from model_source.py: the resume above
    run = processes.run("model killed")
    assert (run / "model_source.py").read_bytes() == processes.model_file_bytes
    result = evaluated(capsys, run, "--split", "val")
    assert result["accuracy"] == pytest.approx(history(run)["val_accuracy"][-1], abs=1e-6)


# ----------------------------------------------------------------------------------- strategies and --profile


@SLOW
def test_two_mirrored_cpu_replicas_train_the_csv_as_the_default_strategy_does(processes, files):
    assert processes.first["csv mirrored"] == 0, processes.log("csv mirrored")
    run = processes.run("csv mirrored")
    info = json.loads((run / "run.json").read_text())
    assert (info["strategy"], info["num_replicas"], info["status"]) == ("mirrored", 2, "finished")
    # Each replica's gradient is summed with the other's: the same sums in another order, float32 rounding apart.
    ours, default = history(run), history(processes.run("csv"))
    assert ours["val_loss"] == pytest.approx(default["val_loss"], rel=TOLERANCE)
    assert np.abs(np.array(ours["val_accuracy"]) - default["val_accuracy"]).max() <= 1 / 25 + 1e-6


@SLOW
def test_two_launched_workers_train_the_csv_as_one_process_does(processes, files, tmp_path):
    run = tmp_path / "launched"
    flags = [*process_flags(files)["csv"][:-2], "--run-dir", str(run)]  # no mid-epoch checkpoints, as mirrored
    result = subprocess.run(
        [sys.executable, "-m", "gradloop", "launch", "--workers", "2", "--", "train", *flags],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    info = json.loads((run / "run.json").read_text())
    assert (info["strategy"], info["workers"], info["status"], info["data"]["kind"]) == (
        "multi_worker",
        2,
        "finished",
        "csv",
    )
    ours, default = history(run), history(processes.run("csv"))  # each worker keeps its half of every global batch
    assert ours["val_loss"] == pytest.approx(default["val_loss"], rel=TOLERANCE)
    assert np.abs(np.array(ours["val_accuracy"]) - default["val_accuracy"]).max() <= 1 / 25 + 1e-6


@SLOW
def test_profile_prints_its_phase_table_and_leaves_the_run_as_without(processes, files, tmp_path, capsys):
    flags = process_flags(files)["images"]
    capsys.readouterr()
    train_here(*flags, "--profile", "--run-dir", str(tmp_path / "run"))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("gradloop: training mlp (25,219 parameters) on ")
    assert re.fullmatch(r"phase\s+ms/step\s+share", out[1])
    rows = [re.fullmatch(r"(\S+)\s+(\d+\.\d{3})\s+(\d+\.\d)%", line) for line in out[2:7]]
    assert [row[1] for row in rows] == ["input", "forward+loss", "gradient", "update", "metrics"]
    assert sum(float(row[3]) for row in rows) == pytest.approx(100, abs=0.3)
    assert re.fullmatch(r"step\s+\d+\.\d{3}\s+100%   \([\d,]+ samples/s\)", out[7])
    assert out[8].startswith("epoch 1 step 5/16 ")  # then training, as without --profile
    expected, got = history(processes.run("images")), history(tmp_path / "run")
    assert all(got[key] == expected[key] for key in set(expected) - {"train_time"})
    expected, got = weights(processes.run("images") / "model.keras"), weights(tmp_path / "run" / "model.keras")
    assert len(got) == len(expected) == 4 and all(np.array_equal(a, b) for a, b in zip(expected, got))


# --------------------------------------------------------------------- what a run refuses, and finds again


def test_evaluate_on_data_of_another_kind_is_one_line(processes, files, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(processes.run("csv")), "--data", str(files.digits)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gradloop: error: run ") and "trained on csv data and --data" in err and "\n" not in err


def test_evaluate_on_a_few_rows_needs_no_batch_size(processes, files, tmp_path, capsys):
    few = tmp_path / "few.csv"
    few.write_text("".join(files.iris.read_text().splitlines(keepends=True)[:11]))  # the header and 10 flowers
    capsys.readouterr()
    assert main(["evaluate", str(processes.run("csv")), "--data", str(few), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_samples"] == 10


def test_a_run_given_relative_paths_is_found_from_another_folder(files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(files.iris.parent)
    run = tmp_path / "run"
    train_here(
        "--data", files.iris.name, "--target", "species", "--hidden", "8", "--epochs", "1", "--run-dir", str(run)
    )
    assert json.loads((run / "run.json").read_text())["config"]["data"] == str(files.iris)
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "run", "--split", "val"]) == 0
    assert main(["train", "--resume", "--run-dir", "run", "--epochs", "2"]) == 0


def test_a_model_from_a_package_resumes(files, tmp_path, monkeypatch):
    package = tmp_path / "site" / "own_data_models"  # a name no other test imports: sys.modules keeps it
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(MODEL_TEXT)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    run = tmp_path / "run"
    train_here("--data", str(files.digits), "--model", "own_data_models:build", "--epochs", "1", "--run-dir", str(run))
    assert json.loads((run / "run.json").read_text())["model_source"] == "own_data_models:build"
    assert main(["train", "--resume", "--run-dir", str(run), "--epochs", "2"]) == 0
    assert json.loads((run / "run.json").read_text())["epochs_done"] == 2
    sys.modules.pop("own_data_models", None)  # monkeypatch restores sys.path only


MODEL_TEXT = """import keras


def build(input_shape, num_classes):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(), keras.layers.Dense(num_classes)])
"""
