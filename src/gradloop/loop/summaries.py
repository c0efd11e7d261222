"""TensorBoard summaries of a run, as a Keras callback the experiment wires in.

    LOG_DIR/train/       epoch_loss, epoch_accuracy, epoch_learning_rate, epoch_train_time  (step = epoch)
                         batch_loss, batch_accuracy, batch_learning_rate                  (step = batches seen)
    LOG_DIR/validation/  epoch_loss, epoch_accuracy                                       (step = epoch)

Every value the step logs is written, by its own name: a GAN's own ``train_step`` gives
``epoch_d_loss``, ``batch_g_loss``, ... . A model holding several optimizers used by its own
step (``model.d_optimizer``, ``model.g_optimizer``) gives each one's rate by its attribute:
``epoch_d_optimizer_learning_rate``.

Tags, folders and the 0-based epoch axis are those of ``keras.callbacks.TensorBoard``,
so ``tensorboard --logdir RUN_DIR/tensorboard`` shows train and validation curves
overlaid, and a run of gradloop compares with a run of ``model.fit``.

Batch summaries are written at the first batch hook at or after every
``every_steps`` training steps. With fused steps the hooks run once per
compiled call (``steps_per_execution`` steps), so the summaries land on the
step counts where a call ends: with 32 steps per call and ``every_steps=50``,
at steps 64, 128, ... . ``batch_loss`` is the running mean of the epoch so far
(what the progress bar shows; at the epoch's last step it equals
``epoch_loss``); ``batch_learning_rate`` is the rate the next update uses.

With ``hparams`` (gradloop train passes the run's config) the run also writes
them at the start of training, as TensorBoard's HParams summary, into LOG_DIR
itself: the HParams dashboard then shows one row per run with those values and,
as metrics, the last value of each scalar above (``validation`` ``epoch_accuracy``
is the final val_accuracy), so ``tensorboard --logdir runs/`` compares every run
below runs/. No run writes an experiment summary (``hparams_config``): TensorBoard
would take one run's at random and hide what the others have (another task's
metrics); without one it gathers the hyperparameters and metrics of all runs,
and types them (a choice of the texts seen, or a number).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
from tensorboard.plugins.hparams import api as hp


def learning_rates(model: keras.Model) -> dict[str, float]:
    """``{"learning_rate": ...}`` of the model's optimizer; of a model whose own train_step uses several,
    each one's that has updated anything, as ``NAME_learning_rate`` (none yet: the model's optimizer's)."""
    from gradloop.loop.keras_steps import overrides, tracked_optimizers

    used = {name: o for name, o in tracked_optimizers(model).items() if getattr(o, "built", False)}
    if len(used) <= 1 or not overrides(model, "train_step"):
        optimizer = next(iter(used.values()), None) if used and model.optimizer not in used.values() else None
        optimizer = optimizer or model.optimizer
        return {} if optimizer is None else {"learning_rate": current_learning_rate(optimizer)}
    return {f"{name}_learning_rate": current_learning_rate(o) for name, o in used.items()}


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate the optimizer's next update uses (a schedule evaluated
    at its step; the inner optimizer's under a LossScaleOptimizer)."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    return float(tf.convert_to_tensor(optimizer.learning_rate))


def hparam_values(values: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """``values`` (a run's config) as the HParams dashboard takes them: None left out (a blank cell),
    a list as its items joined by commas (``512,256,128``, as the flag takes it), a mapping as JSON."""
    converted: dict[str, bool | int | float | str] = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        elif isinstance(value, Mapping):
            value = json.dumps(value, sort_keys=True)
        elif not isinstance(value, (bool, int, float, str)):
            value = str(value)
        converted[str(name)] = value
    return converted


class TensorBoardSummaries(keras.callbacks.Callback):
    """Write the run's scalars (and ``hparams``) for TensorBoard; see the module docstring for what and when.

    ``initial_step``: the training steps of the epochs a resumed run already finished.
    ``hparams``: the run's hyperparameters (:func:`hparam_values` converts them); ``trial_id`` names
    the run in the HParams dashboard (runs of equal hyperparameters and no ``trial_id`` share a row).
    """

    def __init__(
        self,
        log_dir: str | Path,
        *,
        every_steps: int = 32,
        initial_step: int = 0,
        hparams: Mapping[str, Any] | None = None,
        trial_id: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(every_steps, bool) or not isinstance(every_steps, int) or every_steps < 1:
            raise ValueError(f"every_steps must be a positive integer, got {every_steps!r}")
        self.log_dir = Path(log_dir)
        self.every_steps = every_steps
        self.initial_step = initial_step
        self.hparams = hparam_values(hparams) if hparams is not None else None
        self.trial_id = trial_id
        self._writers: dict[str, tf.summary.SummaryWriter] = {}

    def _writer(self, split: str) -> tf.summary.SummaryWriter:
        if split not in self._writers:
            self._writers[split] = tf.summary.create_file_writer(str(self.log_dir / split))
        return self._writers[split]

    def on_train_begin(self, logs=None) -> None:
        self._steps_before_epoch = self.initial_step  # training steps of the finished epochs
        self._steps_in_epoch = 0
        self._next_summary = (self.initial_step // self.every_steps + 1) * self.every_steps
        if self.hparams is not None:
            self._write_hparams()

    def _write_hparams(self) -> None:
        """The HParams summary, in LOG_DIR itself: the folder holding train/ and validation/ is the
        "session" whose scalars the dashboard shows as its metrics. A resumed run writes it again;
        TensorBoard keeps the first, the run's start."""
        writer = self._writer("")
        with writer.as_default():
            hp.hparams(self.hparams, trial_id=self.trial_id, start_time_secs=time.time())
        writer.flush()

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._steps_in_epoch = 0

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self._steps_in_epoch = batch + 1
        step = self._steps_before_epoch + self._steps_in_epoch
        if step < self._next_summary or not logs:
            return
        self._next_summary = (step // self.every_steps + 1) * self.every_steps
        with self._writer("train").as_default(step=step):
            for name, value in {**logs, **learning_rates(self.model)}.items():
                tf.summary.scalar(f"batch_{name}", float(value))

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self._steps_before_epoch += self._steps_in_epoch
        logs = dict(logs or {})
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        train.update(learning_rates(self.model))
        self._write_epoch("train", train, epoch)
        val = {k[len("val_") :]: v for k, v in logs.items() if k.startswith("val_")}
        if val:
            self._write_epoch("validation", val, epoch)

    def _write_epoch(self, split: str, values: Mapping[str, float], epoch: int) -> None:
        writer = self._writer(split)
        with writer.as_default(step=epoch):
            for name, value in values.items():
                tf.summary.scalar(f"epoch_{name}", float(value))
        writer.flush()  # a crash or a live TensorBoard sees every finished epoch

    def on_train_end(self, logs=None) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
