"""The user's own model: ``--model FILE.py:FUNCTION``, ``package.module:FUNCTION`` or ``FILE.keras``
(gradloop.user_code, and gradloop.app.models' user_model, check_model_fits, copy_model_source).

The user files are real files written into tmp_path; every way they can be wrong is a row of
one table, with the typed error and a phrase its one-line message must carry."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from gradloop import user_code
from gradloop.app import models
from gradloop.errors import ConfigError
from gradloop.run import files as run_files

MODEL = """
import keras

def build(input_shape, num_classes, hidden=16):
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(hidden, activation="relu", name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x))

def regression(input_shape, num_outputs):
    inputs = keras.Input(shape=input_shape)
    return keras.Model(inputs, keras.layers.Dense(num_outputs)(inputs))
"""

WITH_HELPER = """
import keras
import blocks

def build(input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    return keras.Model(inputs, blocks.head(num_classes)(blocks.body()(inputs)))
"""

BLOCKS = """
import keras

WIDTH = {width}

def body():
    return keras.layers.Dense(WIDTH, activation="relu", name="body")

def head(n):
    return keras.layers.Dense(n, name="head")
"""


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(textwrap.dedent(text))
    return folder


def dense_units(model: keras.Model) -> dict[str, int]:
    return {layer.name: layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)}


# --------------------------------------------------------------------- loading and calling


def test_a_model_function_gets_input_shape_num_classes_and_its_model_args(tmp_path):
    write(tmp_path, {"model.py": MODEL})
    model = models.user_model(f"{tmp_path}/model.py:build", input_shape=(4, 5), num_classes=3, model_args={"hidden": 7})
    assert tuple(model.inputs[0].shape) == (None, 4, 5)
    assert tuple(model.outputs[0].shape) == (None, 3)
    assert dense_units(model) == {"hidden": 7, "logits": 3}


def test_a_regression_model_function_gets_num_outputs(tmp_path):
    write(tmp_path, {"model.py": MODEL})
    model = models.user_model(f"{tmp_path}/model.py:regression", input_shape=(6,), num_outputs=2)
    assert tuple(model.outputs[0].shape) == (None, 2)


def test_call_function_passes_only_the_arguments_the_function_declares():
    def takes_shape(input_shape, extra=5):
        return input_shape, extra

    def takes_everything(**kwargs):
        return kwargs

    def takes_them_positionally_only(input_shape, /):
        return input_shape

    assert user_code.call_function(takes_shape, what="f", input_shape=(3,), num_classes=2) == ((3,), 5)
    assert user_code.call_function(takes_everything, what="f", input_shape=(3,), num_classes=2) == {
        "input_shape": (3,),
        "num_classes": 2,
    }
    with pytest.raises(ConfigError, match="f requires input_shape, which gradloop does not pass"):
        user_code.call_function(takes_them_positionally_only, what="f", input_shape=(3,))


def test_a_model_file_imports_its_sibling_module_and_leaves_sys_path_and_modules_as_they_were(tmp_path):
    write(tmp_path, {"model.py": WITH_HELPER, "blocks.py": BLOCKS.format(width=8)})
    path_before = list(sys.path)
    model = models.user_model(f"{tmp_path}/model.py:build", input_shape=(4,), num_classes=3)
    assert dense_units(model) == {"body": 8, "head": 3}
    assert sys.path == path_before
    assert "blocks" not in sys.modules


def test_two_files_with_sibling_modules_of_one_name_each_get_their_own(tmp_path):
    write(tmp_path / "a", {"model.py": WITH_HELPER, "blocks.py": BLOCKS.format(width=8)})
    write(tmp_path / "b", {"model.py": WITH_HELPER, "blocks.py": BLOCKS.format(width=5)})
    a = models.user_model(f"{tmp_path}/a/model.py:build", input_shape=(4,), num_classes=3)
    b = models.user_model(f"{tmp_path}/b/model.py:build", input_shape=(4,), num_classes=3)
    assert (dense_units(a)["body"], dense_units(b)["body"]) == (8, 5)


def test_a_package_module_function_is_imported_by_name(tmp_path, monkeypatch):
    write(tmp_path, {"mymodels/__init__.py": "", "mymodels/small.py": MODEL})
    monkeypatch.syspath_prepend(str(tmp_path))
    model = models.user_model("mymodels.small:build", input_shape=(4,), num_classes=2)
    assert dense_units(model) == {"hidden": 16, "logits": 2}
    assert user_code.source_path("mymodels.small:build", what="--model") == tmp_path / "mymodels" / "small.py"
    for name in [m for m in sys.modules if m.split(".")[0] == "mymodels"]:  # monkeypatch restores sys.path only
        del sys.modules[name]


def test_a_subclassed_model_class_named_as_the_function_is_built_from_its_arguments(tmp_path):
    write(
        tmp_path,
        {
            "model.py": """
        import keras

        class Classifier(keras.Model):
            def __init__(self, num_classes, width=4):
                super().__init__()
                self.hidden, self.logits = keras.layers.Dense(width), keras.layers.Dense(num_classes)

            def call(self, x):
                return self.logits(self.hidden(x))
        """
        },
    )
    model = models.user_model(
        f"{tmp_path}/model.py:Classifier", input_shape=(6,), num_classes=3, model_args={"width": 9}
    )
    models.check_model_fits(model, input_shape=(6,), n_outputs=3)  # builds it: its shapes were unknown
    assert (model.hidden.units, model.logits.units) == (9, 3)


def test_a_saved_keras_file_is_loaded_without_compiling(tmp_path):
    saved = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    saved.compile(optimizer="sgd", loss="mse")
    saved.save(tmp_path / "m.keras")
    model = models.user_model(str(tmp_path / "m.keras"), input_shape=(4,), num_classes=3)
    assert not model.compiled
    np.testing.assert_array_equal(model.get_weights()[0], saved.get_weights()[0])


# --------------------------------------------------------------------- every error, one line


def lambda_model(path: Path) -> None:
    keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2), keras.layers.Dense(3)]).save(path)


@dataclass
class Row:
    """Files written into tmp_path, the spec (``{tmp}``: tmp_path) and ``user_model``'s keyword
    arguments -> a phrase (``{tmp}`` too) of the ConfigError's one line."""

    spec: str
    phrase: str
    files: dict[str, str | bytes | Callable[[Path], None]] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)


