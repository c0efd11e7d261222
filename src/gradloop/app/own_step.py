"""A model that brings its own training: ``--model FILE.py:FUNC`` returning a compiled Keras model, or one
that overrides ``train_step`` (keras.io's GAN), trains as ``model.fit`` would train it, through
:class:`gradloop.loop.keras_steps.ModelStepTrainer`.

    brings_own_training(model)                     compiled by its function, or its own train_step
    refuse_replaced(config, given)                 --optimizer, --lr, --loss, ... would be ignored: one line
    trainer(config, model, strategy, nan_guard)    Trainer(model, options=..., ...): the model's own steps
    logged_keys(trainer, train, val)               the names its steps log, from their traces (no step runs)
    monitor(config, keys)                          what early stopping and run.json's best watch
    serializable(model)                            whether model.keras of it loads again
    parameters(model)                              its weights' count, built by its call or by its step alone

What gradloop's own step and optimizer honour (the options in ``REPLACED``) has no place in such a run:
the model's compile chose its optimizers, losses and metrics.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import keras
import tensorflow as tf

from gradloop.app.config import TrainConfig, flag_name
from gradloop.errors import ConfigError
from gradloop.loop import release
from gradloop.loop.compiled import CompileOptions
from gradloop.loop.keras_steps import ModelStepTrainer, overrides
from gradloop.loop.trainer import Trainer

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


def logged_keys(trainer: ModelStepTrainer, train: tf.data.Dataset, val: tf.data.Dataset | None) -> list[str]:
    """The names the history will hold (Keras' names: ``d_loss``, ``val_d_loss``), from the traces of the
    model's training and test steps; the training one is cached (``build`` made it), so nothing runs twice."""
    keys = _traced_keys(trainer, trainer._train_fn, train)
    if val is not None:
        keys += [f"val_{key}" for key in _traced_keys(trainer, trainer._test_fn, val)]
    return keys


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
    """Whether ``model.keras`` of ``model`` would load again: Keras' own classes do; a subclass only when
    its config rebuilds it (a ``get_config`` for its ``__init__``'s arguments, its class findable)."""
    if type(model).__module__.startswith("keras."):
        return True
    try:
        keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    except Exception:  # Keras raises many kinds here (NotImplementedError, TypeError, ValueError, ...)
        return False
    return True


def parameters(model: keras.Model) -> int:
    """``model.count_params()``; a model whose step built its parts but that was never called itself
    (a GAN) counts its weights, which Keras refuses to do for an unbuilt model."""
    if model.built:
        return int(model.count_params())
    return sum(math.prod(v.shape) for v in model.weights)
