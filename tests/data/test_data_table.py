"""Tests of gradloop.data.sources.table, the CSV source, on scikit-learn's bundled real tables written here as CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradloop.data.sources import DataSpec, prepared, table
from gradloop.errors import ConfigError, DataError

sklearn_datasets = pytest.importorskip("sklearn.datasets")

IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
COLOURS = ["red", "green", "blue"]


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def iris() -> tuple[np.ndarray, list[str]]:
    bunch = sklearn_datasets.load_iris()
    return bunch.data, [str(bunch.target_names[t]) for t in bunch.target]


def write_iris(path: Path, rows: slice = slice(None), *, colour: bool = False) -> Path:
    x, species = iris()
    header = IRIS_COLUMNS + ["species"] + (["colour"] if colour else [])
    body = [[*x[i], species[i]] + ([COLOURS[i % 3]] if colour else []) for i in range(len(x))]
    return write_csv(path, header, body[rows])


def spec(path: Path, **options) -> DataSpec:
    return DataSpec(str(path), **{"target": "species", **options})


def standardised(x: np.ndarray, train_x: np.ndarray) -> np.ndarray:
    """What run_data must give: the training split's float64 mean and std, applied to float32 x."""
    mean, std = train_x.astype(np.float64).mean(axis=0), train_x.astype(np.float64).std(axis=0)
    return ((x - mean) / std).astype(np.float32)


# --------------------------------------------------------------------- reading real tables


