"""``gradloop predict`` (issue 16) end to end from the CLI, on runs of each kind of data.

The runs train here on small real data: Fashion-MNIST PNGs in class folders (MNIST digits where Debian's
Fashion-MNIST is not installed), iris as a CSV with a text column and gaps (--fill mean), diabetes (a
regression), iris again through a model of the user's that ends in a softmax, and mnist-sample (a built-in
data set). For each, the CSV that predict writes must hold, row for row:

    the ids: the files' paths in the folder (sorted), or the rows as a spreadsheet numbers them
    the run's class names, the predicted class the one of the largest output
    probabilities = softmax(keras.models.load_model(RUN/model.keras).predict(x)), summing to 1
        (the model's own outputs when it ends in a softmax); a regression's values = predict(x)

where x is made here from the documented rules and the statistics run.json saved: pixels / 255 at the
run's size and colour mode; a table's numeric columns in the run's order, gaps filled with its means,
its categories one-hot, standardised with its mean and std.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import struct
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from gradloop import data as gradloop_data
from gradloop.cli import main

sklearn_datasets = pytest.importorskip("sklearn.datasets")

CLASSES = {"Bag": 8, "Sneaker": 7, "Trouser": 1}  # class folder -> Fashion-MNIST label (MNIST: the same digits)
IRIS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
GARDENS = ["north", "south", "east"]


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def predicted(capsys, *argv: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows predict writes to standard output."""
    capsys.readouterr()
    assert main(["predict", *argv]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    return rows[0], rows[1:]


def run_info(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def keras_outputs(run: Path, x: np.ndarray) -> np.ndarray:
    return keras.models.load_model(run / "model.keras").predict(x, verbose=0)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def check_classes(
    run: Path,
    header: list[str],
    rows: list[list[str]],
    *,
    id_name: str,
    ids: list[str],
    x: np.ndarray,
    from_logits: bool = True,
) -> np.ndarray:
    """The rows are the run's model's predictions on ``x``; returns the probabilities read back."""
    classes = [str(c) for c in run_info(run)["classes"]]
    assert header == [id_name, "predicted", *(f"p_{c}" for c in classes)]
    assert [row[0] for row in rows] == ids
    outputs = keras_outputs(run, x)
    probabilities = np.array([[float(np.float32(v)) for v in row[2:]] for row in rows])
    np.testing.assert_allclose(probabilities, softmax(outputs) if from_logits else outputs, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert [row[1] for row in rows] == [classes[i] for i in outputs.argmax(axis=1)]
    return probabilities


# ----------------------------------------------------------------------------------- an image folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict:
    """A run on 3 classes of 28x28 grayscale PNGs, 30 each, and 10 new images to predict on: 6 in the
    folder, 4 two folders deep, with a text file and a hidden image beside them (not images to predict)."""
    root = tmp_path_factory.mktemp("images")
    if gradloop_data.DEBIAN_FASHION_MNIST.is_dir():
        raw = gradloop_data.load_idx_dir(gradloop_data.DEBIAN_FASHION_MNIST)
    else:
        raw = gradloop_data.load_mnist_sample()
    for name, label in CLASSES.items():
        (root / "train" / name).mkdir(parents=True)
        for i, row in enumerate(np.flatnonzero(raw.y_train == label)[:30]):
            Image.fromarray(raw.x_train[row]).save(root / "train" / name / f"{i:03d}.png")
    new_rows = np.flatnonzero(np.isin(raw.y_train, list(CLASSES.values())))[-10:]  # not among the training images
    names = [f"a{i}.png" for i in range(6)] + [f"deeper/still/b{i}.png" for i in range(4)]
    new = root / "new"
    (new / "deeper" / "still").mkdir(parents=True)
    for name, row in zip(names, new_rows):
        Image.fromarray(raw.x_train[row]).save(new / name)
    (new / "notes.txt").write_text("not an image")
    Image.fromarray(raw.x_train[new_rows[0]]).save(new / ".hidden.png")
    run = root / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(root / "train"),
                "--hidden",
                "16",
                "--epochs",
                "2",
                "--batch-size",
                "16",
                "--lr",
                "0.001",
                "--run-dir",
                str(run),
            ]
        )
        == 0
    )
    pixels = raw.x_train[new_rows][..., None].astype(np.float32) / np.float32(255)
    return {"run": run, "new": new, "names": names, "x": pixels, "raw": raw.x_train[new_rows]}


