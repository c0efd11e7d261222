"""A run's model, loaded for evaluate, predict, report and export: one loader for every kind of run.

    load_model(RUN_DIR)                  model.keras (Keras' safe mode: no code from the run runs), or,
                                         for a model that does not serialize (run.json ``model_files.serialized``
                                         false), FUNCTION of model_source.py + model.weights.h5 (trusted runs)
    trained_input_shape(RUN_DIR, info)   what a rebuilt model is built for: run.json's input_shape, else the data's
    brings_own_steps(model, info)        a model with its own train/test/predict step, or data without labels
    compiled(model, ...)                 compiled as its user compiled it, for its own steps to run

Code from a run (model_source.py, a model's custom classes or Lambda layers) runs only with
``--trust-code`` (:data:`gradloop.run.schema.TRUST_CODE`).
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gradloop import user_code
from gradloop.data.sources import UNLABELED
from gradloop.errors import RunDirError
from gradloop.run import files as run_files
from gradloop.run import folder as run_folder
from gradloop.run import schema as run_schema

if TYPE_CHECKING:
    import keras

_NEEDS_CODE = re.compile(r"Could not (?:locate|deserialize) (?:class|function) '([^']+)'")


def load_model(
    run_dir: str | Path, *, trust_code: bool = False, input_shape: tuple[int, ...] | None = None
) -> keras.Model:
    """The run's model: RUN_DIR/model.keras, or, for a run whose model does not serialize (run.json
    ``model_files.serialized`` false: a subclassed model without get_config), the model rebuilt through the
    run's own function (model_source.py:FUNCTION, called as training called it, on examples of
    ``input_shape``) with RUN_DIR/model.weights.h5 loaded into it.

    model.keras loads in Keras' safe mode with Keras' own classes only: no code from the run runs.
    A model that needs its own (a Lambda layer's, a custom layer of model_source.py), and every
    rebuild, is refused unless ``trust_code``: then the run's model_source.py (or package.module)
    is imported for its classes and functions, and Lambda layers are allowed."""
    run = run_folder.RunDir.open(run_dir)
    if not serialized(run.info, run_dir):
        return _rebuilt(run_dir, run.info, trust_code=trust_code, input_shape=input_shape)
    path = run_files.own_path(run_dir, run_files.MODEL)
    if not path.exists():
        raise RunDirError(f"{run_dir} has no model.keras; the run did not finish (train it again or resume it)")
    import keras

    custom = run_code_objects(run_dir) if trust_code else None
    try:
        return keras.models.load_model(path, compile=False, safe_mode=not trust_code, custom_objects=custom)
    except Exception as exc:  # Keras raises many types for a damaged archive
        needs = "a Lambda layer's Python code" if "safe_mode" in str(exc) else None
        if (match := _NEEDS_CODE.search(str(exc))) is not None:
            needs = f"{match[1]}, which Keras does not have"
        if needs is None:
            raise RunDirError(f"cannot load {path}: {type(exc).__name__}; the file is damaged") from None
        if trust_code:
            raise RunDirError(
                f"cannot load {path}: it needs {needs}, and the run's own code does not define it; "
                "the run directory is incomplete"
            ) from None
        raise RunDirError(
            f"{path} needs {needs}: code from the run directory, which gradloop runs only if you "
            f"trust where the run came from; then pass {run_schema.TRUST_CODE}"
        ) from None


def serialized(info: dict[str, Any], run_dir: str | Path) -> bool:
    """Whether the run keeps its model as model.keras: run.json's ``model_files.serialized`` says so; a run
    that does not say is read from its files (model.weights.h5 without model.keras, and a function to
    rebuild from: the model did not serialize)."""
    recorded = info.get("model_files")
    if isinstance(recorded, dict) and isinstance(recorded.get("serialized"), bool):
        return recorded["serialized"]
    if run_files.own_path(run_dir, run_files.MODEL).exists():
        return True
    source = info.get("model_source")
    rebuildable = isinstance(source, str) and ":" in source
    return not (rebuildable and run_files.own_path(run_dir, run_files.WEIGHTS).exists())


def _rebuilt(
    run_dir: str | Path, info: dict[str, Any], *, trust_code: bool, input_shape: tuple[int, ...] | None
) -> keras.Model:
    """The model built again through the run's function, then its weights from model.weights.h5:

    model = FUNCTION(input_shape=..., num_classes=... | num_outputs=..., **model_args)
    model.load_weights(RUN_DIR/model.weights.h5)"""
    source = info.get("model_source")
    if not isinstance(source, str) or ":" not in source:
        raise RunDirError(
            f"{run_dir} keeps its model as weights alone, and run.json names no function to build it "
            "with; the run directory is damaged"
        )
    if not trust_code:
        raise RunDirError(
            f"{run_dir}'s model did not serialize: it is rebuilt through its function {source}, code from the "
            f"run directory, which gradloop runs only if you trust where the run came from; then pass "
            f"{run_schema.TRUST_CODE}"
        )
    weights = run_files.own_path(run_dir, run_files.WEIGHTS)
    if not weights.exists():
        raise RunDirError(f"{run_dir} has no {run_files.WEIGHTS}; the run did not finish (train it again or resume it)")
    shape = input_shape or info.get("input_shape")
    if not shape:
        raise RunDirError(
            f"{run_dir}'s model is rebuilt from its function, and run.json records no input shape to build it "
            "for; evaluate or predict it on data (which gives the shape)"
        )
    from gradloop.app import models

    target, _, name = source.rpartition(":")
    spec = (
        f"{run_files.own_path(run_dir, run_files.MODEL_SOURCE)}:{name}" if target == run_files.MODEL_SOURCE else source
    )
    config = (info.get("config") or {}) if isinstance(info.get("config"), dict) else {}
    task, n = info.get("task"), info.get("n_classes") or info.get("n_outputs")
    model = models.user_model(
        spec,
        input_shape=tuple(shape),
        num_classes=n if task == "classification" else None,
        num_outputs=n if task == "regression" else None,
        model_args=config.get("model_args"),
    )
    if not model.built:  # a subclassed model makes its variables on its first call; a GAN has no call()
        try:
            model(np.zeros((1, *shape), dtype=np.float32), training=False)
        except NotImplementedError:
            model.built = True  # a GAN's own variables are its parts', built by their Inputs: as train saved them
    try:
        with warnings.catch_warnings():  # the optimizers' state rides along in the file: inference needs none of it
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(weights)
    except Exception as exc:  # Keras raises many types for weights of another model or a damaged file
        raise RunDirError(
            f"cannot load {weights} into the model {source} builds for examples of shape {tuple(shape)} "
            f"({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); the run directory is damaged or the code changed"
        ) from None
    return model


def trained_input_shape(run_dir: str | Path, info: dict[str, Any]) -> tuple[int, ...]:
    """The shape of one example the run trained on, to rebuild its model for: run.json's ``input_shape``,
    else its own training data's, read as it was (as evaluate reads it)."""
    if info.get("input_shape"):
        return tuple(int(d) for d in info["input_shape"])
    from gradloop.commands import evaluate

    config = evaluate.run_config(info, run_dir)
    examples, _, _ = evaluate.own_data(config, info, run_dir, data_path=None, split="train", notify=lambda line: None)
    return tuple(examples.element_shape)


def run_code_objects(run_dir: str | Path) -> dict[str, Any]:
    """The classes and functions of the module the run's model came from (run.json's model_source:
    the run's copy model_source.py, or an installed package.module), by name: Keras finds a model's
    own layers among them. Importing it runs it: only with ``--trust-code``."""
    source = run_folder.RunDir.open(run_dir).info.get("model_source")
    if not isinstance(source, str) or ":" not in source:
        return {}
    target, _, name = source.rpartition(":")
    if target == run_files.MODEL_SOURCE:
        source = f"{run_files.own_path(run_dir, run_files.MODEL_SOURCE)}:{name}"
    fn = user_code.load_function(source, what=f"{Path(run_dir) / run_files.RUN_JSON}'s model_source")
    module = sys.modules.get(getattr(fn, "__module__", ""), None)
    return {k: v for k, v in vars(module).items() if callable(v) and not k.startswith("_")} if module else {}


def brings_own_steps(model: keras.Model, info: dict[str, Any]) -> bool:
    """Whether the run's model trained with its own steps (a GAN's ``train_step``, or on data without
    labels, task "none"): then evaluate runs its ``test_step`` and predict its ``predict_step``."""
    from gradloop.loop import keras_steps

    own = any(keras_steps.overrides(model, step) for step in ("train_step", "test_step", "predict_step"))
    return own or info.get("task") == UNLABELED


def compiled(
    model: keras.Model,
    run_dir: str | Path,
    info: dict[str, Any],
    *,
    trust_code: bool,
    input_shape: tuple[int, ...] | None = None,
) -> keras.Model:
    """The model compiled as its user compiled it (a step reads its losses, metrics and optimizers): a
    model.keras loads uncompiled, so it is rebuilt through the run's function (for examples of
    ``input_shape``, by default :func:`trained_input_shape`'s) when it has one and the run is trusted;
    otherwise compiled with Keras' defaults (a step that needs its own compile then fails in one line,
    naming the step)."""
    import keras

    if model.compiled and model.optimizer is not None:
        return model
    source = info.get("model_source")
    if (
        trust_code
        and isinstance(source, str)
        and ":" in source
        and run_files.own_path(run_dir, run_files.WEIGHTS).exists()
    ):
        shape = input_shape or trained_input_shape(run_dir, info)
        return _rebuilt(run_dir, info, trust_code=trust_code, input_shape=shape)
    keras.Model.compile(model)
    return model
