"""Early stopping that keeps the best model.

:class:`BestModelEarlyStopping`: with a patience, stop once ``monitor`` (``val_loss``
by default; any logged key) has not improved for that many epochs (Keras' EarlyStopping
rule: strictly lower, or higher with ``mode="max"``, is better), and keep the model of the
best epoch in a file either way (its weights alone with ``weights_only``).

It keeps no state a checkpoint would have to save: the best epoch follows
from the history.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import keras
import numpy as np

from gradloop.atomic import save_model, sync, write_atomically


class BestModelEarlyStopping(keras.callbacks.Callback):
    """Stop after ``patience`` epochs without a better ``monitor`` (0: never stop early);
    keep the best-``monitor`` epoch's model at ``path`` (``mode``: ``min`` or ``max`` is best;
    ``weights_only``: ``model.save_weights``, for a model Keras cannot save whole; ``averaged``: with the optimizer's
    moving averages of the weights, ``use_ema=True``, as validation saw them with SwapEMAWeights).
    Epochs without ``monitor`` (not validated) are skipped, as Keras' EarlyStopping does.

    On a resumed run the best value and the epochs since it come from the
    restored history, so stopping happens at the epoch it would have.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        patience: int = 0,
        monitor: str = "val_loss",
        mode: str = "min",
        averaged: bool = False,
        weights_only: bool = False,
    ) -> None:
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be min or max, got {mode!r}")
        self.path, self.patience, self.monitor, self.averaged = Path(path), patience, monitor, averaged
        self.sign, self.weights_only = (1 if mode == "min" else -1), weights_only
        self.stopped_epoch: int | None = None

    def on_train_begin(self, logs=None) -> None:
        history = self.model.history.history
        values = [self.sign * v for v in history.get(self.monitor, [])]
        best_epoch = int(np.argmin(values)) if values else -1
        self.best = values[best_epoch] if values else math.inf
        self.wait = len(values) - 1 - best_epoch if values else 0
        trained = [len(v) for k, v in history.items() if not k.startswith("val_")]
        epochs = max(trained, default=len(values))  # validated or not
        self._stop_if_out_of_patience(epochs - 1)  # a run killed just after deciding to stop

    def _stop_if_out_of_patience(self, epoch: int) -> None:
        if self.patience and self.wait >= self.patience:
            self.model.stop_training = True
            self.stopped_epoch = epoch

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        value = self.sign * value
        if value < self.best:
            self.best, self.wait = value, 0
            self._save()
        else:
            self.wait += 1
            self._stop_if_out_of_patience(epoch)

    def _save(self) -> None:
        save = save_weights if self.weights_only else save_model
        if not self.averaged:
            save(self.model, self.path)
            return
        # The averages copied in for the save and the trained weights put back exactly (a swap by
        # additions, as SwapEMAWeights does, would change them in the last bits).
        variables = self.model.trainable_variables
        trained = [v.numpy() for v in variables]
        self.model.optimizer.finalize_variable_values(variables)
        try:
            save(self.model, self.path)
        finally:
            for variable, value in zip(variables, trained):
                variable.assign(value)


def save_weights(model: keras.Model, path: Path) -> None:
    """``model.save_weights(path)`` (``NAME.weights.h5``), whole or not at all: Keras takes no other
    suffix, so the weights go to a hidden ``.NAME.weights.h5`` first, then over the temporary file."""

    if not model.built and model.weights:
        # A model whose own train_step built its parts (a GAN's two networks) but that was never called
        # itself: Keras refuses to save the weights of an unbuilt model, though all of them exist.
        model.built = True

    def write(tmp: Path) -> None:
        staged = Path(tmp).with_name(f".{Path(path).name}")
        model.save_weights(staged)
        sync(staged)  # every rename moves a file already on disk, as write_atomically's own does
        os.replace(staged, tmp)

    write_atomically(Path(path), write)
