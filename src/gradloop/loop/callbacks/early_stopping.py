"""Early stopping that keeps the best model.

:class:`BestModelEarlyStopping`: with a patience, stop once ``val_loss`` has not
improved for that many epochs (Keras' EarlyStopping rule: strictly lower is
better), and keep the model of the best epoch in a file either way.

It keeps no state a checkpoint would have to save: the best epoch follows
from the history.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np

from gradloop.atomic import save_model


class BestModelEarlyStopping(keras.callbacks.Callback):
    """Stop after ``patience`` epochs without a lower ``monitor`` (0: never stop early);
    keep the lowest-``monitor`` epoch's model at ``path`` (``averaged``: with the optimizer's
    moving averages of the weights, ``use_ema=True``, as validation saw them with SwapEMAWeights).
    Epochs without ``monitor`` (not validated) are skipped, as Keras' EarlyStopping does.

    On a resumed run the best value and the epochs since it come from the
    restored history, so stopping happens at the epoch it would have.
    """

    def __init__(
        self, path: str | Path, *, patience: int = 0, monitor: str = "val_loss", averaged: bool = False
    ) -> None:
        super().__init__()
        self.path, self.patience, self.monitor, self.averaged = Path(path), patience, monitor, averaged
        self.stopped_epoch: int | None = None

    def on_train_begin(self, logs=None) -> None:
        values = self.model.history.history.get(self.monitor, [])
        best_epoch = int(np.argmin(values)) if values else -1
        self.best = values[best_epoch] if values else math.inf
        self.wait = len(values) - 1 - best_epoch if values else 0
        epochs = len(self.model.history.history.get("loss", values))  # validated or not
        self._stop_if_out_of_patience(epochs - 1)  # a run killed just after deciding to stop

    def _stop_if_out_of_patience(self, epoch: int) -> None:
        if self.patience and self.wait >= self.patience:
            self.model.stop_training = True
            self.stopped_epoch = epoch

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        if value < self.best:
            self.best, self.wait = value, 0
            self._save()
        else:
            self.wait += 1
            self._stop_if_out_of_patience(epoch)

    def _save(self) -> None:
        if not self.averaged:
            save_model(self.model, self.path)
            return
        # The averages copied in for the save and the trained weights put back exactly (a swap by
        # additions, as SwapEMAWeights does, would change them in the last bits).
        variables = self.model.trainable_variables
        trained = [v.numpy() for v in variables]
        self.model.optimizer.finalize_variable_values(variables)
        try:
            save_model(self.model, self.path)
        finally:
            for variable, value in zip(variables, trained):
                variable.assign(value)