ERRORS = {
    "no such file": Row(
        "{tmp}/nope.py:build", "--model {tmp}/nope.py:build: {tmp}/nope.py does not exist; pass the path"
    ),
    "a folder named .py": Row("{tmp}/dir.py:build", "dir.py is a folder", {"dir.py/x.txt": ""}),
    "neither file nor module": Row("{tmp}/model.txt:build", "expected FILE.py:FUNCTION or package.module:FUNCTION"),
    "no function name": Row(
        "{tmp}/model.py", "expected FILE.py:FUNCTION or package.module:FUNCTION", {"model.py": MODEL}
    ),
    "syntax error": Row(
        "{tmp}/broken.py:build", "{tmp}/broken.py line 3: SyntaxError: ", {"broken.py": "import keras\n\ndef build(:\n"}
    ),
    "syntax error in its helper": Row(
        "{tmp}/model.py:build",
        "{tmp}/blocks.py line 1: SyntaxError: ",
        {"model.py": WITH_HELPER, "blocks.py": "def body(\n"},
    ),
    "indentation error": Row(
        "{tmp}/broken.py:build", "broken.py line 2: IndentationError: ", {"broken.py": "if True:\nx = 1\n"}
    ),
    "raises on import": Row(
        "{tmp}/model.py:build",
        "model.py:build does not import: RuntimeError: no GPU here; fix the file",
        {"model.py": "raise RuntimeError('no GPU here')\n"},
    ),
    "imports a missing module": Row(
        "{tmp}/model.py:build",
        "does not import: ModuleNotFoundError: No module named 'not_installed_xyz'; install it, "
        "or put it beside the file",
        {"model.py": "import not_installed_xyz\n"},
    ),
    "a script that exits on import": Row(
        "{tmp}/train.py:build",
        "the file exits when imported (sys.exit(2)); put its script part",
        {"train.py": "import sys\nsys.exit(2)\n"},
    ),
    "no such function": Row(
        "{tmp}/model.py:biuld", "{tmp}/model.py has no biuld; it defines build, regression", {"model.py": MODEL}
    ),
    "not callable": Row(
        "{tmp}/model.py:build", "build is an int, not a function; name a function", {"model.py": "build = 3\n"}
    ),
    "no such module": Row(
        "no_such_pkg_xyz.models:build", "no module named no_such_pkg_xyz; install it, add its folder to PYTHONPATH"
    ),
    "the function raises": Row(
        "{tmp}/model.py:build",
        "--model {tmp}/model.py:build raised ValueError: width must be even; fix the function",
        {"model.py": "def build(input_shape):\n    raise ValueError('width must be\\n even')\n"},
    ),
    "returns a list": Row(
        "{tmp}/model.py:build",
        "returned a list of 2 items, not a keras.Model; return keras.Model(",
        {"model.py": "def build(input_shape):\n    return [1, 2]\n"},
    ),
    "returns nothing": Row(
        "{tmp}/model.py:build", "returned None, not a keras.Model", {"model.py": "def build(input_shape):\n    pass\n"}
    ),
    "returns a layer": Row(
        "{tmp}/model.py:build",
        "returned a keras.Dense, not a keras.Model",
        {"model.py": "import keras\ndef build():\n    return keras.layers.Dense(3)\n"},
    ),
    "model_args it does not declare": Row(
        "{tmp}/model.py:build",
        "model_args depth is no parameter of {tmp}/model.py:build",
        {"model.py": MODEL},
        {"model_args": {"depth": 3}},
    ),
    "model_args setting what gradloop passes": Row(
        "{tmp}/model.py:build",
        "model_args sets input_shape, which gradloop passes itself",
        {"model.py": MODEL},
        {"model_args": {"input_shape": (9,)}},
    ),
    "a required argument gradloop does not pass": Row(
        "{tmp}/model.py:build",
        "requires width, which gradloop does not pass (it passes input_shape, num_classes); give it a "
        "default value, or a value in model_args",
        {"model.py": "def build(input_shape, width):\n    pass\n"},
    ),
    "num_classes in a regression": Row(
        "{tmp}/model.py:build",
        "requires num_classes, which gradloop does not pass (it passes input_shape, num_outputs)",
        {"model.py": MODEL},
        {"num_classes": None, "num_outputs": 1},
    ),
    "no such .keras file": Row(
        "{tmp}/gone.keras", "{tmp}/gone.keras does not exist; pass a model saved with model.save"
    ),
    "a .keras file that is no zip": Row(
        "{tmp}/bad.keras", "not a Keras model file (a .keras file is a zip archive)", {"bad.keras": b"\x89HDF\r\n"}
    ),
    "a damaged .keras zip": Row("{tmp}/bad.keras", "cannot load it (", {"bad.keras": b"PK\x05\x06" + bytes(18)}),
    "a .keras file with a Lambda": Row(
        "{tmp}/lam.keras",
        "it holds Python code (a Lambda layer's), which gradloop does not run",
        {"lam.keras": lambda_model},
    ),
    "model_args for a .keras file": Row(
        "{tmp}/m.keras",
        "model_args are arguments of a model function, and a saved model takes none",
        {},
        {"model_args": {"hidden": 3}},
    ),
}


