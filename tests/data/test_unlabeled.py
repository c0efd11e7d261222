"""Data without labels (task "none") from every source, and tables without a header row (issue 27, section 3)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import mlxtend
import numpy as np
import pytest

from gradloop import ConfigError, DataError, cli
from gradloop.app.config import build_config
from gradloop.data import examples as examples_lib
from gradloop.data import sources
from gradloop.data.builtin.prepare import split_rows
from gradloop.data.sources import UNLABELED, DataSpec, prepared, table
from gradloop.data.sources.unlabeled import UnlabeledArrays
from gradloop.run.schema import check_data_record

AUTOMPG = Path(mlxtend.__file__).parent / "data" / "data" / "autompg.csv.gz"  # 392 cars, no header row


@pytest.fixture
def autompg(tmp_path) -> Path:
    """A copy of mlxtend's autompg.csv: cylinders, ..., origin, car name (text), mpg (column 8)."""
    path = tmp_path / "autompg.csv"
    path.write_bytes(gzip.decompress(AUTOMPG.read_bytes()))
    return path


def _mpg(path: Path) -> np.ndarray:
    return np.array([float(line.rsplit(",", 1)[1]) for line in path.read_text().splitlines()], dtype=np.float32)


# --------------------------------------------------------------------- tables without a header row


def test_autompg_is_read_without_header_and_target_8_is_mpg(autompg):
    loaded = sources.load_source(DataSpec(str(autompg), target="8"))
    assert loaded.task == "regression"
    np.testing.assert_array_equal(loaded.train.y, _mpg(autompg))  # every car, the first one too
    assert loaded.train.n == 392
    assert loaded.preprocessing["header"] == "no"
    assert loaded.preprocessing["columns"] == [str(i) for i in range(8)]
    assert loaded.preprocessing["one_hot"].keys() == {"7"}  # the car names
    assert loaded.description.startswith(f"{autompg} (CSV: 392 rows, 8 feature columns, target 8; no header row;")
    assert loaded.notes == (
        (
            f"{autompg} has no header row (row 1 reads as data), so its columns are named by position, "
            "0 to 8, and --target takes that number; pass --header yes if row 1 names them"
        ),
    )


def test_header_yes_reads_row_1_as_names_as_before(autompg):
    loaded = sources.load_source(DataSpec(str(autompg), target="8", header="yes"))
    assert loaded.train.n == 391 and loaded.notes == ()
    assert loaded.preprocessing["header"] == "yes"
    assert sorted(set(loaded.class_names)) == ["3", "4", "5", "6", "8"]  # the column *named* 8: cylinders


