"""From a :class:`~gradloop.config.TrainConfig` to what a run trains with: data, strategy,
model, optimizer, trainer.

This is the application side: the library (:mod:`gradloop.trainer` and the
modules it uses) takes these objects and knows no config, flag or file.

    load_splits / prepare_data   the run's splits, scaled              (gradloop.data)
    make_strategy                --strategy, and TF_CONFIG for multi_worker
    build_model                  the MLP or CNN, sized from the data   (gradloop.models)
    build_optimizer              Adam with schedule, clipping, accumulation, loss scaling
    build_trainer                all of it in the strategy's scope     (gradloop.trainer)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from gradloop import data, distribute, models, schedules
from gradloop.compiled import CompileOptions
from gradloop.config import LR_SCHEDULES, STRATEGIES, TrainConfig
from gradloop.errors import ConfigError, DataError
from gradloop.step import StepFn
from gradloop.trainer import Trainer

# --------------------------------------------------------------------- data


def load_splits(config: TrainConfig, *, notify: Callable[[str], object]) -> data.Splits:
    """The run's train, validation and test splits, classes selected: the one place they are
    computed, for training and for ``evaluate`` and ``report`` alike."""
    raw = data.load_dataset(config.dataset, config.data_dir, notify=notify)
    return data.run_splits(raw, classes=config.classes, val_fraction=config.val_fraction, seed=config.seed)


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays field by field is ambiguous
class PreparedData:
    """The arrays a run trains and validates on, after class selection and scaling."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    source: str
    classes: tuple[int, ...]


def prepare_data(config: TrainConfig, *, notify: Callable[[str], object]) -> PreparedData:
    """Load the source, keep the chosen classes (remapped to 0..k-1), split, scale."""
    splits = load_splits(config, notify=notify)
    if splits.train is None:
        raise DataError(f"{splits.source} has no training split; point --data-dir at a folder with the train-* files")
    flatten = config.model == "mlp"
    train, val = ((data.prepare_images(x, flatten=flatten), y) for x, y in (splits.train, splits.val))
    if config.batch_size > len(train[0]):
        raise ConfigError(
            f"batch_size {config.batch_size} is larger than the {len(train[0]):,} training samples; lower --batch-size"
        )
    return PreparedData(train=train, val=val, source=splits.source, classes=config.classes)


# --------------------------------------------------------------------- strategy


def make_strategy(config: TrainConfig, *, timeout_seconds: float = 300.0) -> tf.distribute.Strategy:
    """``default`` (one device), ``mirrored`` (all local GPUs, or ``replicas``
    logical CPUs) or ``multi_worker`` (configured by TF_CONFIG, as every TF job is).
    A multi-worker strategy must exist before any other TensorFlow work."""
    name = config.strategy
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        distribute.configure_cpu_replicas(config.replicas)
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [
            d.name for d in tf.config.list_logical_devices("CPU")
        ]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        if tf_config() is None:
            raise ConfigError("--strategy multi_worker needs TF_CONFIG (or use gradloop launch --workers N -- train ...)")
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING,
            timeout_seconds=timeout_seconds,  # a lost worker fails the collective instead of hanging it
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")


def tf_config() -> dict[str, Any] | None:
    """The parsed TF_CONFIG, checked for the fields a worker needs."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return None
    try:
        config = json.loads(text)
        workers = config["cluster"]["worker"]
        task = config["task"]
        index = int(task["index"])
    except (ValueError, KeyError, TypeError):
        raise ConfigError(
            'TF_CONFIG is not valid: expected {"cluster": {"worker": ["host:port", ...]}, '
            '"task": {"type": "worker", "index": 0}}'
        ) from None
    if task.get("type") == "worker" and not 0 <= index < len(workers):
        raise ConfigError(f"TF_CONFIG task index {index} is outside the {len(workers)} workers of the cluster")
    return config


# --------------------------------------------------------------------- model, optimizer, trainer


def build_model(config: TrainConfig, input_shape: tuple[int, ...]) -> keras.Model:
    n_classes = len(config.classes)
    if config.model == "cnn":
        return models.build_cnn(input_shape, n_classes, dtype=config.precision)
    return models.build_mlp(input_shape[0], config.hidden, n_classes, dtype=config.precision)


def learning_rate(
    name: str,
    lr: float,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    decay_steps: int | None = None,
    decay_rate: float = 0.9,
    steps_per_epoch: int = 1,
) -> keras.optimizers.schedules.LearningRateSchedule | float:
    """The optimizer's ``learning_rate`` for schedule ``name`` (see :mod:`gradloop.schedules`).

    ``decay_steps`` defaults to the steps after warm-up for ``cosine`` (decay to
    0 by the end of training) and to one epoch for ``exponential`` and ``step``.
    ``constant`` without warm-up is a plain float, so callbacks such as
    ``LearningRateScheduler`` can still set it.
    """
    if name not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {name!r}")
    keras_schedules = keras.optimizers.schedules
    if name == "constant":
        schedule = lr
    elif name == "cosine":
        schedule = keras_schedules.CosineDecay(lr, decay_steps=decay_steps or max(total_steps - warmup_steps, 1))
    else:
        schedule = keras_schedules.ExponentialDecay(
            lr, decay_steps=decay_steps or steps_per_epoch, decay_rate=decay_rate, staircase=name == "step"
        )
    return schedules.LinearWarmUp(schedule, warmup_steps) if warmup_steps else schedule


def build_optimizer(config: TrainConfig, *, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Adam, configured the Keras way, so every option runs inside ``optimizer.apply_gradients``,
    the one call the step makes to update (and around the fused Adam kernel, which
    replaces only the per-variable arithmetic):

        loss-scale unscaling -> skip the update on inf/nan (LossScaleOptimizer, mixed_float16)
        accumulate: add the gradient; every accumulate_steps-th batch use the mean  (gradient_accumulation_steps)
        clip the (mean) gradient to global norm clip_norm                          (global_clipnorm)
        update with the learning rate of the schedule at this step                 (learning_rate)
    """
    rate = learning_rate(
        config.lr_schedule,
        config.lr,
        total_steps=config.epochs * steps_per_epoch,
        warmup_steps=config.warmup_steps,
        decay_steps=config.decay_steps,
        decay_rate=config.decay_rate,
        steps_per_epoch=steps_per_epoch,
    )
    optimizer = keras.optimizers.Adam(
        learning_rate=rate,
        global_clipnorm=config.clip_norm,
        gradient_accumulation_steps=config.accumulate_steps if config.accumulate_steps > 1 else None,
    )
    if config.precision == "mixed_float16":  # float16's narrow range needs loss scaling; bfloat16's does not
        optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def build_trainer(
    config: TrainConfig,
    strategy: tf.distribute.Strategy,
    input_shape: tuple[int, ...],
    train_step: StepFn,
    steps_per_epoch: int,
) -> Trainer:
    """The reference experiment's model, optimizer, loss and metric, built in the strategy's scope."""
    with strategy.scope():
        return Trainer(
            build_model(config, input_shape),
            optimizer=build_optimizer(config, steps_per_epoch=steps_per_epoch),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            train_step=train_step,
            options=CompileOptions(steps_per_execution=config.steps_per_execution, jit_compile=config.jit_compile),
            strategy=strategy,
        )
