"""Progress on the terminal: a bar with loss, metrics and ETA (a widget in Jupyter), or plain lines in a log file.

Files a run writes (history, run.json) are :mod:`gradloop.run.folder`'s.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import TextIO

import keras
from tqdm.auto import tqdm


def format_logs(logs: Mapping[str, float]) -> str:
    """``loss 0.1234  accuracy 0.9750  val_loss ...``: loss first, validation last."""
    keys = sorted((k for k in logs if k != "train_time"), key=lambda k: (k.startswith("val_"), "loss" not in k, k))
    return "  ".join(f"{k} {logs[k]:.4f}" for k in keys)


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (where tqdm.auto draws a widget)."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return type(shell).__name__ == "ZMQInteractiveShell"


class Progress(keras.callbacks.Callback):
    """A tqdm bar with loss, accuracy and ETA on a terminal or in a notebook;
    plain lines (``lines_per_epoch`` of them, each tenth of an epoch by
    default) when output goes to a file or pipe; a summary line per epoch, with
    throughput when ``batch_size`` is given, in every case."""

    def __init__(
        self,
        *,
        batch_size: int | None = None,
        stream: TextIO | None = None,
        bar: bool | None = None,
        lines_per_epoch: int = 10,
    ) -> None:
        super().__init__()
        self.batch_size, self.lines_per_epoch = batch_size, lines_per_epoch
        self.stream = stream or sys.stdout
        self.bar = (self.stream.isatty() or (stream is None and in_notebook())) if bar is None else bar
        self._tqdm = None

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch, self._start = epoch, time.perf_counter()
        self._next_line = 1 / self.lines_per_epoch if self.lines_per_epoch else 2.0
        steps, epochs = self.params.get("steps"), self.params.get("epochs")
        if self.bar:
            self._tqdm = tqdm(
                total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="step", file=self.stream, leave=False
            )

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        logs = logs or {}
        steps = self.params.get("steps")
        if self._tqdm is not None:
            self._tqdm.update(batch + 1 - self._tqdm.n)
            self._tqdm.set_postfix({k: f"{v:.4f}" for k, v in logs.items()}, refresh=False)
        elif steps and (batch + 1) / steps >= self._next_line and batch + 1 < steps:
            n = self.lines_per_epoch
            self._next_line = ((batch + 1) * n // steps + 1) / n
            print(
                f"epoch {self._epoch + 1} step {batch + 1}/{steps}  {format_logs(logs)}", file=self.stream, flush=True
            )

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs or {}
        if self._tqdm is not None:
            self._tqdm.close()
        steps = self.params.get("steps") or 0
        seconds = logs.get("train_time", time.perf_counter() - self._start)
        rate = (
            f"  {steps * self.batch_size / seconds:,.0f} samples/s" if steps and seconds > 0 and self.batch_size else ""
        )
        print(
            f"epoch {epoch + 1}/{self.params.get('epochs')}  {format_logs(logs)}  {seconds:.1f}s{rate}",
            file=self.stream,
            flush=True,
        )


def for_verbose(verbose: int | str) -> list[keras.callbacks.Callback]:
    """``fit``'s own progress display, as Keras' ``verbose`` chooses it: 1 (``"auto"``) a bar, 2 a line per
    epoch, 0 none."""
    if verbose == "auto":
        verbose = 1
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 'auto', 0, 1 or 2, got {verbose!r}")
    return [Progress()] if verbose == 1 else [Progress(bar=False, lines_per_epoch=0)] if verbose == 2 else []