def test_a_folder_of_images_at_any_depth_gets_the_runs_classes_and_probabilities(images, capsys):
    header, rows = predicted(capsys, str(images["run"]), str(images["new"]))
    assert run_info(images["run"])["classes"] == sorted(CLASSES)
    check_classes(
        images["run"],
        header,
        rows,
        id_name="file",
        ids=sorted(images["names"]),
        x=images["x"][np.argsort(images["names"])],
    )


def test_image_files_are_predicted_in_the_order_given_with_their_paths_as_ids(images, capsys):
    files = [str(images["new"] / images["names"][i]) for i in (7, 0, 3)]
    header, rows = predicted(capsys, str(images["run"]), *files)
    check_classes(images["run"], header, rows, id_name="file", ids=files, x=images["x"][[7, 0, 3]])


def test_a_colour_image_of_another_size_is_read_at_the_runs_size_and_colour_mode(images, tmp_path, capsys):
    """The run read 28x28 grayscale: an RGB image of the same gray pixels, at 56x56, gives (nearly) the
    prediction of the original (luminance weights sum to 0.9999; a bilinear resize back is not exact)."""
    gray = images["raw"][0]
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(tmp_path / "rgb.png")
    Image.fromarray(np.stack([gray] * 3, axis=-1)).resize((56, 56), Image.NEAREST).save(tmp_path / "big.png")
    _, rows = predicted(capsys, str(images["run"]), str(tmp_path / "rgb.png"), str(tmp_path / "big.png"))
    expected = softmax(keras_outputs(images["run"], images["x"][:1]))[0]
    for row in rows:
        np.testing.assert_allclose([float(v) for v in row[2:]], expected, atol=2e-2)