@pytest.mark.parametrize("row", list(ERRORS.values()), ids=list(ERRORS))
def test_every_user_model_error_is_one_line_naming_what_to_fix(row, tmp_path):
    for name, content in row.files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(tmp_path / name)
        elif isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
        else:
            (tmp_path / name).write_text(content)
    kwargs = {"input_shape": (4,), "num_classes": 3, **row.kwargs}
    path_before = list(sys.path)
    with pytest.raises(ConfigError) as caught:
        models.user_model(row.spec.format(tmp=tmp_path), **kwargs)
    message = str(caught.value)
    assert row.phrase.format(tmp=tmp_path) in message
    assert "\n" not in message
    assert sys.path == path_before


# --------------------------------------------------------------------- does the model fit the data?


class Subclassed(keras.Model):
    def __init__(self, n):
        super().__init__()
        self.dense = keras.layers.Dense(n)

    def call(self, x):
        return self.dense(x)


def functional(input_shape, n):
    inputs = keras.Input(shape=input_shape)
    return keras.Model(inputs, keras.layers.Dense(n)(keras.layers.Flatten()(inputs)))


FITS = {
    "functional": (lambda: functional((4,), 3), (4,), 3),
    "None dims match any size": (
        lambda: keras.Sequential(
            [keras.Input((None, 3)), keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(2)]
        ),
        (7, 3),
        2,
    ),
    "subclassed, built by a call": (lambda: Subclassed(3), (4,), 3),
    "Sequential without an Input": (lambda: keras.Sequential([keras.layers.Dense(3)]), (4,), 3),
    "one value per example for one target": (
        lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(1), keras.layers.Reshape(())]),
        (4,),
        1,
    ),
}