def test_iris_with_class_names_is_a_3_class_classification(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_iris(tmp_path / "iris.csv")
    loaded = table.load(DataSpec("iris.csv", target="species"))
    x, species = iris()
    assert loaded.kind == "csv" and loaded.task == "classification" and loaded.test is None
    assert loaded.class_names == ("setosa", "versicolor", "virginica")
    assert loaded.description == "iris.csv (CSV: 150 rows, 4 feature columns, target species)"
    assert loaded.train.x.dtype == np.float32 and loaded.train.y.dtype == np.int64
    np.testing.assert_array_equal(loaded.train.x, x.astype(np.float32))
    np.testing.assert_array_equal(loaded.train.y, [loaded.class_names.index(s) for s in species])
    assert loaded.preprocessing["standardize"] == IRIS_COLUMNS and loaded.preprocessing["one_hot"] == {}


def test_run_data_standardises_with_the_training_split_statistics_only(tmp_path):
    write_iris(tmp_path / "iris.csv", slice(0, 150, 1))
    write_iris(tmp_path / "iris.test.csv", slice(0, 150, 7))  # every 7th row again, as a test split
    run = prepared.load_run_data(spec(tmp_path / "iris.csv"), classes=None, val_fraction=0.2, seed=3)
    x = iris()[0].astype(np.float32)
    order = np.random.default_rng(3).permutation(150)
    train_rows, val_rows = order[:120], order[120:]
    np.testing.assert_array_equal(run.train.x, standardised(x[train_rows], x[train_rows]))
    np.testing.assert_array_equal(run.val.x, standardised(x[val_rows], x[train_rows]))
    np.testing.assert_array_equal(run.test.x, standardised(x[::7], x[train_rows]))
    np.testing.assert_allclose(run.train.x.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(run.train.x.std(axis=0), 1, atol=1e-6)
    assert run.preprocessing["standardize"]["columns"] == IRIS_COLUMNS
    np.testing.assert_array_equal(
        run.preprocessing["standardize"]["mean"], x[train_rows].astype(np.float64).mean(axis=0)
    )


def test_diabetes_decimal_target_is_inferred_regression(tmp_path):
    bunch = sklearn_datasets.load_diabetes()
    names = list(bunch.feature_names)
    write_csv(
        tmp_path / "diabetes.csv", names + ["progression"], [[*row, t] for row, t in zip(bunch.data, bunch.target)]
    )
    loaded = table.load(DataSpec(str(tmp_path / "diabetes.csv"), target="progression"))
    assert loaded.task == "regression" and loaded.class_names is None
    assert loaded.train.y.dtype == np.float32 and loaded.train.x.shape == (442, 10)
    np.testing.assert_array_equal(loaded.train.y, bunch.target.astype(np.float32))
    np.testing.assert_array_equal(loaded.train.x, bunch.data.astype(np.float32))


def test_integer_target_is_classification_unless_task_regression(tmp_path):
    bunch = sklearn_datasets.load_wine()
    write_csv(
        tmp_path / "wine.csv",
        ["class"] + list(bunch.feature_names),
        [[t, *row] for row, t in zip(bunch.data, bunch.target)],
    )
    as_classes = table.load(DataSpec(str(tmp_path / "wine.csv"), target="class"))
    assert as_classes.task == "classification" and as_classes.class_names == ("0", "1", "2")
    np.testing.assert_array_equal(as_classes.train.y, bunch.target)
    as_numbers = table.load(DataSpec(str(tmp_path / "wine.csv"), target="class", task="regression"))
    assert as_numbers.task == "regression"
    np.testing.assert_array_equal(as_numbers.train.y, bunch.target.astype(np.float32))


def test_many_integer_classes_are_kept_when_asked_for_or_few_enough(tmp_path):
    prices = write_csv(tmp_path / "p.csv", ["a", "label"], [[i, 100 + 7 * i] for i in range(30)])
    assert len(table.load(DataSpec(str(prices), target="label", task="classification")).class_names) == 30
    assert table.load(DataSpec(str(prices), target="label", task="regression")).task == "regression"
    twenty = write_csv(tmp_path / "t.csv", ["a", "label"], [[i, i % 20] for i in range(30)])  # 20: not more than 20
    assert len(table.load(DataSpec(str(twenty), target="label")).class_names) == 20


def test_numeric_class_names_sort_as_numbers(tmp_path):
    write_csv(tmp_path / "t.csv", ["a", "label"], [[i, label] for i, label in enumerate([10, 2, 1, 2, 10, 1])])
    loaded = table.load(DataSpec(str(tmp_path / "t.csv"), target="label"))
    assert loaded.class_names == ("1", "2", "10")
    np.testing.assert_array_equal(loaded.train.y, [2, 1, 0, 1, 2, 0])


def test_text_column_is_one_hot_and_not_standardised(tmp_path):
    write_iris(tmp_path / "iris.csv", colour=True)
    loaded = table.load(spec(tmp_path / "iris.csv"))
    assert loaded.preprocessing["one_hot"] == {"colour": ["blue", "green", "red"]}
    assert loaded.preprocessing["standardize"] == IRIS_COLUMNS
    assert loaded.description.endswith("5 feature columns, target species; one-hot: colour (3 values))")
    expected = np.zeros((150, 3), np.float32)
    expected[np.arange(150), [["blue", "green", "red"].index(COLOURS[i % 3]) for i in range(150)]] = 1
    np.testing.assert_array_equal(loaded.train.x[:, :4], iris()[0].astype(np.float32))
    np.testing.assert_array_equal(loaded.train.x[:, 4:], expected)

    run = prepared.load_run_data(spec(tmp_path / "iris.csv"), classes=None, val_fraction=0.2, seed=0)
    train_rows = np.random.default_rng(0).permutation(150)[:120]
    np.testing.assert_array_equal(run.train.x[:, 4:], expected[train_rows])  # 0 and 1, exactly
    np.testing.assert_array_equal(
        run.train.x[:, :4], standardised(loaded.train.x[train_rows, :4], loaded.train.x[train_rows, :4])
    )
    assert run.preprocessing["standardize"]["mean"][4:] == [0.0] * 3
    assert run.preprocessing["standardize"]["std"][4:] == [1.0] * 3


def test_classes_by_name_through_load_run_data(tmp_path):
    write_iris(tmp_path / "iris.csv")
    run = prepared.load_run_data(spec(tmp_path / "iris.csv"), classes="virginica,setosa", val_fraction=0.2, seed=0)
    assert run.class_names == ("virginica", "setosa")
    labels = np.concatenate([run.train.y, run.val.y])
    assert len(labels) == 100 and np.bincount(labels).tolist() == [50, 50]
    x, species = iris()
    virginica = x[[s == "virginica" for s in species]].astype(np.float32)
    # every virginica row, standardised, is among the training or validation rows labelled 0
    stats = run.preprocessing["standardize"]
    rows = np.concatenate([run.train.x[run.train.y == 0], run.val.x[run.val.y == 0]])
    expected = ((virginica - np.asarray(stats["mean"])) / np.asarray(stats["std"])).astype(np.float32)
    np.testing.assert_array_equal(np.sort(rows, axis=0), np.sort(expected, axis=0))


def test_test_file_beside_it_is_the_test_split_and_joins_the_fingerprint(tmp_path):
    write_iris(tmp_path / "iris.csv", slice(0, 120))
    alone = table.load(spec(tmp_path / "iris.csv")).fingerprint
    write_iris(tmp_path / "iris.test.csv", slice(120, 150))
    loaded = table.load(spec(tmp_path / "iris.csv"))
    x, species = iris()
    np.testing.assert_array_equal(loaded.test.x, x[120:].astype(np.float32))
    np.testing.assert_array_equal(loaded.test.y, [loaded.class_names.index(s) for s in species[120:]])
    assert loaded.description.endswith("test: iris.test.csv, 30 rows)")
    assert loaded.fingerprint["files"] == 2 and loaded.fingerprint["sha256"] != alone["sha256"]
    assert (
        loaded.fingerprint["bytes"]
        == (tmp_path / "iris.csv").stat().st_size + (tmp_path / "iris.test.csv").stat().st_size
    )
    write_iris(tmp_path / "iris.test.csv", slice(121, 150))
    assert table.load(spec(tmp_path / "iris.csv")).fingerprint["sha256"] != loaded.fingerprint["sha256"]


# --------------------------------------------------------------------- missing cells


def iris_with_gaps(path: Path) -> Path:
    """Iris with three missing feature cells (rows 2, 5, 7 as a spreadsheet numbers them)."""
    x, species = iris()
    body = [[*x[i], species[i]] for i in range(150)]
    body[0][1], body[3][2], body[5][0] = "", "NA", "?"
    return write_csv(path, IRIS_COLUMNS + ["species"], body)


def test_missing_cell_without_fill_names_row_and_column(tmp_path):
    path = iris_with_gaps(tmp_path / "gaps.csv")
    with pytest.raises(
        DataError,
        match=r"row 2 of .*gaps.csv has a missing cell \(''\) in column 'sepal_width'; "
        r"fill it in, or pass --fill mean, zero or drop",
    ):
        table.load(spec(path))


def test_fill_mean_uses_the_training_file_means_also_for_the_test_file(tmp_path):
    path = iris_with_gaps(tmp_path / "gaps.csv")
    write_csv(
        tmp_path / "gaps.test.csv", IRIS_COLUMNS + ["species"], [[1, "", 3, "NaN", "setosa"], [1, 2, 3, 4, "virginica"]]
    )
    loaded = table.load(spec(path, fill="mean"))
    x = iris()[0]
    means = [np.mean(np.delete(x[:, c], gaps)) for c, gaps in ((0, [5]), (1, [0]), (2, [3]), (3, []))]
    assert loaded.preprocessing["fill"] == "mean"
    np.testing.assert_allclose(list(loaded.preprocessing["fill_values"].values()), means, rtol=1e-12)
    expected = x.astype(np.float32)
    expected[0, 1], expected[3, 2], expected[5, 0] = means[1], means[2], means[0]
    np.testing.assert_array_equal(loaded.train.x, expected)
    np.testing.assert_array_equal(loaded.test.x[0], np.float32([1, means[1], 3, means[3]]))


def test_fill_zero_and_drop(tmp_path):
    path = iris_with_gaps(tmp_path / "gaps.csv")
    x = iris()[0]
    zero = table.load(spec(path, fill="zero"))
    expected = x.astype(np.float32)
    expected[0, 1] = expected[3, 2] = expected[5, 0] = 0
    np.testing.assert_array_equal(zero.train.x, expected)
    drop = table.load(spec(path, fill="drop"))
    np.testing.assert_array_equal(drop.train.x, np.delete(x, [0, 3, 5], axis=0).astype(np.float32))
    assert drop.description.endswith(
        "(CSV: 147 rows, 4 feature columns, target species; 3 rows with missing cells dropped)"
    )


def test_fill_mean_of_a_one_hot_column_is_each_values_share(tmp_path):
    write_csv(tmp_path / "t.csv", ["a", "colour", "y"], [[1, "red", 0], [2, "", 1], [3, "blue", 0], [4, "red", 1]])
    loaded = table.load(DataSpec(str(tmp_path / "t.csv"), target="y", fill="mean"))
    np.testing.assert_allclose(loaded.train.x[1], [2, 1 / 3, 2 / 3])  # a; blue, red


def test_missing_target_is_an_error_even_with_fill_mean_and_dropped_with_drop(tmp_path):
    write_csv(tmp_path / "t.csv", ["a", "y"], [[1, "x"], [2, "NA"], [3, "z"], [4, "x"]])
    with pytest.raises(DataError, match=r"row 3 of .*t.csv has no target: its 'y' cell is 'NA'; .*--fill drop"):
        table.load(DataSpec(str(tmp_path / "t.csv"), target="y", fill="mean"))
    loaded = table.load(DataSpec(str(tmp_path / "t.csv"), target="y", fill="drop"))
    np.testing.assert_array_equal(loaded.train.x[:, 0], [1, 3, 4])


# --------------------------------------------------------------------- evaluate and predict: reading as the run did


def test_fitted_reading_reproduces_the_runs_x_for_the_same_rows(tmp_path):
    x, species = iris()
    body = [[*x[i], species[i], COLOURS[i % 3]] for i in range(150)]
    body[4][0], body[9][5] = "", "?"
    header = IRIS_COLUMNS + ["species", "colour"]
    write_csv(tmp_path / "iris.csv", header, body)
    first_loaded = table.load(spec(tmp_path / "iris.csv", fill="mean"))
    first = prepared.load_run_data(spec(tmp_path / "iris.csv", fill="mean"), classes=None, val_fraction=0.2, seed=1)

    # the whole file again, as evaluate reads it: identical splits
    again = prepared.load_run_data(
        spec(tmp_path / "iris.csv", fill="mean", fitted=first.preprocessing, class_names=first_loaded.class_names),
        classes=None,
        val_fraction=0.2,
        seed=1,
    )
    assert again.preprocessing == first.preprocessing
    np.testing.assert_array_equal(again.train.x, first.train.x)
    np.testing.assert_array_equal(again.val.x, first.val.x)
    np.testing.assert_array_equal(again.val.y, first.val.y)

    # new data: some of the rows, columns reordered, only virginica and setosa, its own missing cells
    rows = [4, 9, 0, 140, 120]
    order = ["colour", "species"] + IRIS_COLUMNS[::-1]
    new_body = [[body[i][header.index(c)] for c in order] for i in rows]
    write_csv(tmp_path / "new.csv", order, new_body)
    new = table.load(spec(tmp_path / "new.csv", fitted=first.preprocessing, class_names=first_loaded.class_names))
    assert new.preprocessing is first.preprocessing and new.class_names == first_loaded.class_names
    stats = first.preprocessing["standardize"]
    np.testing.assert_array_equal(
        prepared.standardize(new.train, stats).x, prepared.standardize(first_loaded.train, stats).x[rows]
    )
    np.testing.assert_array_equal(new.train.y, first_loaded.train.y[rows])


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            ["5", "3", "1", "0.2", "setosa", "purple"],
            r"row 2 of .*new.csv holds 'purple' in column 'colour', a value the "
            r"training data never had \(it had 'blue', 'green', 'red'\)",
        ),
        (
            ["5", "3", "1", "0.2", "tulip", "red"],
            r"row 2 of .*new.csv: label 'tulip' of 'species' is not among the run's "
            r"classes 'setosa', 'versicolor', 'virginica'",
        ),
        (
            ["5", "three", "1", "0.2", "setosa", "red"],
            r"row 2 of .*new.csv holds 'three' in column 'sepal_width', a numeric "
            r"column of the training data; write a number there",
        ),
    ],
    ids=["unseen category", "unknown label", "text in a numeric column"],
)
def test_fitted_reading_refuses_what_the_run_never_saw(tmp_path, row, message):
    write_iris(tmp_path / "iris.csv", colour=True)
    first = table.load(spec(tmp_path / "iris.csv"))
    write_csv(tmp_path / "new.csv", IRIS_COLUMNS + ["species", "colour"], [row])
    with pytest.raises(DataError, match=message) as error:
        table.load(spec(tmp_path / "new.csv", fitted=first.preprocessing, class_names=first.class_names))
    assert "\n" not in str(error.value)


