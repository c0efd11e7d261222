"""Model builders for the CLI; the library takes any Keras model.

``dtype`` is a Keras dtype policy for the hidden layers (``"mixed_float16"``:
float16 arithmetic, float32 variables); the logits layer then stays float32,
so the softmax and the loss see full-precision numbers.

The model of a run, sized from the data (``--model``: mlp, cnn, or the user's):

    build_model(spec, input_shape=(28, 28), n_outputs=10)               spec: gradloop.app.specs.ModelSpec

The user's own model:

    user_model("model.py:build", input_shape=(28, 28), num_classes=10)   build(...), or
                                                                         keras.models.load_model("m.keras")
    check_model_fits(model, input_shape=(28, 28), n_outputs=10)           refused before training when it does not fit
    copy_model_source("model.py:build", run_dir) -> "model_source.py:build"   the copy a resume builds it from
    labels, outputs = run_over(model, batches)                           a run's model on data: evaluate, predict
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from gradloop import user_code
from gradloop.app.config import MAX_MLP_WEIGHTS, mlp_weights
from gradloop.app.specs import ModelSpec
from gradloop.data.sources import UNLABELED
from gradloop.errors import ConfigError
from gradloop.loop.keras_steps import overrides
from gradloop.run import files as run_files

MODEL_INITIAL = "model_initial.keras"  # the copy of a --model FILE.keras in the run directory
_GIVEN = ("input_shape", "num_classes", "num_outputs")  # what gradloop passes a model function, from the data


def build_mlp(
    input_shape: int | Sequence[int], hidden: Sequence[int], n_classes: int, *, dtype: str | None = None
) -> keras.Model:
    """The tutorial's MLP: Dense+ReLU layers, then ``n_classes`` logits (no softmax:
    the loss takes logits, which is numerically safer). Examples of more than one
    axis (images) are flattened first; ``n_classes`` is the number of outputs of a regression."""
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    inputs = keras.Input(shape=shape, name="pixels" if len(shape) == 1 else "inputs")
    x = inputs if len(shape) == 1 else keras.layers.Flatten(dtype=dtype)(inputs)
    for i, units in enumerate(hidden):
        x = keras.layers.Dense(units, activation="relu", name=f"dense_{i}", dtype=dtype)(x)
    outputs = keras.layers.Dense(n_classes, name="logits", dtype=_logits_dtype(dtype))(x)
    return keras.Model(inputs, outputs, name="mlp")


CNN_MIN_SIZE = 10  # two 3x3 valid convolutions and two 2x2 poolings leave no pixel of a smaller image


def build_cnn(image_shape: Sequence[int], n_classes: int, *, dtype: str | None = None) -> keras.Model:
    """A small CNN for 28x28x1 images: two conv blocks, then ``n_classes`` logits."""
    inputs = keras.Input(shape=tuple(image_shape), name="image")
    x = keras.layers.Conv2D(32, 3, activation="relu", dtype=dtype)(inputs)
    x = keras.layers.MaxPooling2D(dtype=dtype)(x)
    x = keras.layers.Conv2D(64, 3, activation="relu", dtype=dtype)(x)
    x = keras.layers.MaxPooling2D(dtype=dtype)(x)
    x = keras.layers.Flatten(dtype=dtype)(x)
    x = keras.layers.Dense(128, activation="relu", dtype=dtype)(x)
    outputs = keras.layers.Dense(n_classes, name="logits", dtype=_logits_dtype(dtype))(x)
    return keras.Model(inputs, outputs, name="cnn")


def _logits_dtype(dtype: str | None) -> str | None:
    return None if dtype is None else "float32"


def build_model(
    spec: ModelSpec, input_shape: Sequence[int], n_outputs: int, *, task: str = "classification"
) -> keras.Model:
    """The MLP or CNN of ``spec`` sized from the data (examples of ``input_shape``, ``n_outputs``
    logits or values), or the user's model ``spec.name``, refused before training when it does not fit the data."""
    shape, n = tuple(input_shape), n_outputs
    if spec.name == "cnn":
        if len(shape) == 3 and min(shape[:2]) < CNN_MIN_SIZE:
            raise ConfigError(
                f"--model cnn needs images of at least {CNN_MIN_SIZE}x{CNN_MIN_SIZE} pixels, "
                f"but the data's are {shape[0]}x{shape[1]}; pass --image-size or use --model mlp"
            )
        if len(shape) != 3:
            raise ConfigError(
                f"--model cnn takes images (height, width, channels), but the data has examples of "
                f"shape {shape}; use --model mlp or a model of your own"
            )
        return build_cnn(shape, n, dtype=spec.dtype)
    if spec.name == "mlp":
        weights = mlp_weights(spec.hidden, math.prod(shape), n)
        if weights > MAX_MLP_WEIGHTS:
            raise ConfigError(
                f"hidden {','.join(map(str, spec.hidden))} on examples of shape {shape} makes an MLP of "
                f"{weights:,} weights, over the limit of {MAX_MLP_WEIGHTS:,}; use smaller layers"
            )
        return build_mlp(shape, spec.hidden, n, dtype=spec.dtype)
    model_args = None if spec.args is None else dict(spec.args)
    if task == UNLABELED:  # no labels to size outputs from: the model brings its own training
        return user_model(spec.name, input_shape=shape, model_args=model_args)
    classification = task == "classification"
    model = user_model(
        spec.name,
        input_shape=shape,
        num_classes=n if classification else None,
        num_outputs=None if classification else n,
        model_args=model_args,
    )
    if not overrides(model, "train_step"):  # a model's own step takes the batches as it likes (a GAN the images)
        check_model_fits(model, input_shape=shape, n_outputs=n, task=task)
    return model


