"""From a :class:`~gradloop.app.config.TrainConfig` to what a run trains with: data, strategy,
model, optimizer, trainer. The config is resolved here (:mod:`gradloop.app.specs`) into the small
values the data package, the model builders and the loop take; none of them sees the config.

This is the application side: the library (:mod:`gradloop.loop.trainer` and the
modules it uses) takes these objects and knows no config, flag or file.

    load_data                    the run's splits: a built-in data set, or --data  (gradloop.data)
    make_strategy                --strategy, and TF_CONFIG for multi_worker
    models.build_model           the MLP or CNN sized from the data, or the user's  (gradloop.app.models)
    build_loss, build_metrics    by Keras name, defaults by task
    build_optimizer              by Keras name, with schedule, clipping, accumulation, loss scaling
    build_trainer                all of it in the strategy's scope     (gradloop.loop.trainer)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import sklearn.utils.class_weight
import tensorflow as tf

from gradloop import data, errors
from gradloop.app import models, own_step, specs
from gradloop.app.config import MODELS, STRATEGIES, TrainConfig
from gradloop.app.specs import BuiltinSpec
from gradloop.data.examples import ArrayExamples
from gradloop.data.sources import UNLABELED
from gradloop.data.sources.prepared import RunData, load_run_data
from gradloop.errors import ConfigError, DataError
from gradloop.loop import distribute, schedules
from gradloop.loop.step import StepFn
from gradloop.loop.trainer import Trainer

# --------------------------------------------------------------------- data


def load_splits(spec: BuiltinSpec, *, notify: Callable[[str], object]) -> data.Splits:
    """The run's train, validation and test splits, classes selected: the one place they are
    computed, for training and for ``evaluate`` and ``report`` alike."""
    raw = data.load_dataset(spec.dataset, spec.data_dir, notify=notify)
    return data.run_splits(raw, classes=spec.classes, val_fraction=spec.val_fraction, seed=spec.seed)


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays field by field is ambiguous
class PreparedData:
    """The arrays a run trains and validates on, after class selection and scaling."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    source: str
    classes: tuple[int, ...]


def prepare_data(spec: BuiltinSpec, *, flatten: bool, batch_size: int, notify: Callable[[str], object]) -> PreparedData:
    """Load the source, keep the chosen classes (remapped to 0..k-1), split, scale (``flatten``: images
    as rows, for the MLP); refused when ``batch_size`` is more than the training samples."""
    splits = load_splits(spec, notify=notify)
    if splits.train is None:
        raise DataError(f"{splits.source} has no training split; point --data-dir at a folder with the train-* files")
    train, val = ((data.prepare_images(x, flatten=flatten), y) for x, y in (splits.train, splits.val))
    errors.check_batch_size(batch_size, len(train[0]))
    return PreparedData(train=train, val=val, source=splits.source, classes=spec.classes)


def load_data(
    config: TrainConfig,
    *,
    notify: Callable[[str], object],
    fitted: dict[str, Any] | None = None,
    class_names: tuple[str, ...] | None = None,
) -> RunData:
    """The run's data: a built-in data set (``prepare_data``), or ``--data`` (:mod:`gradloop.data.sources.prepared`).
    ``fitted`` and ``class_names`` (a finished run's ``data`` in run.json) read it as that run did."""
    if config.data is None:
        prepared = prepare_data(
            specs.builtin_spec(config), flatten=config.model == "mlp", batch_size=config.batch_size, notify=notify
        )
        return RunData(
            train=ArrayExamples(*prepared.train),
            val=ArrayExamples(*prepared.val),
            test=None,
            kind="builtin",
            description=prepared.source,
            task="classification",
            class_names=tuple(map(str, prepared.classes)),
            source_class_names=None,
            fingerprint={},
            preprocessing={},
        )
    spec = specs.data_spec(config, fitted=fitted, class_names=class_names)
    data = load_run_data(
        spec, classes=config.classes, val_fraction=config.val_fraction, seed=config.seed, notify=notify
    )
    # A model of the user's may bring its own train_step: build_trainer judges it once it is built.
    if data.task == UNLABELED and (fitted is not None or config.model in MODELS or config.loss is not None):
        refuse_unlabeled(config, data, evaluating=fitted is not None)
    return data


