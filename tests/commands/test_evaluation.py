"""gradloop.commands.evaluate: a saved run's model on its val, train and test splits, and on another folder.

One small run trains (a second or two) on gzipped IDX files this module writes from the real digits
of mnist-sample, on classes 7,1,3 (not sorted, so the run's order shows). The test split's expected
numbers are recomputed here from the images the test wrote: counts, confusion matrix, loss.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import keras
import numpy as np
import pytest

from gradloop import cli, data
from gradloop.commands.evaluate import SPLITS, evaluate_run, format_report

CLASSES = [7, 1, 3]


def write_idx(path: Path, array: np.ndarray) -> None:
    """A gzipped unsigned-byte IDX file: 0 0 8 ndim, the sizes as big-endian uint32, the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()))


def write_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    prefix = {"train": "train", "test": "t10k"}[split]
    folder.mkdir(exist_ok=True)
    write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)


def quiet(line: str) -> None:
    pass


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Folder A: 3,000 training and 1,000 test digits; folder B: 1,000 other digits, a test split only."""
    sample = data.load_mnist_sample()
    order = np.random.default_rng(0).permutation(len(sample.y_train))
    parts = {"train": order[:3000], "test": order[3000:4000], "other": order[4000:]}
    arrays = {name: (sample.x_train[i], sample.y_train[i]) for name, i in parts.items()}
    root = tmp_path_factory.mktemp("digits")
    write_split(root / "A", "train", *arrays["train"])
    write_split(root / "A", "test", *arrays["test"])
    write_split(root / "B", "test", *arrays["other"])
    return root, arrays


@pytest.fixture(scope="module")
def run(digits):
    root, _ = digits
    run_dir = root / "run"
    argv = [
        "train",
        "--data-dir",
        str(root / "A"),
        "--classes",
        ",".join(map(str, CLASSES)),
        "--hidden",
        "16",
        "--epochs",
        "2",
        "--seed",
        "1",
        "--run-dir",
        str(run_dir),
    ]
    assert cli.main(argv) == 0
    return run_dir


def expected(run_dir: Path, images: np.ndarray, labels: np.ndarray) -> dict:
    """What evaluating the run's model on these raw digits must give, computed here from scratch."""
    keep = np.isin(labels, CLASSES)
    y = np.array([CLASSES.index(label) for label in labels[keep]])
    x = images[keep].reshape(int(keep.sum()), 784).astype(np.float32) / 255
    logits = keras.models.load_model(run_dir / "model.keras", compile=False).predict(x, verbose=0)
    confusion = np.zeros((len(CLASSES), len(CLASSES)), dtype=int)
    for true, predicted in zip(y, logits.argmax(axis=1)):
        confusion[true, predicted] += 1
    loss = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits))
    return {"n_samples": int(keep.sum()), "confusion_matrix": confusion.tolist(), "loss": loss}


def run_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def history(run_dir: Path) -> dict:
    return json.loads((run_dir / "history.json").read_text())


def in_classes(labels: np.ndarray) -> int:
    return int(np.isin(labels, CLASSES).sum())


def test_splits_are_test_val_train():
    assert SPLITS == ("test", "val", "train")


def test_val_split_reproduces_the_runs_last_validation(run, digits):
    result = evaluate_run(run, split="val", notify=quiet)
    n_val = round(in_classes(digits[1]["train"][1]) / 6)  # the default 1/6 of the training digits of 7, 1, 3
    assert result["n_samples"] == run_json(run)["n_val"] == n_val
    assert result["accuracy"] == pytest.approx(history(run)["val_accuracy"][-1], abs=1e-6)
    assert result["loss"] == pytest.approx(history(run)["val_loss"][-1], abs=1e-5)


def test_the_confusion_matrix_counts_every_sample_in_the_runs_class_order(run):
    result = evaluate_run(run, split="val", notify=quiet)
    matrix = np.array(result["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == result["n_samples"]
    assert np.trace(matrix) / matrix.sum() == pytest.approx(result["accuracy"], abs=1e-12)
    assert result["classes"] == CLASSES and list(result["per_class_accuracy"]) == ["7", "1", "3"]
    for i, c in enumerate(CLASSES):
        assert result["per_class_accuracy"][str(c)] == pytest.approx(matrix[i, i] / matrix[i].sum(), abs=1e-12)


def test_test_split_uses_exactly_the_test_digits_of_the_runs_classes(run, digits):
    root, arrays = digits
    result = evaluate_run(run, split="test", notify=quiet)
    want = expected(run, *arrays["test"])
    assert result["n_samples"] == want["n_samples"] == in_classes(arrays["test"][1])
    assert result["confusion_matrix"] == want["confusion_matrix"]
    assert result["accuracy"] == np.trace(want["confusion_matrix"]) / want["n_samples"]
    assert result["loss"] == pytest.approx(want["loss"], abs=1e-6)
    assert (result["split"], result["source"]) == ("test", f"{root / 'A'} (IDX)")


def test_train_split_is_the_runs_training_samples(run, digits):
    result = evaluate_run(run, split="train", notify=quiet)
    info = run_json(run)
    n_train = in_classes(digits[1]["train"][1]) - info["n_val"]
    assert result["n_samples"] == info["n_train"] == n_train
    assert np.array(result["confusion_matrix"]).sum() == n_train


def test_another_data_dir_with_the_same_classes_evaluates_its_own_digits(run, digits):
    root, arrays = digits
    result = evaluate_run(run, data_dir=str(root / "B"), split="test", notify=quiet)
    want = expected(run, *arrays["other"])
    assert result["n_samples"] == want["n_samples"] and result["confusion_matrix"] == want["confusion_matrix"]
    assert result["loss"] == pytest.approx(want["loss"], abs=1e-6)
    assert result["source"] == f"{root / 'B'} (IDX)" and result["classes"] == CLASSES


def test_json_output_of_the_cli_is_the_same_result(run, capsys):
    assert cli.main(["evaluate", str(run), "--split", "val", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == evaluate_run(str(run), split="val", notify=quiet)


def test_the_text_output_of_the_cli_is_format_report(run, capsys):
    assert cli.main(["evaluate", str(run), "--split", "train"]) == 0
    assert capsys.readouterr().out == format_report(evaluate_run(str(run), split="train", notify=quiet)) + "\n"


def test_format_report_prints_the_numbers_it_is_given():
    result = {
        "run_dir": "r",
        "split": "test",
        "source": "somewhere (IDX)",
        "n_samples": 1234,
        "classes": [7, 1],
        "loss": 0.123456,
        "accuracy": 0.875,
        "per_class_accuracy": {"7": 0.75, "1": None},
        "confusion_matrix": [[1000, 234], [0, 0]],
    }
    assert format_report(result).splitlines() == [
        "test split of somewhere (IDX): 1,234 samples",
        "loss 0.1235  accuracy 0.8750",
        "per-class accuracy: 7: 0.7500  1: n/a",
        "confusion matrix (rows true, columns predicted):",
        "             7      1",
        "      7   1000    234",
        "      1      0      0",
    ]
