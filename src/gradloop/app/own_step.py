"""A model that brings its own training: ``--model FILE.py:FUNC`` returning a compiled Keras model, or one
that overrides ``train_step`` (keras.io's GAN), trains as ``model.fit`` would train it, through
:class:`gradloop.loop.keras_steps.ModelStepTrainer`.

    brings_own_training(model)                     compiled by its function, or its own train_step
    refuse_replaced(config, given)                 --optimizer, --lr, --loss, ... would be ignored: one line
    trainer(config, model, strategy, nan_guard)    Trainer(model, options=..., ...): the model's own steps
    run_monitor(config, trainer, train, val)       what early stopping and run.json's best watch, checked
                                                   against what the run logs (its steps' traces: no step runs)
    model_files(trainer)                           run.json's model_files: model.keras, or weights alone
    parameters(model)                              its weights' count, built by its call or by its step alone

What gradloop's own step and optimizer honour (the options in ``REPLACED``) has no place in such a run:
the model's compile chose its optimizers, losses and metrics.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from gradloop.app.config import TrainConfig, flag_name
from gradloop.errors import ConfigError
from gradloop.loop import release
from gradloop.loop.compiled import CompileOptions
from gradloop.loop.keras_steps import ModelStepTrainer, overrides
from gradloop.loop.trainer import Trainer
from gradloop.run import files as run_files

# Options only gradloop's own step and optimizer read (app/assemble.py's build_optimizer, build_loss,
# build_metrics, class_weights): a model that brings its own training would silently ignore them.
REPLACED = (
    "optimizer",
    "lr",
    "lr_schedule",
    "warmup_steps",
    "decay_steps",
    "decay_rate",
    "clip_norm",
    "accumulate_steps",
    "ema",
    "precision",  # mixed_float16's loss scaling wraps gradloop's optimizer
    "loss",
    "metrics",
    "class_weight",
)
_MAXIMIZED = ("acc", "auc", "precision", "recall", "f1")  # what a --monitor higher is better for


def brings_own_training(model: keras.Model) -> bool:
    """A model its function compiled, or one overriding ``train_step``: it trains with what it brings."""
    return bool(model.compiled) or overrides(model, "train_step")


def explicit_keys(config: TrainConfig, given: Iterable[str] | None = None) -> set[str]:
    """The config keys the user set: ``given`` (the flags and the config file's keys), else those
    that differ from their defaults (a caller that knows no more, such as a sweep)."""
    if given is not None:
        return set(given)
    return {f.name for f in dataclasses.fields(config) if getattr(config, f.name) != f.default}


def refuse_replaced(config: TrainConfig, model: keras.Model, given: Iterable[str] | None) -> None:
    """Refuse in one line the options that would replace what the model brings, rather than ignore them."""
    replaced = [key for key in REPLACED if key in explicit_keys(config, given)]
    if replaced:
        names = ", ".join(flag_name(key) for key in replaced)
        why = "was compiled by its function" if model.compiled else "overrides train_step"
        raise ConfigError(
            f"--model {config.model} {why}, so it trains with its own optimizer, loss and metrics, and {names} "
            f"would be ignored; drop {names} (set them in the model's compile)"
        )


def trainer(
    config: TrainConfig, model: keras.Model, strategy: tf.distribute.Strategy, *, nan_guard: object
) -> ModelStepTrainer:
    """The model's own steps under gradloop's loop; an uncompiled model is refused (Trainer's one line)."""
    return Trainer(
        model,
        # Without --jit, the model's own choice (its compile's jit_compile), as model.fit takes it.
        options=CompileOptions(steps_per_execution=config.steps_per_execution, jit_compile=config.jit_compile or None),
        strategy=strategy,
        nan_guard=nan_guard,
    )


def run_monitor(
    config: TrainConfig, trainer: Trainer, train: tf.data.Dataset, val: tf.data.Dataset | None
) -> str | None:
    """The key (Keras' name) early stopping and the best model watch: ``--monitor``, checked against the
    keys the run logs; for a model's own step, by default val_loss, else its first logged loss.
    None: gradloop's own step without --monitor (val_loss, and run.json's best as it always was)."""
    if isinstance(trainer, ModelStepTrainer):
        return monitor(config, logged_keys(trainer, train, val))
    if config.monitor is None:
        return None
    keys = ["loss", *trainer.metric_names]  # known once check_fits has built the trainer
    return monitor(config, keys + [f"val_{key}" for key in keys] * (val is not None))


def model_files(trainer: Trainer, *, notify: Callable[[str], object]) -> dict:
    """run.json's ``model_files`` (:func:`saved_files`); a model Keras cannot save
    whole is said in one line at the start, since the run will keep its weights alone."""
    whole = serializable(trainer.model) if isinstance(trainer, ModelStepTrainer) else True
    if not whole:
        notify(
            f"gradloop: note: {type(trainer.model).__name__} cannot be saved whole (model.keras would not load: "
            "no get_config for its arguments), so the run keeps its weights and its model file; "
            "gradloop rebuilds it through your function"
        )
    return saved_files(serialized=whole)


def saved_files(*, serialized: bool) -> dict:
    """run.json's ``model_files``: what a finished run keeps of its model. ``model`` is model.keras (None
    when the model cannot be saved whole: evaluate and predict rebuild it from ``model_source`` and
    ``weights``), ``weights`` model.weights.h5 always, ``best`` the best epoch's model or weights."""
    return {
        "model": run_files.MODEL if serialized else None,
        "weights": run_files.WEIGHTS,
        "best": run_files.BEST_MODEL if serialized else run_files.BEST_WEIGHTS,
        "serialized": serialized,
    }


def logged_keys(trainer: ModelStepTrainer, train: tf.data.Dataset, val: tf.data.Dataset | None) -> list[str]:
    """The names the history will hold (Keras' names: ``d_loss``, ``val_d_loss``), from the traces of the
    model's training and test steps; the training one is cached (``build`` made it), so nothing runs twice."""
    keys = _traced_keys(trainer, trainer._train_fn, train)
    if val is None:
        return keys
    try:
        val_keys = _traced_keys(trainer, trainer._test_fn, val)
    except ConfigError:
        raise
    except Exception as exc:  # Keras' default test_step calls the model, which a GAN does not define
        if overrides(trainer.model, "test_step"):
            raise
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ConfigError(
            f"{type(trainer.model).__name__} has no test_step of its own, and Keras' default one cannot validate "
            f"it ({reason}); pass --val-fraction 0, or define test_step"
        ) from None
    return keys + [f"val_{key}" for key in val_keys]


def _traced_keys(trainer: ModelStepTrainer, steps, data) -> list[str]:
    iterator = trainer.make_iterator(data)
    try:
        steps.trace(iterator)
        concrete = steps.run.get_concrete_function(iterator, tf.TensorSpec([], tf.int32))
    finally:
        release.release_iterator(iterator)
    return list(concrete.structured_outputs[1])


def monitor(config: TrainConfig, keys: list[str]) -> str:
    """``--monitor KEY`` when the run logs it; by default val_loss, else the first logged key holding "loss"."""
    if config.monitor is not None:
        if config.monitor not in keys:
            raise ConfigError(
                f"--monitor {config.monitor} is not logged by this run, which logs {', '.join(keys) or 'nothing'}; "
                "name one of those"
            )
        return config.monitor
    if "val_loss" in keys or not keys:
        return "val_loss"
    return next((k for k in keys if "loss" in k and k.startswith("val_")), None) or next(
        (k for k in keys if "loss" in k), keys[0]
    )


def mode(key: str) -> str:
    """``max`` for a key that grows as the model gets better (accuracy, AUC), else ``min``."""
    return "max" if any(word in key for word in _MAXIMIZED) and "loss" not in key else "min"


def serializable(model: keras.Model) -> bool:
    """Whether ``model.keras`` of ``model`` loads again as ``gradloop evaluate --trust-code`` loads it (the
    model's own classes given): Keras' own classes do; a subclass is saved and loaded once to see, since
    Keras' automatic config of its ``__init__``'s arguments can save what does not load back."""
    if type(model).__module__.startswith("keras."):
        return True
    own = {type(model).__name__: type(model)}
    with tempfile.TemporaryDirectory(prefix="gradloop-probe-") as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras' warnings of what it cannot save: the answer says it
        try:
            model.save(Path(folder) / "probe.keras")
            loaded = keras.models.load_model(
                Path(folder) / "probe.keras", custom_objects=own, compile=False, safe_mode=False
            )
        except Exception:  # Keras raises many kinds here (NotImplementedError, TypeError, ValueError, ...)
            return False
    mine, theirs = model.weights, loaded.weights  # a model rebuilt wrongly loads without its weights
    return len(mine) == len(theirs) and all(
        a.shape == b.shape and np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
        for a, b in zip(mine, theirs)
    )


def parameters(model: keras.Model) -> int:
    """``model.count_params()``; a model whose step built its parts but that was never called itself
    (a GAN) counts its weights, which Keras refuses to do for an unbuilt model."""
    if model.built:
        return int(model.count_params())
    return sum(math.prod(v.shape) for v in model.weights)