@pytest.mark.parametrize("make, shape, n", list(FITS.values()), ids=list(FITS))
def test_check_model_fits_accepts_models_that_take_the_examples_and_give_n_outputs(make, shape, n):
    models.check_model_fits(make(), input_shape=shape, n_outputs=n)


MISFITS = {
    "input shape": (
        lambda: functional((20,), 3),
        (4,),
        3,
        "the model takes inputs of shape (None, 20) and gives (None, 3) outputs, but the data has examples of "
        "shape (4,) and 3 classes; give it keras.Input(shape=(4,))",
    ),
    "input rank": (
        lambda: functional((28, 28, 1), 10),
        (28, 28),
        10,
        "inputs of shape (None, 28, 28, 1) and gives (None, 10) outputs, but the data has examples of shape (28, 28)",
    ),
    "outputs": (
        lambda: functional((4,), 5),
        (4,),
        3,
        "gives (None, 5) outputs, but the data has examples of shape (4,) and 3 classes; end it in Dense(3)",
    ),
    "both": (lambda: functional((2,), 5), (4,), 3, "give it keras.Input(shape=(4,)) and end it in Dense(3)"),
    "subclassed outputs": (
        lambda: Subclassed(5),
        (4,),
        3,
        "the model takes inputs of shape (None, 4) and gives (None, 5) outputs, but the data has "
        "examples of shape (4,) and 3 classes; end it in Dense(3)",
    ),
    "subclassed input": (
        lambda: keras.Sequential([keras.layers.Conv2D(2, 3)]),
        (4,),
        3,
        "the model does not take the data: called on a batch of examples of shape (4,), it raised ValueError: ",
    ),
    "two outputs": (
        lambda: keras.Model(i := keras.Input((4,)), [keras.layers.Dense(3)(i), keras.layers.Dense(3)(i)]),
        (4,),
        3,
        "the model takes 1 inputs and gives 2 outputs, but gradloop feeds it one tensor",
    ),
}


@pytest.mark.parametrize("make, shape, n, phrase", list(MISFITS.values()), ids=list(MISFITS))
def test_check_model_fits_refuses_a_model_that_does_not_fit_giving_both_shapes(make, shape, n, phrase):
    with pytest.raises(ConfigError) as caught:
        models.check_model_fits(make(), input_shape=shape, n_outputs=n, task="classification")
    assert phrase in str(caught.value)
    assert "\n" not in str(caught.value)


def test_check_model_fits_names_targets_for_a_regression_and_outputs_without_a_task():
    with pytest.raises(ConfigError, match=r"and 2 targets; end it in Dense\(2\)"):
        models.check_model_fits(functional((4,), 1), input_shape=(4,), n_outputs=2, task="regression")
    with pytest.raises(ConfigError, match="and 2 outputs;"):
        models.check_model_fits(functional((4,), 1), input_shape=(4,), n_outputs=2)


