"""What a run tells people and files: progress on the terminal, history on disk.

History files use the tutorial's names (``train_loss``, ``val_loss``,
``train_accuracy``, ``val_accuracy``) plus ``train_time``; the in-memory
Keras History keeps Keras' names (``loss``, ``val_loss``, ...).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, TextIO

import keras
from tqdm.auto import tqdm

from gradloop.errors import RunDirError


def tutorial_history(history: Mapping[str, list[float]]) -> dict[str, list[float]]:
    """Keras names -> tutorial names: ``loss`` -> ``train_loss``, ``val_*`` unchanged."""
    return {
        (k if k.startswith("val_") or k.startswith("train_") else f"train_{k}"): [float(v) for v in vs]
        for k, vs in history.items()
    }


def read_json(path: Path, *, missing: str) -> Any:
    """One of a run directory's JSON files: absent is ``RunDirError(missing)``,
    unreadable or not JSON means the run directory is damaged."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(missing) from None
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise RunDirError(f"cannot read {path}: {exc}; the run directory is damaged") from None


def read_run_json(run_dir: Path, *, missing: str) -> dict[str, Any]:
    """run.json: a JSON object with the run's config, else the run directory is damaged."""
    info = read_json(run_dir / "run.json", missing=missing)
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise RunDirError(f"{run_dir / 'run.json'} has no config; the run directory is damaged")
    return info


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a crash never leaves a half-written file behind."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_history_csv(path: Path, history: Mapping[str, list[float]]) -> None:
    keys = list(history)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", *keys])
        for i in range(len(history[keys[0]]) if keys else 0):
            writer.writerow([i + 1, *(f"{history[k][i]:.6g}" for k in keys)])
    os.replace(tmp, path)


def write_history(run_dir: Path, keras_history: Mapping[str, list[float]]) -> dict[str, list[float]]:
    """history.json and history.csv in the tutorial's names; returns that dict."""
    history = tutorial_history(keras_history)
    write_json(run_dir / "history.json", history)
    write_history_csv(run_dir / "history.csv", history)
    return history


class HistoryFiles(keras.callbacks.Callback):
    """Rewrite history.json/.csv at each epoch end, so a crash keeps finished epochs.

    ``history``: the epochs a resumed run already has (Keras names).
    """

    def __init__(self, run_dir: Path, history: Mapping[str, list[float]] | None = None) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.epochs: dict[str, list[float]] = {k: list(v) for k, v in (history or {}).items()}

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        for key, value in (logs or {}).items():
            self.epochs.setdefault(key, []).append(float(value))
        write_history(self.run_dir, self.epochs)


def format_logs(logs: Mapping[str, float]) -> str:
    """``loss 0.1234  accuracy 0.9750  val_loss ...``: loss first, validation last."""
    keys = sorted((k for k in logs if k != "train_time"), key=lambda k: (k.startswith("val_"), "loss" not in k, k))
    return "  ".join(f"{k} {logs[k]:.4f}" for k in keys)


class Progress(keras.callbacks.Callback):
    """A tqdm bar with loss, accuracy and ETA on a terminal; plain lines
    (each tenth of an epoch) when output goes to a file or pipe; a summary
    line per epoch with throughput in both cases."""

    def __init__(self, *, batch_size: int, stream: TextIO | None = None, bar: bool | None = None) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.stream = stream or sys.stdout
        self.bar = self.stream.isatty() if bar is None else bar
        self._tqdm = None

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch, self._next_line, self._start = epoch, 0.1, time.perf_counter()
        steps, epochs = self.params.get("steps"), self.params.get("epochs")
        if self.bar:
            self._tqdm = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="step", file=self.stream, leave=False)

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        logs = logs or {}
        steps = self.params.get("steps")
        if self._tqdm is not None:
            self._tqdm.update(batch + 1 - self._tqdm.n)
            self._tqdm.set_postfix({k: f"{v:.4f}" for k, v in logs.items()}, refresh=False)
        elif steps and (batch + 1) / steps >= self._next_line and batch + 1 < steps:
            self._next_line = ((batch + 1) * 10 // steps + 1) / 10
            print(f"epoch {self._epoch + 1} step {batch + 1}/{steps}  {format_logs(logs)}", file=self.stream, flush=True)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs or {}
        if self._tqdm is not None:
            self._tqdm.close()
        steps = self.params.get("steps") or 0
        seconds = logs.get("train_time", time.perf_counter() - self._start)
        rate = f"  {steps * self.batch_size / seconds:,.0f} samples/s" if steps and seconds > 0 else ""
        print(
            f"epoch {epoch + 1}/{self.params.get('epochs')}  {format_logs(logs)}  {seconds:.1f}s{rate}",
            file=self.stream,
            flush=True,
        )
