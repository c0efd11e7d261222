"""``--data FILE.py:FUNCTION`` (gradloop.data.sources.function): a function returning arrays is read as an
``.npz`` is; one returning tf.data datasets of (x, y) batches is used as given.

The functions are real files in tmp_path over real digits (``gradloop.data.load_mnist_sample``)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradloop import data
from gradloop.data import examples as examples_lib
from gradloop.data import sources
from gradloop.data.sources import function
from gradloop.data.sources.prepared import load_run_data
from gradloop.errors import ConfigError, DataError
from gradloop.loop.trainer import Trainer

DIGITS = """
import numpy as np
import tensorflow as tf
from gradloop.data import load_mnist_sample

def digits():
    raw = load_mnist_sample()  # sorted by label: every 10th of 5,000 keeps all ten classes
    return raw.x_train[::10], raw.y_train[::10]

def arrays(seed):
    x, y = digits()
    order = np.random.default_rng(seed).permutation(len(y))
    return {"x_train": x[order][:400], "y_train": y[order][:400], "x_test": x[order][400:], "y_test": y[order][400:]}

def arrays_with_val():
    x, y = digits()
    return {"x": x[:300], "y": y[:300], "x_val": x[300:], "y_val": y[300:]}

def datasets(seed):
    x, y = digits()
    x = x.astype("float32") / 255
    train = tf.data.Dataset.from_tensor_slices((x[:400], y[:400]))
    train = train.shuffle(400, seed=seed, reshuffle_each_iteration=True).batch(32)
    val = tf.data.Dataset.from_tensor_slices((x[400:], y[400:])).batch(64)
    return {"train": train, "val": val, "class_names": ["zero", "one", "two", "three", "four", "five", "six",
                                                        "seven", "eight", "nine"]}

def datasets_tuple():
    x, y = digits()
    return (tf.data.Dataset.from_tensor_slices((x[:300] / 255, y[:300])).batch(50),
            tf.data.Dataset.from_tensor_slices((x[300:] / 255, y[300:])).batch(50))

def train_only():
    x, y = digits()
    return {"train": tf.data.Dataset.from_tensor_slices((x / 255, y)).batch(100)}

def datasets_of_column_labels():
    x, y = digits()
    return {"train": tf.data.Dataset.from_tensor_slices((x[:300] / 255, y[:300, None])).batch(50),
            "val": tf.data.Dataset.from_tensor_slices((x[300:] / 255, y[300:, None])).batch(50)}
