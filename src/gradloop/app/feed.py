"""What a run trains on, and whether its model, loss and metrics fit that data: for ``gradloop train``
and ``gradloop lr_find`` alike.

    feed = Feed.of(config, data)                 training batches by epoch, validation batches, steps an epoch
    check_fits(config, data, trainer, feed)      one batch through the loss and metrics, before anything is written
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf

from gradloop import errors
from gradloop.app import assemble
from gradloop.app.config import TrainConfig
from gradloop.app.run_record import describe_loss
from gradloop.data import examples
from gradloop.data.sources.prepared import RunData
from gradloop.errors import ConfigError
from gradloop.loop import in_memory
from gradloop.loop.keras_steps import ModelStepTrainer
from gradloop.loop.trainer import TrainData, Trainer


@dataclass(frozen=True)
class Feed:
    """The run's data as the loop takes it: training batches by epoch (each epoch's order rebuilt
    exactly on resume), the validation batches, and the steps of an epoch."""

    train: TrainData
    val: tf.data.Dataset | None
    steps_per_epoch: int

    @classmethod
    def of(cls, config: TrainConfig, data: RunData, *, datasets: bool = False) -> Feed:
        """``datasets``: arrays in memory as each epoch's tf.data pipeline, as a model's own train_step takes
        them (:class:`~gradloop.loop.keras_steps.ModelStepTrainer`); a checkpoint then holds the pipeline's
        position, which a resume restores into the same epoch's pipeline."""
        batched = hasattr(data.train, "num_batches")  # a function's own datasets come batched as it batched them
        if not batched:
            errors.check_batch_size(config.batch_size, data.train.n)
        val = data.val.batches(None, config.batch_size) if data.val is not None and data.val.n else None
        train = examples.epochs(data.train, batch_size=config.batch_size, seed=config.seed)
        return cls(
            train=(lambda epoch: in_memory.as_dataset(train(epoch))) if datasets else train,
            val=val,
            steps_per_epoch=data.train.num_batches if batched else math.ceil(data.train.n / config.batch_size),
        )


def check_fits(config: TrainConfig, data: RunData, trainer: Trainer, feed: Feed) -> None:
    """The loss and metrics on one batch, before anything is written: a loss or metric that does not fit
    the labels or the model's outputs (``--metrics auc`` on three classes) is one line, not a crash mid-step.
    A model's own train_step is traced instead (no labels to name): its mistakes are one-line errors there."""
    if isinstance(trainer, ModelStepTrainer):
        trainer.build(feed.train(0))
        return
    try:
        trainer.build(feed.train(0))  # Keras' loss and metrics meet their first batch here
    except (ValueError, TypeError, tf.errors.OpError) as exc:
        x, y = in_memory.first_batch(feed.train(0))[
            :2
        ]  # for the message: the model itself fits (models.check_model_fits)
        y_pred = trainer.model(x, training=False)
        reason = " ".join(errors.tensorflow_reason(exc).split())[:200]
        raise ConfigError(
            f"the loss {describe_loss(trainer.loss)} or the metrics "
            f"{', '.join(assemble.build_metrics(config, data.task))} "
            f"do not fit labels of shape {tuple(y.shape)} ({y.dtype.name}) and outputs of shape {tuple(y_pred.shape)} "
            f"({reason}); choose a --loss and --metrics for {data.task}"
        ) from None