_LABEL_HINTS = {  # why each kind of --data has no labels, and how it gets them
    "csv": ("no --target", "pass --target COLUMN to predict one of its columns"),
    "arrays": ("x without y", "save y beside x"),
    "images": ("no class folders", "put the images in one sub-folder per class"),
    "function": ("x alone", "return y too (or datasets of (x, y) batches)"),
}


def refuse_unlabeled(config: TrainConfig, data: RunData, *, evaluating: bool) -> None:
    """Data without labels trains only a model that brings its own ``train_step``; a built-in model or
    gradloop's own step (which takes a loss of labels and outputs) is refused in one line."""
    why, hint = _LABEL_HINTS.get(data.kind, ("none given", "give it labels"))
    if evaluating:
        raise ConfigError(
            f"--data {config.data} has no labels ({why}) to evaluate the run's model against: {hint} "
            "(gradloop predict runs a model on examples alone)"
        )
    what = (
        f"--model {config.model} learns labels"
        if config.model in MODELS
        else f"the {'default loss' if config.loss is None else f'loss {config.loss}'} compares labels with outputs"
    )
    raise ConfigError(
        f"--data {config.data} has no labels ({why}), and {what}: {hint}, or train a model that brings "
        "its own train_step on it"
    )


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
            raise ConfigError(
                "--strategy multi_worker needs TF_CONFIG (or use gradloop launch --workers N -- train ...)"
            )
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


def build_loss(config: TrainConfig, task: str, model: keras.Model) -> keras.losses.Loss:
    """``--loss`` by Keras name, else sparse categorical cross-entropy (classification) or mean
    squared error (regression). A cross-entropy reads logits unless the model ends in a softmax
    or sigmoid (the built-in models give logits)."""
    name = config.loss or ("sparse_categorical_crossentropy" if task == "classification" else "mean_squared_error")
    try:
        loss = keras.losses.get(name)
    except (ValueError, TypeError):
        raise ConfigError(
            f"--loss {name} is not a Keras loss; use e.g. sparse_categorical_crossentropy, mean_squared_error, huber"
        ) from None
    if not isinstance(loss, keras.losses.Loss):  # a function such as keras.losses.mean_squared_error: its class
        kind = getattr(keras.losses, "".join(p.capitalize() for p in getattr(loss, "__name__", "").split("_")), None)
        is_loss_class = isinstance(kind, type) and issubclass(kind, keras.losses.Loss)
        loss = kind() if is_loss_class else keras.losses.LossFunctionWrapper(loss, name=name)
    if "from_logits" in loss.get_config() and not _ends_in_probabilities(model):
        loss = type(loss).from_config({**loss.get_config(), "from_logits": True})
    return loss


def _ends_in_probabilities(model: keras.Model) -> bool:
    activation = getattr(model.layers[-1], "activation", None) if model.layers else None
    return (
        activation in (keras.activations.softmax, keras.activations.sigmoid)
        or type(model.layers[-1]).__name__ == "Softmax"
    )


def build_metrics(config: TrainConfig, task: str) -> list[str]:
    """``--metrics`` by Keras name, else accuracy (classification) or mean absolute error (regression)."""
    names = list(config.metrics or (["accuracy"] if task == "classification" else ["mae"]))
    for name in names:
        try:
            keras.metrics.get(name)
        except (ValueError, TypeError):
            raise ConfigError(f"--metrics {name} is not a Keras metric; use e.g. accuracy, auc, mae, mse") from None
    return names