"""


@pytest.fixture
def digits_py(tmp_path) -> Path:
    (tmp_path / "digits.py").write_text(DIGITS)
    return tmp_path / "digits.py"


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    raw = data.load_mnist_sample()
    return raw.x_train[::10], raw.y_train[::10]


def load(path: Path, function_name: str, **options) -> sources.Loaded:
    spec = f"{path}:{function_name}"
    assert sources.kind_of(spec) == "function"
    return sources.load_source(sources.DataSpec(spec, **options))


# --------------------------------------------------------------------- arrays


def test_a_function_returning_arrays_is_read_as_an_npz_is_with_the_seed_it_declares(digits_py, digits, tmp_path):
    loaded = load(digits_py, "arrays", seed=7)
    x, y = digits
    order = np.random.default_rng(7).permutation(len(y))
    np.savez(
        tmp_path / "same.npz",
        x_train=x[order][:400],
        y_train=y[order][:400],
        x_test=x[order][400:],
        y_test=y[order][400:],
    )
    npz = sources.load_source(sources.DataSpec(str(tmp_path / "same.npz")))
    assert (loaded.kind, loaded.task, loaded.class_names) == ("function", "classification", tuple("0123456789"))
    assert (loaded.task, loaded.class_names, loaded.preprocessing) == (npz.task, npz.class_names, npz.preprocessing)
    assert npz.preprocessing  # uint8 pixels are scaled
    for split in ("train", "test"):
        np.testing.assert_array_equal(getattr(loaded, split).x, getattr(npz, split).x)
        np.testing.assert_array_equal(getattr(loaded, split).y, getattr(npz, split).y)
    np.testing.assert_array_equal(loaded.train.y, y[order][:400])
    assert loaded.val is None
    assert loaded.description == f"{digits_py}:arrays (function: 400 examples of shape (28, 28))"
    arrays_bytes = sum(a.nbytes for a in (x, y))
    assert (loaded.fingerprint["files"], loaded.fingerprint["bytes"]) == (1, digits_py.stat().st_size + arrays_bytes)


def test_a_function_s_arrays_are_fingerprinted_with_its_source(digits_py):
    """The same code returning other arrays (here: another seed's order; in life, a file it reads) is other data."""
    first, again, other = (load(digits_py, "arrays", seed=s).fingerprint for s in (7, 7, 8))
    assert first == again
    assert first != other and first["bytes"] == other["bytes"]
    assert sources.describe_change(first, other).startswith("the same 1 file and")


def test_a_function_s_own_validation_arrays_are_kept_and_not_split_again(digits_py):
    spec = sources.DataSpec(f"{digits_py}:arrays_with_val")
    run = load_run_data(spec, classes=None, val_fraction=0.5, seed=0)
    assert (run.train.n, run.val.n) == (300, 200)


# --------------------------------------------------------------------- datasets


def test_a_function_returning_datasets_is_read_once_for_its_labels_and_used_as_given(digits_py, digits):
    loaded = load(digits_py, "datasets", seed=3)
    train, val = loaded.train, loaded.val
    assert isinstance(train, function.DatasetExamples) and loaded.test is None
    assert (train.n, train.num_batches, train.element_shape) == (400, 13, (28, 28))
    assert sorted(train.y.tolist()) == sorted(digits[1][:400].tolist())  # one shuffled pass
    np.testing.assert_array_equal(val.y, digits[1][400:])  # val in its own order
    assert loaded.class_names[:3] == ("zero", "one", "two") and loaded.preprocessing == {}
    assert train.batches(np.arange(400), batch_size=999) is train.dataset  # its order, its batches
    assert loaded.description.endswith("(function: tf.data, 400 examples of shape (28, 28) in 13 batches)")


def test_a_tuple_of_datasets_is_train_then_val_and_class_names_default_to_the_labels(digits_py):
    loaded = load(digits_py, "datasets_tuple")
    assert (loaded.train.n, loaded.val.n, loaded.test) == (300, 200, None)
    assert loaded.class_names == tuple("0123456789")


def test_datasets_of_integer_labels_of_shape_batch_by_1_are_a_classification(digits_py, digits):
    loaded = load(digits_py, "datasets_of_column_labels")
    assert (loaded.task, loaded.class_names) == ("classification", tuple("0123456789"))
    np.testing.assert_array_equal(loaded.train.y, digits[1][:300])
    for _, y in loaded.val.batches(None, 50):
        assert y.shape == (50,)  # the pipeline gives one label per example too


def test_a_run_on_datasets_keeps_every_class_and_the_function_s_validation(digits_py):
    run = load_run_data(sources.DataSpec(f"{digits_py}:datasets", seed=3), classes=None, val_fraction=0.2, seed=3)
    assert (run.train.n, run.val.n, run.n_outputs) == (400, 100, 10)
    assert isinstance(run.train, function.DatasetExamples)


def test_gradloop_cannot_split_or_pick_classes_of_a_pipeline_and_says_what_to_do(digits_py):
    spec = sources.DataSpec(f"{digits_py}:train_only")
    with pytest.raises(DataError, match="cannot take some of a pipeline's examples .* return a 'val' dataset too"):
        load_run_data(spec, classes=None, val_fraction=0.2, seed=0)
    with pytest.raises(DataError, match="keep only the classes you want in the function"):
        load_run_data(sources.DataSpec(f"{digits_py}:datasets"), classes=[3, 5], val_fraction=0.2, seed=0)
    run = load_run_data(spec, classes=None, val_fraction=0, seed=0)  # no validation: allowed
    assert (run.train.n, run.val.n) == (500, 0)


def test_a_checkpointed_iterator_resumes_the_seeded_shuffle_exactly_in_a_new_load(digits_py):
    """What --resume relies on: the function builds the same pipeline for the same seed, and
    restoring the iterator restores the shuffle's position, for this epoch and the next ones."""
    first = load(digits_py, "datasets", seed=5).train

    def labels(iterator, k=None):
        return [batch[1].numpy().tolist() for batch, _ in zip(iterator, range(k or 10**6))]

    epochs = examples_lib.epochs(first, batch_size=32, seed=5)
    labels(iter(epochs(0)))
    iterator = iter(epochs(1))
    labels(iterator, 4)
    saved = tf.train.Checkpoint(iterator=iterator).write(str(Path(digits_py).parent / "ckpt"))
    rest_of_epoch_1, epoch_2 = labels(iterator), labels(iter(epochs(2)))

    second = load(digits_py, "datasets", seed=5).train  # a new process would load it again
    resumed_epochs = examples_lib.epochs(second, batch_size=32, seed=5)
    resumed = iter(resumed_epochs(1))
    tf.train.Checkpoint(iterator=resumed).read(saved).assert_consumed()
    assert labels(resumed) == rest_of_epoch_1
    assert labels(iter(resumed_epochs(2))) == epoch_2


def test_the_trainer_trains_on_a_function_s_datasets(digits_py):
    loaded = load(digits_py, "datasets", seed=1)
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input(loaded.train.element_shape), keras.layers.Flatten(), keras.layers.Dense(10)])
    trainer = Trainer(
        model,
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = trainer.fit(
        examples_lib.epochs(loaded.train, batch_size=32, seed=1), validation_data=loaded.val.batches(None, 32), epochs=2
    )
    assert len(history.history["val_loss"]) == 2
    assert history.history["accuracy"][1] > 0.5  # real digits, a linear model: well above chance


# --------------------------------------------------------------------- every error, one line


@dataclass
class Row:
    """The body of ``def make(seed):`` -> the error and a phrase of its one-line message."""

    body: str
    error: type[Exception]
    phrase: str
    task: str | None = None  # --task; None: told from the labels


PRELUDE = """
import numpy as np
import tensorflow as tf
x, y = np.zeros((6, 4), np.float32), np.arange(6) % 3
def ds(x=x, y=y):
    return tf.data.Dataset.from_tensor_slices((x, y))
"""

ERRORS = {
    "returns a list of arrays": Row(
        "return [x, y]", DataError, "returned a list of 2 items; return a dict of numpy arrays"
    ),
    "returns nothing": Row(
        "pass", DataError, "returned None; return a dict of numpy arrays (x, y, or x_train, y_train"
    ),
    "returns an empty dict": Row("return {}", DataError, "returned a dict of 0 items; return a dict"),
    "unknown keys": Row(
        "return {'images': x, 'labels': y}", DataError, "returned a dict with keys 'images', 'labels'; return"
    ),
    "class_names with arrays": Row(
        "return {'x': x, 'y': y, 'class_names': ['a', 'b', 'c']}",
        DataError,
        "returned class_names with arrays, whose classes are y's distinct values",
    ),
    "arrays and datasets together": Row(
        "return {'x': x, 'y': y, 'train': ds().batch(2)}",
        DataError,
        "returned arrays (x, y) and datasets (train) together; return one or the other",
    ),
    "x without y beside labels": Row(
        "return {'x_train': x, 'x_test': x, 'y_test': y}",
        DataError,
        "--data {tmp}/make.py:make has x_train but no y_train; return both",
    ),
    "y alone": Row("return {'y': y}", DataError, "--data {tmp}/make.py:make has y but no x; return both"),
    "arrays that do not pair up": Row(
        "return {'x': x, 'y': y[:4]}",
        DataError,
        "x of shape (6, 4) and y of shape (4,) do not pair up; give one y per example",
    ),
    "ragged lists": Row("return {'x': [[1, 2], [3]], 'y': [0, 1]}", DataError, "x is not an array (ValueError: "),
    "object arrays": Row("return {'x': np.array([None] * 6), 'y': y}", DataError, "x has dtype object; return numbers"),
    "val of another shape": Row(
        "return {'x': x, 'y': y, 'x_val': x[:, :2], 'y_val': y}",
        DataError,
        "x_val has examples of shape (2,), x_train of (4,); give both splits the same shape",
    ),
    "a dataset among arrays": Row(
        "return {'x_train': ds(), 'y_train': y}", DataError, "returned x_train as a tf.data dataset"
    ),
    "datasets without train": Row(
        "return {'val': ds().batch(2)}", DataError, "returned val but no train dataset; return one"
    ),
    "train not a dataset": Row(
        "return {'train': x, 'val': ds().batch(2)}",
        DataError,
        "returned train as a numpy.ndarray, not a tf.data dataset",
    ),
    "unbatched": Row(
        "return {'train': ds()}",
        DataError,
        "the train dataset yields single examples (x of shape (4,), y of shape ()); batch it: dataset.batch(32)",
    ),
    "repeats forever": Row(
        "return {'train': ds().batch(2).repeat()}", DataError, "the train dataset never ends; drop its .repeat()"
    ),
    "dict elements": Row(
        "return {'train': tf.data.Dataset.from_tensor_slices({'x': x, 'y': y}).batch(2)}",
        DataError,
        "the train dataset yields dicts (keys x, y); yield (x, y) batches",
    ),
    "empty": Row("return {'train': ds().batch(2).take(0)}", DataError, "the train dataset yields no batches"),
    "batches of x and y that do not pair": Row(
        "return {'train': tf.data.Dataset.zip((ds().map(lambda a, b: a).batch(3), ds().map(lambda c, d: d).batch(2)))}",
        DataError,
        "a batch of the train dataset has 3 x but y of shape (2,); yield (x, y) batches with one y per x",
    ),
    "string labels": Row(
        "return {'train': ds(y=np.array(['a', 'b'] * 3)).batch(2)}",
        DataError,
        "the train dataset's y are strings; yield class indices 0, 1, 2",
    ),
    "negative labels": Row(
        "return {'train': ds(y=np.arange(6) - 1).batch(2)}",
        DataError,
        "the train dataset has label -1; a classification's datasets yield class indices",
    ),
    "one-hot labels": Row(
        "return {'train': ds(y=np.eye(3)[np.arange(6) % 3]).batch(2)}",
        DataError,
        "the train dataset has y of shape (3,) per example; a classification's datasets yield",
        task="classification",
    ),
    "too few class names": Row(
        "return {'train': ds().batch(2), 'class_names': ['a', 'b']}",
        DataError,
        "a dataset has label 2, but there are 2 class names (a, b); label i is class_names[i]",
    ),
    "class names not a list": Row(
        "return {'train': ds().batch(2), 'class_names': 'abc'}",
        DataError,
        "returned class_names as a str; return a list of names",
    ),
    "val of another shape (datasets)": Row(
        "return {'train': ds().batch(2), 'val': ds(x=x[:, :2]).batch(2)}",
        DataError,
        "the val dataset has examples of shape (2,), train of (4,)",
    ),
    "a pipeline that fails": Row(
        "return {'train': ds().batch(2).map(lambda a, b: (tf.ensure_shape(a, [3, 4]), b))}",
        DataError,
        "reading the train dataset failed (InvalidArgumentError: ",
    ),
    "the function raises": Row(
        "raise FileNotFoundError('data.csv')", ConfigError, "make raised FileNotFoundError: data.csv; fix the function"
    ),
}


@pytest.mark.parametrize("row", list(ERRORS.values()), ids=list(ERRORS))
def test_every_data_function_error_is_one_line_naming_what_to_fix(row, tmp_path):
    (tmp_path / "make.py").write_text(PRELUDE + "\ndef make(seed):\n" + textwrap.indent(row.body, "    ") + "\n")
    with pytest.raises(row.error) as caught:
        load(tmp_path / "make.py", "make", task=row.task)
    assert row.phrase.format(tmp=tmp_path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_data_function_that_needs_an_argument_gradloop_does_not_pass_is_refused(tmp_path):
    (tmp_path / "make.py").write_text("def make(path, seed=0):\n    pass\n")
    with pytest.raises(ConfigError, match=r"make requires path, which gradloop does not pass \(it passes seed\)"):
        load(tmp_path / "make.py", "make")
