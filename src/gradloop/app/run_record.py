"""What a run writes about itself in its folder, beyond the history the loop records each epoch.

started    run.json: the resolved config, the data, the model, the loss, what ``best`` is judged by, versions
ended      run.json ``interrupted`` (resumable) or ``failed``, with why
finished   model.keras and model.weights.h5 (weights alone for a model that cannot be saved whole: run.json
           ``model_files``), history.json/.csv/.png, run.json ``finished`` with the final numbers
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf

from gradloop import __version__, atomic
from gradloop.app import cpu, own_step
from gradloop.app.config import TrainConfig
from gradloop.app.interrupted import RunInterrupted
from gradloop.data.sources import image_cache
from gradloop.data.sources.prepared import RunData
from gradloop.errors import DataError, TrainingError
from gradloop.loop import distribute, signals
from gradloop.loop.callbacks import early_stopping
from gradloop.loop.keras_steps import ModelStepTrainer
from gradloop.loop.trainer import Trainer
from gradloop.pages import plots
from gradloop.run import files as run_files
from gradloop.run import folder as run_folder
from gradloop.run import history as run_history


def new_run_info(
    config: TrainConfig,
    data: RunData,
    strategy: tf.distribute.Strategy,
    trainer: Trainer,
    *,
    model_source: str | None,
    class_weight: dict[int, float] | None,
    monitor: str | None = None,
    saved: dict | None = None,
) -> dict:
    """run.json of a new run: its resolved config, data, model and versions. ``monitor``: the logged key
    (Keras' name) its best epoch is judged by, when not val_loss;
    ``saved``: run.json's ``model_files`` (:func:`gradloop.app.own_step.saved_files`)."""
    classification = data.class_names is not None
    own = isinstance(trainer, ModelStepTrainer)
    return {
        "config": config.to_dict(),
        "data_source": data.description,
        "task": data.task,
        "classes": list(recorded_classes(config, data)) if classification else None,
        "n_classes": len(data.class_names) if classification else None,
        "n_outputs": data.n_outputs or None,  # None: data without labels
        "n_train": data.train.n,
        "n_val": data.val.n if data.val is not None else 0,
        "data": {
            "kind": data.kind,
            "fingerprint": data.fingerprint,
            "preprocessing": data.preprocessing,
            "source_classes": list(data.source_class_names) if data.source_class_names else None,
        },
        "model": trainer.model.name,
        "model_source": model_source,
        "parameters": own_step.parameters(trainer.model),
        "loss": OWN_LOSS if own else describe_loss(trainer.loss),
        "own_train_step": own,
        "class_weight": _named(class_weight, data.class_names),
        "metrics": trainer.metric_names,
        "best": best_measure(config, data, trainer, monitor=monitor),
        "model_files": saved or own_step.saved_files(serialized=True),
        "strategy": config.strategy,
        "workers": distribute.worker_count(strategy),
        "num_replicas": strategy.num_replicas_in_sync,
        "versions": versions(),
        "onednn_kernels": cpu.onednn_kernels(),
    }


def best_measure(config: TrainConfig, data: RunData, trainer: Trainer, *, monitor: str | None = None) -> dict:
    """What run.json's ``best`` epoch is judged by: ``monitor`` (the tutorial's name: ``d_loss`` is
    ``train_d_loss``), else the first metric on validation data, highest or lowest as Keras' own callbacks
    read its direction, else the lowest val_loss (see :func:`gradloop.run.history.progress`)."""
    if monitor is not None:
        return {"metric": next(iter(run_history.tutorial_history({monitor: []}))), "mode": own_step.mode(monitor)}
    first = next(iter(trainer.flat_metrics), None)  # Keras' own, built by check_fits: named as the history names it
    direction = getattr(first, "_direction", None)
    if direction not in ("up", "down"):
        return dict(run_history.BEST)
    return {"metric": f"val_{first.name}", "mode": "max" if direction == "up" else "min"}


OWN_LOSS = "the model's own"  # run.json's loss of a model that brings its own train_step


def _named(class_weight: dict[int, float] | None, names: tuple[str, ...] | None) -> dict[str, float] | None:
    """run.json's class weights, by class name."""
    return None if class_weight is None else {names[c]: w for c, w in sorted(class_weight.items())}


def recorded_classes(config: TrainConfig, data: RunData) -> tuple:
    """The classes as run.json lists them: a built-in data set's digits, or your data's class names."""
    return config.classes if data.kind == "builtin" else data.class_names


def describe_loss(loss: keras.losses.Loss) -> str:
    """``SparseCategoricalCrossentropy(from_logits=True)``: the loss and the options that differ from its defaults."""
    config = {k: v for k, v in loss.get_config().items() if k not in ("name", "reduction", "dtype")}
    options = ", ".join(f"{k}={v}" for k, v in config.items() if v is not None and v is not False)
    name = "".join(part.capitalize() for part in loss.name.split("_")) if loss.name else type(loss).__name__
    return f"{name}({options})"


def versions() -> dict[str, str]:
    return {
        "gradloop": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


@contextlib.contextmanager
def ending_recorded(run: run_folder.RunDir, config: TrainConfig, *, chief: bool) -> Iterator[None]:
    """run.json says why a run ended before its last epoch: ``interrupted`` (resumable) or ``failed``."""
    try:
        yield
    except signals.Interrupted as exc:
        run.interrupted(epoch=exc.epoch + 1, step=exc.step)
        # without --run-dir: the runs/<timestamp> it chose (another worker's own folder is scratch)
        raise RunInterrupted(exc, run_dir=str(config.run_dir or run.path) if chief else None) from exc
    except (TrainingError, DataError) as exc:
        run.failed(str(exc))
        image_cache.remove(run / run_files.CACHE)  # a failed run does not resume, so nothing reads the copy again
        raise


def record_finished(
    run: run_folder.RunDir,
    trainer: Trainer,
    history: dict,
    best: early_stopping.BestModelEarlyStopping,
    *,
    started: float,
    notify: Callable[[str], object] = print,
) -> None:
    """The finished run's files: model.keras (when run.json's ``model_files`` says it can be saved whole),
    model.weights.h5, history.json/.csv/.png, and run.json's ``finished`` (``seconds``: this process's
    share, from ``started`` to the files written, added to earlier ones')."""
    image_cache.remove(run / run_files.CACHE)  # nothing reads the decoded images any more
    save_model_files(run, trainer.model, notify=notify)
    tutorial = run.write_history(run.recorded_history())  # Keras' val_ lists skip unvalidated epochs; these do not
    plots.plot_history(
        tutorial,
        run / run_files.HISTORY_PNG,
        metric=next(iter(trainer.metric_names), None),
        every=isinstance(trainer, ModelStepTrainer),  # its logs are its own: draw them all
    )
    run.finished(
        epochs_done=max((len(v) for k, v in history.items() if not k.startswith("val_")), default=0),
        stopped_early=best.stopped_epoch + 1 if best.stopped_epoch is not None else None,
        seconds=round(run.info.get("seconds", 0) + time.perf_counter() - started, 3),
        final={k: v[-1] for k, v in tutorial.items()},
    )


def save_model_files(run: run_folder.RunDir, model: keras.Model, *, notify: Callable[[str], object]) -> None:
    """model.weights.h5 always; model.keras too unless run.json's ``model_files`` says the model cannot
    be saved whole, or Keras refuses to save it (then run.json says so, and why, in one line)."""
    early_stopping.save_weights(model, run / run_files.WEIGHTS)
    files = run.info.setdefault("model_files", own_step.saved_files(serialized=True))
    if not files.get("serialized", True):
        return
    try:
        atomic.save_model(model, run / run_files.MODEL)
    except (NotImplementedError, TypeError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:160]
        notify(f"gradloop: note: Keras cannot save {type(model).__name__} whole ({reason}); the run keeps its weights")
        files.update(own_step.saved_files(serialized=False), best=files.get("best"))