def build_optimizer(config: TrainConfig, *, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """``--optimizer`` (Adam by default), configured the Keras way, so every option runs inside
    ``optimizer.apply_gradients``,
    the moving average of ``--ema`` too,
    the one call the step makes to update (and around the fused Adam kernel, which
    replaces only the per-variable arithmetic):

        loss-scale unscaling -> skip the update on inf/nan (LossScaleOptimizer, mixed_float16)
        accumulate: add the gradient; every accumulate_steps-th batch use the mean  (gradient_accumulation_steps)
        clip the (mean) gradient to global norm clip_norm                          (global_clipnorm)
        update with the learning rate of the schedule at this step                 (gradloop.loop.schedules)
    """
    rate = schedules.learning_rate(
        config.lr_schedule,
        config.lr,
        total_steps=config.epochs * steps_per_epoch,
        warmup_steps=config.warmup_steps,
        decay_steps=config.decay_steps,
        decay_rate=config.decay_rate,
        steps_per_epoch=steps_per_epoch,
    )
    try:
        kind = type(keras.optimizers.get(config.optimizer))
    except (ValueError, TypeError):
        raise ConfigError(
            f"--optimizer {config.optimizer} is not a Keras optimizer; use e.g. adam, adamw, sgd, rmsprop"
        ) from None
    optimizer = kind(
        learning_rate=rate,
        global_clipnorm=config.clip_norm,
        gradient_accumulation_steps=config.accumulate_steps if config.accumulate_steps > 1 else None,
        use_ema=config.ema is not None,  # the average is an optimizer variable: checkpoints keep it
        ema_momentum=config.ema if config.ema is not None else 0.99,
    )
    if config.precision == "mixed_float16":  # float16's narrow range needs loss scaling; bfloat16's does not
        optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def build_trainer(
    config: TrainConfig,
    strategy: tf.distribute.Strategy,
    data: RunData,
    train_step: StepFn,
    steps_per_epoch: int,
    *,
    model_spec: str | None = None,
    nan_guard: Any = None,
) -> Trainer:
    """The run's model, optimizer, loss and metrics, built in the strategy's scope; a model that brings
    its own training (:mod:`gradloop.app.own_step`) trains with its own, watched by ``nan_guard``."""
    with strategy.scope():
        model = models.build_model(
            specs.model_spec(config, source=model_spec), data.train.element_shape, data.n_outputs, task=data.task
        )
        if own_step.brings_own_training(model):
            return own_step.trainer(config, model, strategy, nan_guard=nan_guard)
        if data.task == UNLABELED:
            refuse_unlabeled(config, data, evaluating=False)
        return Trainer(
            model,
            optimizer=build_optimizer(config, steps_per_epoch=steps_per_epoch),
            loss=build_loss(config, data.task, model),
            metrics=build_metrics(config, data.task),
            train_step=train_step,
            options=specs.compile_options(config),
            strategy=strategy,
        )


def class_weights(config: TrainConfig, data: RunData) -> dict[int, float] | None:
    """``--class-weight`` as ``fit``'s ``class_weight`` (label index -> weight): ``balanced`` is
    scikit-learn's n_samples / (n_classes * count) on the training split; a mapping names classes
    (a key that is no class name is an index); classes it leaves out weigh 1."""
    if config.class_weight is None:
        return None
    names = data.class_names
    if names is None:
        raise ConfigError("--class-weight weighs the classes of a classification task; drop it for regression")
    if config.class_weight == "balanced":
        y = np.asarray(data.train.y).reshape(-1).astype(np.int64)
        counts = np.bincount(y, minlength=len(names))
        if not counts.all():
            raise ConfigError(
                f"--class-weight balanced: class {names[int(np.argmin(counts))]} has no training samples; "
                "choose --classes or give weights in a --config file"
            )
        labels = np.arange(len(names))
        weights = sklearn.utils.class_weight.compute_class_weight("balanced", classes=labels, y=y)
        return {int(c): float(w) for c, w in zip(labels, weights)}
    weights = {}
    for key, weight in config.class_weight.items():
        if str(key) in names:
            weights[names.index(str(key))] = float(weight)
        elif isinstance(key, int) and 0 <= key < len(names):
            weights[key] = float(weight)
        else:
            raise ConfigError(
                f"class_weight names a class {key!r} that the run does not have; its classes are {', '.join(names)}"
            )
    return weights