def test_header_no_and_auto_on_a_named_table(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n1,2,x\n3,4,y\n5,6,x\n")
    named = table.load(DataSpec(str(path), target="label"))
    assert named.train.n == 3 and named.preprocessing["header"] == "yes" and named.notes == ()
    unnamed = table.load(DataSpec(str(path), target="2", header="no"))  # row 1 as data, as asked
    assert unnamed.train.n == 4 and unnamed.class_names == ("label", "x", "y")
    assert unnamed.preprocessing["one_hot"] == {"0": ["1", "3", "5", "a"], "1": ["2", "4", "6", "b"]}


@pytest.mark.parametrize(
    "content, headerless",
    [
        ("1,2,3\n4,5,6\n", True),  # all numbers
        ("8,307,chevrolet,18\n4,97,vw,27\n", True),  # numbers above the numeric columns, text above text
        ("NA,2,x\n1,3,y\n", True),  # a missing cell tells nothing
        ("a,b,c\n1,2,3\n", False),  # names above numbers
        ("id,2,c\n1,2,3\n", False),  # one name above numbers is enough
        ("a,b\nx,y\n", False),  # text only: nothing tells, row 1 names the columns as before
        ("2019,country\n5,fr\n", True),  # numbers as names above numbers: read as data (--header yes says otherwise)
    ],
)
def test_first_row_is_told_from_its_cells(tmp_path, content, headerless):
    path = tmp_path / "t.csv"
    path.write_text(content)
    assert table._read_table(path, "auto").headerless is headerless


def test_evaluate_and_predict_read_a_headerless_run_the_same_way(autompg, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        cli.main(
            [
                "train",
                "--data",
                str(autompg),
                "--target",
                "8",
                "--epochs",
                "1",
                "--hidden",
                "4",
                "--steps-per-execution",
                "1",
                "--run-dir",
                str(run),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "has no header row (row 1 reads as data)" in captured.err
    info = json.loads((run / "run.json").read_text())
    assert info["task"] == "regression" and info["n_train"] + info["n_val"] == 392
    assert info["data"]["preprocessing"]["header"] == "no"
    assert cli.main(["evaluate", str(run), "--split", "val", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["loss"] == pytest.approx(info["final"]["val_loss"], rel=1e-5)
    new = tmp_path / "new.csv"
    new.write_text("".join(autompg.read_text().splitlines(keepends=True)[:3]))  # headerless too
    assert cli.main(["predict", str(run), str(new), "--out", str(tmp_path / "p.csv")]) == 0
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 4


def test_header_flag_is_checked():
    assert build_config(data="x.csv", header="no").header == "no"
    with pytest.raises(ConfigError, match="header must be one of auto, yes, no, got 'maybe'"):
        build_config(data="x.csv", header="maybe")
    with pytest.raises(ConfigError, match="--header applies to --data only"):
        build_config(header="yes")


def test_run_json_records_header_and_task_none(tmp_path):
    check_data_record({"kind": "csv", "preprocessing": {"columns": ["0"], "header": "no", "task": UNLABELED}}, tmp_path)
    with pytest.raises(Exception, match="data header 'maybe', not yes or no"):
        check_data_record({"kind": "csv", "preprocessing": {"columns": ["0"], "header": "maybe"}}, tmp_path)


# --------------------------------------------------------------------- every source without labels


def test_csv_without_target_is_unlabelled_every_column_a_feature(autompg):
    loaded = sources.load_source(DataSpec(str(autompg)))
    assert loaded.task == UNLABELED and loaded.class_names is None and loaded.train.y is None
    assert isinstance(loaded.train, UnlabeledArrays) and loaded.train.x.shape == (392, 8 + 301)
    assert "target" not in loaded.preprocessing and loaded.preprocessing["task"] == UNLABELED
    assert "9 feature columns, no target; no header row" in loaded.description


def test_npz_of_x_alone(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (30, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "x.npz", x=x)
    loaded = sources.load_source(DataSpec(str(tmp_path / "x.npz")))
    assert loaded.task == UNLABELED and loaded.kind == "arrays" and loaded.test is None
    np.testing.assert_array_equal(loaded.train.x, x.astype(np.float32) / np.float32(255))
    assert loaded.preprocessing == {"divide_by": 255}
    assert loaded.description == f"{tmp_path / 'x.npz'} (arrays: 30 examples of shape (4, 4), no labels)"
    np.savez(tmp_path / "split.npz", x_train=x, x_test=x[:5])
    split = sources.load_source(DataSpec(str(tmp_path / "split.npz")))
    assert (split.train.n, split.test.n, split.task) == (30, 5, UNLABELED)
    with pytest.raises(ConfigError, match="--task regression says what to predict, but .* has no labels"):
        sources.load_source(DataSpec(str(tmp_path / "x.npz"), task="regression"))
    np.savez(tmp_path / "half.npz", x_train=x, x_test=x[:5], y_train=np.arange(30) % 2)
    with pytest.raises(DataError, match="has x_test but no y_test"):  # some labels: every split needs them
        sources.load_source(DataSpec(str(tmp_path / "half.npz")))


def test_npy_folder_of_x_alone(tmp_path):
    (tmp_path / "f").mkdir()
    np.save(tmp_path / "f" / "x.npy", np.ones((8, 3), np.float32))
    loaded = sources.load_source(DataSpec(str(tmp_path / "f")))
    assert loaded.task == UNLABELED and loaded.train.x.shape == (8, 3)


def _pngs(folder: Path, n: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((6, 6), 40 * i, np.uint8)).save(folder / f"{i}.png")


def test_image_folder_without_class_folders(tmp_path):
    _pngs(tmp_path / "img", 5)
    _pngs(tmp_path / "img" / "test", 2)
    assert sources.kind_of(str(tmp_path / "img")) == "images"
    loaded = sources.load_source(DataSpec(str(tmp_path / "img")))
    assert loaded.task == UNLABELED and loaded.class_names is None and loaded.train.y is None
    assert (loaded.train.n, loaded.test.n) == (5, 2)
    assert loaded.description == f"{tmp_path / 'img'} (images: 7 files, no labels, 6x6 grayscale)"
    batch = next(iter(loaded.train.batches(np.array([2, 0]), 2)))
    assert isinstance(batch, tuple) and len(batch) == 1  # (images,), as model.fit(x) gives them
    np.testing.assert_allclose(batch[0].numpy()[:, 0, 0, 0], [80 / 255, 0.0], rtol=1e-6)
    assert loaded.train.subset(np.array([1])).y is None


def test_unlabelled_images_with_a_labelled_test_folder_are_refused(tmp_path):
    _pngs(tmp_path / "img", 3)
    _pngs(tmp_path / "img" / "test" / "cat", 1)
    with pytest.raises(DataError, match="test has class folders, but .* has none"):
        sources.load_source(DataSpec(str(tmp_path / "img")))


def test_function_returning_x_alone(tmp_path):
    (tmp_path / "make.py").write_text(
        "import numpy as np\nimport tensorflow as tf\n\n"
        "def arrays():\n"
        "    return {'x_train': np.ones((6, 2), np.float32), 'x_test': np.zeros((2, 2), np.float32)}\n\n"
        "def datasets():\n"
        "    return {'train': tf.data.Dataset.from_tensor_slices(np.ones((7, 2), np.float32)).batch(3)}\n\n"
        "def tuples():\n"
        "    return {'train': tf.data.Dataset.from_tensor_slices((np.ones((4, 2), np.float32),)).batch(2)}\n\n"
        "def mixed():\n    x = np.ones((4, 2), np.float32)\n"
        "    return {'train': tf.data.Dataset.from_tensor_slices(x).batch(2),\n"
        "            'val': tf.data.Dataset.from_tensor_slices((x, np.arange(4))).batch(2)}\n"
    )
    arrays = sources.load_source(DataSpec(f"{tmp_path}/make.py:arrays"))
    assert (arrays.task, arrays.train.n, arrays.test.n) == (UNLABELED, 6, 2)
    datasets = sources.load_source(DataSpec(f"{tmp_path}/make.py:datasets"))
    assert (datasets.task, datasets.train.n, datasets.train.num_batches) == (UNLABELED, 7, 3)
    assert datasets.train.element_shape == (2,) and datasets.description.endswith("in 3 batches, no labels)")
    tuples = sources.load_source(DataSpec(f"{tmp_path}/make.py:tuples"))
    assert (tuples.task, tuples.train.n) == (UNLABELED, 4)
    with pytest.raises(DataError, match="the train dataset yields x alone, and the others"):
        sources.load_source(DataSpec(f"{tmp_path}/make.py:mixed"))


# --------------------------------------------------------------------- splitting, batches, fingerprints


def test_validation_split_of_x_alone_is_the_runs_split(tmp_path):
    x = np.random.default_rng(1).normal(size=(24, 3)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    data = prepared.load_run_data(DataSpec(str(tmp_path / "x.npz")), classes=None, val_fraction=0.25, seed=7)
    train_rows, val_rows = split_rows(24, val_fraction=0.25, seed=7)
    np.testing.assert_array_equal(data.train.x, x[train_rows])
    np.testing.assert_array_equal(data.val.x, x[val_rows])
    assert data.task == UNLABELED and data.n_outputs == 0 and data.class_names is None
    with pytest.raises(ConfigError, match="--classes picks classes of labelled data, and .* has no labels"):
        prepared.load_run_data(DataSpec(str(tmp_path / "x.npz")), classes=("0", "1"), val_fraction=0.25, seed=7)


def test_unlabelled_csv_is_standardised_with_the_training_split(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n" + "".join(f"{i},{2 * i + 1}\n" for i in range(20)))
    notes = []
    data = prepared.load_run_data(
        DataSpec(str(tmp_path / "t.csv")), classes=None, val_fraction=0.2, seed=0, notify=notes.append
    )
    assert isinstance(data.train, UnlabeledArrays) and isinstance(data.val, UnlabeledArrays) and notes == []
    np.testing.assert_allclose(data.train.x.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(data.train.x.std(axis=0), 1.0, rtol=1e-5)


def test_training_batches_of_x_alone_are_in_memory_and_one_tuples(tmp_path):
    from gradloop.loop.in_memory import InMemory, first_batch

    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    feed = examples_lib.epochs(UnlabeledArrays(x), batch_size=4, seed=3)
    assert isinstance(feed, InMemory) and feed.steps == 3
    order = feed.order(0)
    batch = first_batch(feed(0))
    assert isinstance(batch, tuple) and len(batch) == 1
    np.testing.assert_array_equal(batch[0].numpy(), x[order[:4]])
    same = list(UnlabeledArrays(x).batches(order, 4))  # the tf.data batches: the same rows, the same structure
    assert [b[0].shape[0] for b in same] == [4, 4, 2]
    np.testing.assert_array_equal(same[0][0].numpy(), x[order[:4]])


def test_fingerprint_of_x_alone_changes_with_x(tmp_path):
    x = np.zeros((5, 2), np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    before = sources.load_source(DataSpec(str(tmp_path / "x.npz"))).fingerprint
    x[0, 0] = 1
    np.savez(tmp_path / "x.npz", x=x)
    assert sources.load_source(DataSpec(str(tmp_path / "x.npz"))).fingerprint != before


# --------------------------------------------------------------------- the CLI


@pytest.mark.parametrize(
    "argv, phrase",
    [
        (
            ["--model", "mlp"],
            (
                "has no labels (x without y), and --model mlp learns labels: save y beside x, or train a "
                "model that brings its own train_step on it"
            ),
        ),
        (
            ["--model", "{tmp}/m.py:build"],
            "has no labels (x without y), and the default loss compares labels with outputs",
        ),
    ],
)
def test_training_on_unlabelled_data_is_refused_in_one_line(tmp_path, capsys, argv, phrase):
    np.savez(tmp_path / "x.npz", x=np.ones((12, 3), np.float32))
    (tmp_path / "m.py").write_text(
        "import keras\n\ndef build(input_shape):\n"
        "    return keras.Sequential([keras.Input(input_shape), keras.layers.Dense(2)])\n"
    )
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    data = ["--data", str(tmp_path / "x.npz"), "--batch-size", "4"]  # a batch the 10 training rows fill
    code = cli.main(["train", *data, *argv, "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and phrase in err, err
    assert not (tmp_path / "run").exists()


def test_cli_csv_without_target_says_how_to_give_labels(autompg, tmp_path, capsys):
    shutil.copy(autompg, tmp_path / "cars.csv")
    assert cli.main(["train", "--data", str(tmp_path / "cars.csv"), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("gradloop: note: ") and "has no header row" in err[0]
    assert err[1] == (
        f"gradloop: error: --data {tmp_path / 'cars.csv'} has no labels (no --target), and --model mlp "
        "learns labels: pass --target COLUMN to predict one of its columns, or train a model that brings "
        "its own train_step on it"
    )