def test_a_user_model_that_does_not_fit_the_data_is_refused_before_training(tmp_path):
    write(
        tmp_path,
        {
            "model.py": """
        import keras

        def build(num_classes):  # ignores input_shape: made for 784 pixels
            inputs = keras.Input(shape=(784,))
            return keras.Model(inputs, keras.layers.Dense(num_classes)(inputs))
        """
        },
    )
    model = models.user_model(f"{tmp_path}/model.py:build", input_shape=(28, 28), num_classes=10)
    with pytest.raises(
        ConfigError, match=r"takes inputs of shape \(None, 784\) .* examples of shape \(28, 28\) and 10"
    ):
        models.check_model_fits(model, input_shape=(28, 28), n_outputs=10, task="classification")


# --------------------------------------------------------------------- the run directory's copy


def test_copy_model_source_copies_the_file_and_its_helpers_and_builds_from_the_copy_alone(tmp_path):
    source, run = (
        write(tmp_path / "src", {"model.py": WITH_HELPER, "blocks.py": BLOCKS.format(width=6)}),
        tmp_path / "run",
    )
    run.mkdir()
    spec = models.copy_model_source(f"{source}/model.py:build", run)
    assert spec == f"{run_files.MODEL_SOURCE}:build"
    assert (run / run_files.MODEL_SOURCE).read_text() == (source / "model.py").read_text()
    assert sorted(p.name for p in run.iterdir()) == ["blocks.py", "model_source.py"]  # no temporary file left
    for file in source.iterdir():
        file.unlink()
    model = models.user_model(f"{run}/{spec}", input_shape=(4,), num_classes=3)
    assert dense_units(model) == {"body": 6, "head": 3}


def test_copy_model_source_copies_a_sibling_package_and_what_its_helpers_import(tmp_path):
    source, run = tmp_path / "src", tmp_path / "run"
    write(
        source,
        {
            "model.py": (
                "import keras\nfrom parts.layers import head\n\n"
                "def build(num_classes):\n    return keras.Sequential([head(num_classes)])\n"
            ),
            "parts/__init__.py": "",
            "parts/layers.py": (
                "import sizes\nimport keras\n\ndef head(n):\n    return keras.layers.Dense(n * sizes.ONE)\n"
            ),
            "sizes.py": "ONE = 1\n",
            "unrelated.py": "raise SystemExit('never imported')\n",
        },
    )
    run.mkdir()
    spec = models.copy_model_source(f"{source}/model.py:build", run)
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*.py")) == [
        "model_source.py",
        "parts/__init__.py",
        "parts/layers.py",
        "sizes.py",
    ]
    for file in sorted(source.rglob("*.py"), reverse=True):
        file.unlink()
    model = models.user_model(f"{run}/{spec}", input_shape=(4,), num_classes=3)
    models.check_model_fits(model, input_shape=(4,), n_outputs=3)


def test_copy_model_source_copies_a_keras_file_which_then_loads_without_the_original(tmp_path):
    saved = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    saved.save(tmp_path / "initial.keras")
    run = tmp_path / "run"
    run.mkdir()
    spec = models.copy_model_source(str(tmp_path / "initial.keras"), run)
    assert spec == models.MODEL_INITIAL and sorted(p.name for p in run.iterdir()) == [models.MODEL_INITIAL]
    (tmp_path / "initial.keras").unlink()
    model = models.user_model(str(run / spec), input_shape=(4,), num_classes=3)
    np.testing.assert_array_equal(model.get_weights()[0], saved.get_weights()[0])


def test_copy_model_source_keeps_a_package_spec_and_copies_nothing_for_a_built_in_model(tmp_path):
    assert models.copy_model_source("mymodels.small:build", tmp_path) == "mymodels.small:build"
    assert models.copy_model_source("mlp", tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_copy_model_source_refuses_a_helper_named_like_the_run_directorys_own_files(tmp_path):
    source = write(tmp_path / "src", {"model.py": "import checkpoints\n", "checkpoints/__init__.py": ""})
    with pytest.raises(ConfigError, match="it imports checkpoints from its folder, whose copy would mix with the run"):
        models.copy_model_source(f"{source}/model.py:build", tmp_path)