def test_out_writes_the_same_csv_and_never_replaces_an_earlier_file_unasked(images, tmp_path, capsys):
    capsys.readouterr()
    assert main(["predict", str(images["run"]), str(images["new"])]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(images["run"]), str(images["new"]), "--out", str(out), "--batch-size", "3"]) == 0
    assert capsys.readouterr().out == f"gradloop: wrote {out} (10 rows)\n"
    assert_same_predictions(out.read_text(), printed)  # batches of 3, 3, 3 and 1 in order, as one batch of 10
    out.write_text("earlier results")
    assert main(["predict", str(images["run"]), str(images["new"]), "--out", str(out)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err and out.read_text() == "earlier results"
    assert main(["predict", str(images["run"]), str(images["new"]), "--out", str(out), "--overwrite"]) == 0
    assert out.read_text() == printed and [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]


def assert_same_predictions(text: str, other: str) -> None:
    """The same ids and classes, and probabilities up to float32 rounding: a matrix product's rounding
    may depend on how many rows its batch has."""
    rows, other_rows = (list(csv.reader(io.StringIO(t))) for t in (text, other))
    assert [row[:2] for row in rows] == [row[:2] for row in other_rows] and len(rows) == 11
    np.testing.assert_allclose(
        np.array([row[2:] for row in rows[1:]], dtype=np.float32),
        np.array([row[2:] for row in other_rows[1:]], dtype=np.float32),
        rtol=1e-6,
        atol=1e-7,
    )


def test_a_bad_out_is_refused_before_tensorflow_is_imported(tmp_path):
    from test_imports import loaded_after

    (tmp_path / "p.csv").write_text("earlier results")
    modules = loaded_after(
        f"from gradloop import cli\n"
        f"assert cli.main(['predict', 'run', 'x.csv', '--out', {str(tmp_path / 'p.csv')!r}]) == 2"
    )
    assert "gradloop.commands.predict" in modules and not {"tensorflow", "keras"} & modules
    assert (tmp_path / "p.csv").read_text() == "earlier results"


# ----------------------------------------------------------------------------------- tables


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> dict:
    """iris with a text column and gaps, trained with --fill mean; a user's model ending in a softmax on the
    same file; diabetes, a regression."""
    root = tmp_path_factory.mktemp("tables")
    iris = sklearn_datasets.load_iris()
    rows = [
        [*map(float, x), GARDENS[i % 3], str(iris.target_names[t])]
        for i, (x, t) in enumerate(zip(iris.data, iris.target))
    ]
    rows[4][1] = rows[9][3] = rows[20][4] = ""  # gaps: filled with the training split's means (shares, for garden)
    write_csv(root / "iris.csv", [*IRIS, "garden", "species"], rows)
    diabetes = sklearn_datasets.load_diabetes()
    write_csv(
        root / "diabetes.csv",
        [*diabetes.feature_names, "progression"],
        [[*map(float, x), float(t)] for x, t in zip(diabetes.data, diabetes.target)],
    )
    (root / "softmax_model.py").write_text(
        "import keras\n\ndef build(input_shape, num_classes):\n"
        "    return keras.Sequential([keras.Input(input_shape), keras.layers.Dense(8, activation='relu'),\n"
        "                             keras.layers.Dense(num_classes, activation='softmax')])\n"
    )
    runs = {name: root / name for name in ("iris", "softmax", "diabetes")}
    common = ["--hidden", "8", "--epochs", "3", "--batch-size", "16", "--lr", "0.01"]
    assert (
        main(
            [
                "train",
                "--data",
                str(root / "iris.csv"),
                "--target",
                "species",
                "--fill",
                "mean",
                *common,
                "--run-dir",
                str(runs["iris"]),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "--data",
                str(root / "iris.csv"),
                "--target",
                "species",
                "--fill",
                "mean",
                *common,
                "--model",
                f"{root / 'softmax_model.py'}:build",
                "--run-dir",
                str(runs["softmax"]),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "--data",
                str(root / "diabetes.csv"),
                "--target",
                "progression",
                *common,
                "--run-dir",
                str(runs["diabetes"]),
            ]
        )
        == 0
    )
    return {"root": root, "iris": iris, "diabetes": diabetes, "runs": runs}


def table_x(run: Path, columns: dict[str, list[str]]) -> np.ndarray:
    """x as the run reads the cells ``columns`` (by name): numeric columns in its order, gaps filled with
    its fill values, then its categories one-hot, standardised with its statistics."""
    fitted = run_info(run)["data"]["preprocessing"]
    one_hot, fill = fitted["one_hot"], fitted.get("fill_values", {})
    blocks = [
        [float(c) if c else fill[name] for c in columns[name]] for name in fitted["columns"] if name not in one_hot
    ]
    x = np.array(blocks, dtype=np.float64).T
    for name, categories in one_hot.items():
        x = np.concatenate(
            [x, [[float(c == v) for v in categories] if c else fill[name] for c in columns[name]]], axis=1
        )
    stats = fitted["standardize"]
    return ((x.astype(np.float32) - np.asarray(stats["mean"])) / np.asarray(stats["std"])).astype(np.float32)


@pytest.fixture(scope="module")
def new_iris(tables) -> dict:
    """20 iris rows to predict on: the columns in another order, an id column, no species, a gap in row 3,
    and a blank line after the fifth row (so the rows are numbered 2 to 6, then 8 to 22)."""
    iris = tables["iris"]
    order = np.random.default_rng(0).permutation(150)[:20]
    columns = {
        "id": [f"flower-{i}" for i in order],
        "garden": [GARDENS[i % 3] for i in order],
        **{name: [repr(float(v)) for v in iris.data[order, j]] for j, name in enumerate(IRIS)},
    }
    columns["petal_length"][1] = ""
    header = ["id", "petal_width", "garden", "sepal_length", "petal_length", "sepal_width"]
    lines = [",".join(header)] + [",".join(columns[name][i] for name in header) for i in range(20)]
    path = tables["root"] / "new_iris.csv"
    path.write_text("\n".join(lines[:6] + [""] + lines[6:]) + "\n")
    return {"path": path, "columns": columns, "ids": [str(r) for r in [*range(2, 7), *range(8, 23)]]}


def test_a_table_is_read_with_the_runs_columns_categories_fill_values_and_statistics(tables, new_iris, capsys):
    run = tables["runs"]["iris"]
    header, rows = predicted(capsys, str(run), str(new_iris["path"]))
    assert run_info(run)["classes"] == ["setosa", "versicolor", "virginica"]
    check_classes(run, header, rows, id_name="row", ids=new_iris["ids"], x=table_x(run, new_iris["columns"]))


def test_the_left_out_columns_are_named_once_the_predictions_are_made(tables, new_iris, capsys):
    capsys.readouterr()
    assert main(["predict", str(tables["runs"]["iris"]), str(tables["root"] / "iris.csv")]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gradloop")]
    assert said == [f"gradloop: note: {tables['root'] / 'iris.csv'}: 'species' is no feature of the run; left out"]


def test_a_model_ending_in_a_softmax_gives_its_own_outputs_as_probabilities(tables, new_iris, capsys):
    run = tables["runs"]["softmax"]
    assert run_info(run)["loss"] == "SparseCategoricalCrossentropy()"  # trained on probabilities, not logits
    header, rows = predicted(capsys, str(run), str(new_iris["path"]))
    check_classes(
        run, header, rows, id_name="row", ids=new_iris["ids"], x=table_x(run, new_iris["columns"]), from_logits=False
    )


def test_a_regression_gives_the_predicted_values(tables, capsys):
    run, diabetes = tables["runs"]["diabetes"], tables["diabetes"]
    header, rows = predicted(capsys, str(run), str(tables["root"] / "diabetes.csv"))
    assert header == ["row", "predicted"] and [row[0] for row in rows] == [str(r) for r in range(2, 444)]
    columns = {name: [repr(float(v)) for v in diabetes.data[:, j]] for j, name in enumerate(diabetes.feature_names)}
    expected = keras_outputs(run, table_x(run, columns))[:, 0]
    values = np.array([np.float32(row[1]) for row in rows])
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------------- a built-in data set's run


def idx_bytes(images: np.ndarray) -> bytes:
    return gzip.compress(b"\0\0\x08\x03" + struct.pack(">3I", *images.shape) + images.tobytes())


def test_a_builtin_runs_model_predicts_on_image_files_arrays_and_idx_alike(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "mnist-sample", "--epochs", "1", "--hidden", "16", "--run-dir", str(run)]) == 0
    digits = gradloop_data.load_mnist_sample().x_train[-12:]
    (tmp_path / "png").mkdir()
    for i, image in enumerate(digits):
        Image.fromarray(image).save(tmp_path / "png" / f"{i:02d}.png")
    np.savez(tmp_path / "new.npz", x=digits)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(idx_bytes(digits))
    x = digits.reshape(12, 784).astype(np.float32) / np.float32(255)
    results = []
    for source, id_name, ids in (
        ("png", "file", [f"{i:02d}.png" for i in range(12)]),
        ("new.npz", "index", [str(i) for i in range(12)]),
        ("t10k-images-idx3-ubyte.gz", "index", [str(i) for i in range(12)]),
    ):
        header, rows = predicted(capsys, str(run), str(tmp_path / source))
        results.append(check_classes(run, header, rows, id_name=id_name, ids=ids, x=x))
    assert header[2:] == ["p_0", "p_1", "p_2"]
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[1], results[2])


# ----------------------------------------------------------------------------------- README


@pytest.mark.slow
def test_the_readme_predict_commands_run_as_written(tmp_path, monkeypatch, capsys):
    from test_readme import readme_commands, run_example

    monkeypatch.chdir(tmp_path)
    run_example("own-data-files")
    commands = readme_commands("predict")
    assert [argv[:2] for argv in commands] == [["gradloop", "predict"]] * 3
    runs = {argv[2] for argv in commands}
    for argv in readme_commands("own-data"):  # the runs the predict commands use, trained as README trains them
        if argv[1] == "train" and argv[argv.index("--run-dir") + 1] in runs:
            assert main(argv[1:]) == 0
    printed = []
    for argv in commands:
        capsys.readouterr()
        assert main(argv[1:]) == 0, capsys.readouterr().err
        printed.append(capsys.readouterr().out)
    images = list(csv.reader(io.StringIO(printed[0])))
    assert images[0] == ["file", "predicted", "p_one", "p_two", "p_zero"]
    assert sorted(row[0] for row in images[1:]) == sorted(p.name for p in (tmp_path / "digit-images/two").iterdir())
    iris = list(csv.reader(open(tmp_path / "iris-predictions.csv")))
    species = sklearn_datasets.load_iris().target_names[sklearn_datasets.load_iris().target]
    assert iris[0] == ["row", "predicted", "p_setosa", "p_versicolor", "p_virginica"] and len(iris) == 151
    assert np.mean([row[1] == s for row, s in zip(iris[1:], species)]) > 0.8  # 5 epochs of a real, easy table
    diabetes = list(csv.reader(io.StringIO(printed[2])))
    assert diabetes[0] == ["row", "predicted"] and [row[0] for row in diabetes[1:]] == [str(r) for r in range(2, 444)]
    assert np.mean([row[1] == "two" for row in images[1:]]) > 0.9  # a CNN's 2 epochs on real digits