def test_fitted_reading_wants_the_runs_columns(tmp_path):
    write_iris(tmp_path / "iris.csv")
    first = table.load(spec(tmp_path / "iris.csv"))
    write_csv(tmp_path / "less.csv", IRIS_COLUMNS[1:] + ["species"], [[1, 2, 3, "setosa"]])
    with pytest.raises(DataError, match="less.csv has no column 'sepal_length', which the run's training data has"):
        table.load(spec(tmp_path / "less.csv", fitted=first.preprocessing, class_names=first.class_names))
    write_csv(tmp_path / "more.csv", IRIS_COLUMNS + ["species", "id"], [[1, 2, 3, 4, "setosa", 7]])
    with pytest.raises(DataError, match="more.csv has a column 'id' that the run's training data lacks"):
        table.load(spec(tmp_path / "more.csv", fitted=first.preprocessing, class_names=first.class_names))


# --------------------------------------------------------------------- bad input: one line, what and how to fix

GOOD_HEADER = "a,b,label\n"
BAD_INPUTS = {
    "task without target": (
        GOOD_HEADER + "1,2,x\n3,4,y\n",
        {"target": None, "task": "classification"},
        ConfigError,
        "--task classification says what to predict, but no --target names the column of .* "
        "holding it; pass --target COLUMN, one of 'a', 'b', 'label'",
    ),
    "absent target": (
        GOOD_HEADER + "1,2,x\n3,4,y\n",
        {"target": "species"},
        ConfigError,
        "--target 'species' is not a column of .*; its columns are 'a', 'b', 'label'$",
    ),
    "semicolons": ("a;b;label\n1;2;x\n", {}, ConfigError, "gradloop reads comma-separated files, not ';'"),
    "no header": (
        "1,2,3\n4,5,6\n",
        {},
        ConfigError,
        "its columns are '0', '1', '2'; it has no header row, so its "
        r"columns are named by position, 0 to 2 \(--header yes reads row 1 as names\)",
    ),
    "no header, --header yes": (
        "1,2,3\n4,5,6\n",
        {"header": "yes"},
        ConfigError,
        "its first row looks like data: pass --header no",
    ),
    "ragged without header": ("1,2,x\n3,4\n", {}, DataError, "row 2 of .* has 2 cells but row 1 has 3"),
    "empty": ("", {}, DataError, "is empty; write a header row naming the columns"),
    "blank lines only": ("\n  \n\n", {}, DataError, "is empty"),
    "header only": (GOOD_HEADER, {}, DataError, "has a header row but no data rows"),
    "ragged": (GOOD_HEADER + "1,2,x\n\n3,4\n", {}, DataError, "row 4 of .* has 2 cells but the header has 3 columns"),
    "latin-1": (
        GOOD_HEADER.encode() + "1,2,caf\xe9\n".encode("latin-1"),
        {},
        DataError,
        r"is not UTF-8 text \(byte 0xe9 on line 2\); save it as UTF-8",
    ),
    "utf-16": (GOOD_HEADER.encode("utf-16"), {}, DataError, "is UTF-16 text; save it as UTF-8"),
    "binary": (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", {}, DataError, "is not a text table .it holds NUL bytes"),
    "duplicate columns": ("a,b,a,label\n1,2,3,x\n", {}, DataError, "names column 'a' twice .columns 1 and 3."),
    "nameless column": ("a,,label\n1,2,x\n", {}, DataError, "column 2 of .*'s header .row 1. has no name"),
    "single class": (
        GOOD_HEADER + "1,2,x\n3,4,x\n",
        {},
        DataError,
        "holds one class only .'x'.; a classifier needs at least 2",
    ),
    "only the target": ("label\nx\ny\n", {}, DataError, "has no column besides the target 'label'"),
    "missing cell": (
        GOOD_HEADER + "1,2,x\n3,NA,y\n",
        {},
        DataError,
        "row 3 of .* has a missing cell .'NA'. in column 'b'",
    ),
    "infinite": (
        GOOD_HEADER + "1,2,x\n3,inf,y\n",
        {},
        DataError,
        "row 3 of .* holds 'inf' in column 'b', not a finite number",
    ),
    "beyond float32": (
        GOOD_HEADER + "1,2,x\n3,1e39,y\n",
        {},
        DataError,
        "holds '1e39' in column 'b', not a finite number",
    ),
    "decimals as classes": (
        GOOD_HEADER + "1,2,0.5\n3,4,1.5\n",
        {"task": "classification"},
        ConfigError,
        r"classification needs class labels, but the target 'label' holds '0.5' \(row 2 of .*\); "
        r"pass --task regression",
    ),
    "decimals among whole numbers": (
        GOOD_HEADER + "1,2,1\n3,4,1.5\n5,6,2\n",
        {"task": "classification"},
        ConfigError,
        r"holds '1.5' \(row 3 of .*\); pass --task regression",
    ),
    "prices as classes": (
        GOOD_HEADER + "".join(f"{i},1,{100 + 7 * i}\n" for i in range(30)),
        {},
        ConfigError,
        r"the target 'label' of .* has 30 distinct labels in 30 examples, too many to be classes; "
        r"pass --task regression",
    ),
    "text as regression": (
        GOOD_HEADER + "1,2,x\n3,4,y\n",
        {"task": "regression"},
        ConfigError,
        r"regression needs numbers, but the target 'label' holds 'x' \(row 2 of .*\); pass --task classification",
    ),
    "drop leaves nothing": (
        GOOD_HEADER + "1,,x\n?,4,y\n",
        {"fill": "drop"},
        DataError,
        "every row of .* has a missing cell",
    ),
    "no mean": ("a,b,label\n1,,x\n2,,y\n", {"fill": "mean"}, DataError, "column 'b' of .* has no values, so no mean"),
    "bad quoting": (GOOD_HEADER + '1,2,"x\n', {}, DataError, "row 2 of .* is not valid CSV .unexpected end of data."),
    "id column": (
        "id,label\n" + "".join(f"x{i},{i % 2}\n" for i in range(1001)),
        {},
        DataError,
        "column 'id' of .* holds 1,001 distinct values that are not all numbers .e.g. 'x0'., too many to one-hot",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_is_one_line_saying_what_and_how_to_fix(tmp_path, case):
    content, options, error, message = BAD_INPUTS[case]
    path = tmp_path / "bad.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(error, match=message) as raised:
        table.load(DataSpec(str(path), **{"target": "label", **options}))
    assert "\n" not in str(raised.value) and "bad.csv" in str(raised.value)


def test_test_file_must_match_the_training_file(tmp_path):
    write_csv(tmp_path / "t.csv", ["a", "colour", "label"], [[1, "red", "x"], [2, "blue", "y"]])
    write_csv(tmp_path / "t.test.csv", ["a", "colour", "label"], [[1, "green", "x"]])
    with pytest.raises(DataError, match="row 2 of .*t.test.csv holds 'green' in column 'colour', a value the training"):
        table.load(DataSpec(str(tmp_path / "t.csv"), target="label"))
    write_csv(tmp_path / "t.test.csv", ["a", "label"], [[1, "x"]])
    with pytest.raises(DataError, match="t.test.csv has no column 'colour', which the training file t.csv has"):
        table.load(DataSpec(str(tmp_path / "t.csv"), target="label"))


def test_breast_cancer_through_load_source_picks_this_module(tmp_path):
    from gradloop.data import sources

    bunch = sklearn_datasets.load_breast_cancer()
    names = [n.replace(" ", "_") for n in bunch.feature_names]
    write_csv(
        tmp_path / "cancer.csv",
        names + ["diagnosis"],
        [[*row, bunch.target_names[t]] for row, t in zip(bunch.data, bunch.target)],
    )
    loaded = sources.load_source(DataSpec(str(tmp_path / "cancer.csv"), target="diagnosis"))
    assert loaded.class_names == ("benign", "malignant") and loaded.train.x.shape == (569, 30)
    np.testing.assert_array_equal(loaded.train.y, 1 - bunch.target)  # sklearn: 0 malignant; sorted names: 0 benign


# --------------------------------------------------------------------- fuzzing: load or a gradloop error, never a crash

FUZZ = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=5000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
NUMBERS = st.one_of(st.integers(-5, 5).map(str), st.floats(-1e3, 1e3).map(lambda v: f"{v:.3g}"))
WORDS = st.sampled_from(["x", "y", "red", "blue", "caf\u00e9", '"a,b"'])
ODD = st.one_of(
    st.sampled_from(["", "NA", "nan", "?", "inf", "1e39", " 7 ", '"', '"q""q"', 'x"y']), st.text(max_size=6)
)
COLUMN_CELLS = [NUMBERS, NUMBERS, WORDS, st.one_of(NUMBERS, NUMBERS, NUMBERS, ODD), st.one_of(WORDS, WORDS, ODD), ODD]


@st.composite
def ragged_csv(draw) -> tuple[str, str]:
    """Mostly well-formed tables (distinct names, one cell per column, each column of one sort), now and then not."""
    width = draw(st.integers(2, 4))
    header = draw(st.permutations(["a", "b", "label", "c"]))[:width]
    if draw(st.integers(0, 9)) == 0:
        header[draw(st.integers(0, width - 1))] = draw(st.sampled_from(["", "a", "label", " b "]))
    cells = [draw(st.sampled_from(COLUMN_CELLS)) for _ in header] + [ODD]
    rows = draw(st.lists(st.tuples(*cells[:width]), max_size=8))
    if draw(st.integers(0, 3)) == 0:
        rows.insert(
            draw(st.integers(0, len(rows))), draw(st.integers(0, width + 1).flatmap(lambda n: st.tuples(*cells[:n])))
        )
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    text = newline.join(",".join(row) for row in [header] + rows)
    return text, draw(st.sampled_from(["label", "label", "a", "zzz"]))


def check_loads_or_refuses(path: Path, **options) -> None:
    try:
        loaded = table.load(DataSpec(str(path), **options))
    except (DataError, ConfigError) as exc:
        assert "\n" not in str(exc)
        return
    x, y = loaded.train.x, loaded.train.y
    assert x.dtype == np.float32 and x.ndim == 2 and len(x) == len(y) > 0 and np.isfinite(x).all()
    assert (loaded.task == "classification") == (loaded.class_names is not None)
    if loaded.task == "classification":
        assert y.dtype == np.int64 and y.min() >= 0 and y.max() < len(loaded.class_names)
    again = table.load(DataSpec(str(path), **options, fitted=loaded.preprocessing, class_names=loaded.class_names))
    np.testing.assert_array_equal(again.train.x, x)  # evaluate reads the training file as training did
    np.testing.assert_array_equal(again.train.y, y)


@FUZZ
@given(content=st.binary(max_size=400))
def test_arbitrary_bytes_load_or_raise_a_gradloop_error(tmp_path, content):
    path = tmp_path / "fuzz.csv"
    path.write_bytes(content)
    check_loads_or_refuses(path, target="label")


@FUZZ
@given(
    case=ragged_csv(),
    fill=st.sampled_from([None, "mean", "zero", "drop"]),
    task=st.sampled_from([None, "classification", "regression"]),
)
def test_ragged_csv_text_loads_or_raises_a_gradloop_error(tmp_path, case, fill, task):
    text, target = case
    path = tmp_path / "fuzz.csv"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    check_loads_or_refuses(path, target=target, fill=fill, task=task)