# --------------------------------------------------------------------- the user's model


def user_model(
    spec: str,
    *,
    input_shape: Sequence[int],
    num_classes: int | None = None,
    num_outputs: int | None = None,
    model_args: dict[str, Any] | None = None,
) -> keras.Model:
    """The model ``spec`` names: a saved ``FILE.keras`` (loaded with ``compile=False``, in Keras'
    safe mode: no Python code from the file runs), or a function ``FILE.py:FUNCTION`` /
    ``package.module:FUNCTION`` called as

        build(input_shape=..., num_classes=... | num_outputs=..., **model_args)

    with only the arguments it declares: ``num_classes`` for a classification, ``num_outputs``
    for a regression, and each ``model_args`` key (which it must declare)."""
    where = f"--model {spec}"
    if str(spec).endswith(".keras"):
        if model_args:
            raise ConfigError(
                f"{where}: model_args are arguments of a model function, and a saved model takes none; drop model_args"
            )
        return _load_keras(Path(spec), where)
    fn = user_code.load_function(spec, what="--model")
    given: dict[str, Any] = {"input_shape": tuple(int(d) for d in input_shape)}
    given.update({k: v for k, v in (("num_classes", num_classes), ("num_outputs", num_outputs)) if v is not None})
    model_args = dict(model_args or {})
    reserved = [key for key in model_args if key in (*_GIVEN, "what")]  # what: call_function's own keyword
    if reserved:
        raise ConfigError(f"model_args sets {reserved[0]}, which gradloop passes itself; remove it from model_args")
    undeclared = [key for key in model_args if key not in user_code.accepted(fn, model_args)]
    if undeclared:
        raise ConfigError(
            f"model_args {undeclared[0]} is no parameter of {spec}; remove it from model_args, "
            "or add the parameter to the function"
        )
    unset = user_code.missing(fn, [*user_code.accepted(fn, given), *model_args])
    if unset:
        raise ConfigError(
            f"{where} requires {', '.join(unset)}, which gradloop does not pass (it passes "
            f"{', '.join(given)}); give it a default value, or a value in model_args"
        )
    model = user_code.call_function(fn, what=where, **given, **model_args)
    if not isinstance(model, keras.Model):
        raise ConfigError(
            f"{where} returned {user_code.describe(model)}, not a keras.Model; return "
            "keras.Model(inputs, outputs) or keras.Sequential([...])"
        )
    return model


def _load_keras(path: Path, where: str) -> keras.Model:
    if not path.is_file():
        state = "is a folder" if path.is_dir() else "does not exist"
        raise ConfigError(f"{where}: {path} {state}; pass a model saved with model.save('FILE.keras')")
    if not zipfile.is_zipfile(path):  # Keras would say "File not found"
        raise ConfigError(
            f"{where}: not a Keras model file (a .keras file is a zip archive); save the model with "
            "model.save('FILE.keras')"
        )
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # a damaged or foreign file: Keras raises many kinds
        if "safe_mode" in str(exc):
            raise ConfigError(
                f"{where}: it holds Python code (a Lambda layer's), which gradloop does not run from a "
                "model file (Keras' safe mode); build the model in FILE.py:FUNCTION instead"
            ) from exc
        raise ConfigError(
            f"{where}: cannot load it ({user_code.exception_line(exc)}); save it again with model.save, "
            "or build the model in FILE.py:FUNCTION"
        ) from exc
    if not isinstance(model, keras.Model):
        raise ConfigError(f"{where} holds {user_code.describe(model)}, not a keras.Model; save a model")
    return model


def check_model_fits(
    model: keras.Model, *, input_shape: Sequence[int], n_outputs: int, task: str | None = None
) -> None:
    """Refuse, before training, a model that does not take the data's examples of ``input_shape``
    (its input shape after the batch dim, None matching any size) or does not give ``n_outputs``
    values per example (an output of shape (batch, n_outputs); (batch,) gives one). A model whose shapes are
    unknown (subclassed, or a Sequential without an Input) is built by calling it on a batch of zeros."""
    shape = tuple(int(d) for d in input_shape)
    wants = {"classification": f"{n_outputs} classes", "regression": f"{n_outputs} targets"}.get(
        task, f"{n_outputs} outputs"
    )
    data = f"the data has examples of shape {shape} and {wants}"
    try:
        inputs, outputs = [tuple(t.shape) for t in model.inputs], [tuple(t.shape) for t in model.outputs]
    except (AttributeError, ValueError):  # not built from an Input: find out by calling it
        try:
            result = model(np.zeros((1, *shape), dtype=np.float32))
        except Exception as exc:
            raise ConfigError(
                f"the model does not take the data: called on a batch of examples of shape {shape}, "
                f"it raised {user_code.exception_line(exc, 200)}; make it take examples of shape {shape} "
                f"and give {wants}"
            ) from exc
        inputs, outputs = [(None, *shape)], [(None, *tuple(t.shape)[1:]) for t in keras.tree.flatten(result)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ConfigError(
            f"the model takes {len(inputs)} inputs and gives {len(outputs)} outputs, but gradloop feeds it "
            "one tensor of examples and trains one output; give it one Input and one output"
        )
    (taken,), (given,) = inputs, outputs
    takes = len(taken) == len(shape) + 1 and all(a is None or a == b for a, b in zip(taken[1:], shape))
    # (batch, n_outputs), or (batch,) for one output: an output of more axes (a Dense on images
    # without a Flatten) would pair with the labels element by element, which trains nothing sensible.
    gives = (len(given) == 2 and given[-1] in (None, n_outputs)) or (len(given) == 1 and n_outputs == 1)
    if takes and gives:
        return
    fixes = ([] if takes else [f"give it keras.Input(shape={shape})"]) + (
        [] if gives else [f"end it in Dense({n_outputs})"]
    )
    raise ConfigError(
        f"the model takes inputs of shape {taken} and gives {given} outputs, but {data}; "
        f"{' and '.join(fixes)} (a model function gets input_shape and num_classes or num_outputs)"
    )


def copy_model_source(spec: str, run_dir: str | os.PathLike) -> str | None:
    """Copy what ``spec`` builds the model from into ``run_dir``, and return the spec (relative to
    ``run_dir``) that builds it from the copy, so that a resume does not depend on the original:

        FILE.py:FUNCTION           -> model_source.py:FUNCTION, with the sibling modules it imports beside it
        FILE.keras                 -> model_initial.keras
        package.module:FUNCTION    -> itself: the package must stay importable (installed) for a resume
        anything else (mlp, cnn)   -> None: nothing to copy

    Sibling modules (``import helpers`` of ``helpers.py`` or a package ``helpers/`` beside the
    file, and theirs in turn) are found by reading the import statements: a module imported by
    a computed name is not copied. Files are copied byte for byte, each whole or not at all."""
    run_dir = Path(run_dir)
    if str(spec).endswith(".keras"):
        user_code.copy_file(Path(spec), run_dir / MODEL_INITIAL, what="--model")
        return MODEL_INITIAL
    if ":" not in str(spec):
        return None
    target, name = user_code.split_spec(spec, what="--model")
    if not target.endswith(".py"):
        return spec
    check_model_source(spec)
    user_code.copy_source(Path(target), run_dir, run_files.MODEL_SOURCE, what="--model")
    return f"{run_files.MODEL_SOURCE}:{name}"


def check_model_source(spec: str) -> None:
    """Refuse, before a run directory is made or replaced, a model file whose copy (with the modules
    beside it that it imports) would mix with the run directory's own files."""
    if str(spec).endswith(".keras") or ":" not in str(spec):
        return
    target, _ = user_code.split_spec(spec, what="--model")
    if not target.endswith(".py"):
        return
    own = {
        run_files.MODEL_SOURCE,
        run_files.CHECKPOINTS,
        run_files.TENSORBOARD,
        run_files.REPORT,
        run_files.SAVED_MODEL,
        run_files.CALLBACKS,
    }
    user_code.check_copyable(Path(target), own=own, where=f"--model {spec}")


def summary_text(model: keras.Model) -> str:
    """Keras' ``model.summary()`` as text: layers, output shapes, parameter counts."""
    parts: list[str] = []
    model.summary(print_fn=lambda text, *args, **kwargs: parts.append(text), line_length=110)
    return "".join(part if part.endswith("\n") else part + "\n" for part in parts)


def run_over(model: keras.Model, batches: Any) -> tuple[np.ndarray | None, np.ndarray]:
    """The model over every batch of ``batches`` (a tf.data.Dataset of ``(x, y)`` or of ``x`` alone), in
    inference mode and in order: the labels (None without them) and the outputs, as numpy. This is how
    evaluate and predict run a run's model.

        for x, y in batches: labels += y; outputs += model(x, training=False)     (compiled)

    Labels and outputs come from one pass: a data function's dataset may give its examples in another
    order each pass. The forward pass is traced once for every batch shape (the last batch is shorter)."""
    import tensorflow as tf

    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    labelled = isinstance(batches.element_spec, tuple)
    labels, outputs = [], []
    for batch in batches:
        x, y = batch if labelled else (batch, None)
        outputs.append(np.asarray(forward(x)))
        if labelled:
            labels.append(y.numpy())
    if not outputs:
        raise ValueError("run_over: the data holds no batches; give it at least one example")
    return (np.concatenate(labels) if labelled else None), np.concatenate(outputs)
