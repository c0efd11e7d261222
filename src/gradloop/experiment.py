"""``gradloop train`` as a function: config in, run directory out.

    data   = load, select classes, split, scale     (gradloop.data)
    model  = build the MLP or CNN, seeded           (gradloop.models)
    optim  = Adam with the schedule, clipping, accumulation, loss scaling  (build_optimizer)
    fit    = Trainer(...).fit(...)                  (gradloop.trainer)
    record = history.json/.csv/.png, model.keras, run.json  (gradloop.logs, gradloop.plots)
             tensorboard/ event files                       (gradloop.summaries)
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

import keras
import numpy as np
import tensorflow as tf

from gradloop import __version__, data, distribute, logs, models, plots, schedules, summaries
from gradloop.config import TrainConfig
from gradloop.errors import ConfigError, DataError, RunDirError
from gradloop.step import CompileOptions
from gradloop.trainer import Trainer


@dataclass(frozen=True)
class PreparedData:
    """The arrays a run trains and validates on, after class selection and scaling."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    source: str
    classes: tuple[int, ...]


def prepare_data(config: TrainConfig, *, notify: Callable[[str], None]) -> PreparedData:
    """Load the source, keep the chosen classes (remapped to 0..k-1), scale, split."""
    raw = data.load_dataset(config.dataset, config.data_dir, notify=notify)
    if raw.x_train is None:
        raise DataError(f"{raw.source} has no training split; point --data-dir at a folder with the train-* files")
    x, y = data.select_classes(raw.x_train, raw.y_train, config.classes)
    x = data.prepare_images(x, flatten=config.model == "mlp")
    train, val = data.split_train_val(x, y, val_fraction=config.val_fraction, seed=config.seed)
    if config.batch_size > len(train[0]):
        raise ConfigError(
            f"batch_size {config.batch_size} is larger than the {len(train[0]):,} training samples; lower --batch-size"
        )
    return PreparedData(train=train, val=val, source=raw.source, classes=config.classes)


def build_model(config: TrainConfig, input_shape: tuple[int, ...]) -> keras.Model:
    n_classes = len(config.classes)
    if config.model == "cnn":
        return models.build_cnn(input_shape, n_classes, dtype=config.precision)
    return models.build_mlp(input_shape[0], config.hidden, n_classes, dtype=config.precision)


def build_optimizer(config: TrainConfig, *, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Adam, configured the Keras way, so every option runs inside ``optimizer.apply_gradients``,
    the one call the step makes to update (and around the fused Adam kernel, which
    replaces only the per-variable arithmetic):

        loss-scale unscaling -> skip the update on inf/nan (LossScaleOptimizer, mixed_float16)
        accumulate: add the gradient; every accumulate_steps-th batch use the mean  (gradient_accumulation_steps)
        clip the (mean) gradient to global norm clip_norm                          (global_clipnorm)
        update with the learning rate of the schedule at this step                 (gradloop.schedules)
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
    optimizer = keras.optimizers.Adam(
        learning_rate=rate,
        global_clipnorm=config.clip_norm,
        gradient_accumulation_steps=config.accumulate_steps if config.accumulate_steps > 1 else None,
    )
    if config.precision == "mixed_float16":  # float16's narrow range needs loss scaling; bfloat16's does not
        optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def check_new_run_dir(config: TrainConfig) -> Path:
    """The run directory to create; an existing non-empty one is refused so that
    an earlier run's results are never overwritten."""
    path = Path(config.run_dir) if config.run_dir else Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run directory {path} is a file; choose another --run-dir")
    if path.exists() and any(path.iterdir()):
        raise RunDirError(f"run directory {path} already exists and is not empty; choose another --run-dir")
    _check_creatable(path)
    return path


def _check_creatable(path: Path) -> None:
    """Fail now, not after minutes of loading data, when the run directory cannot be made.

    Permission bits do not stop root, so the nearest existing folder is probed
    by creating (and removing) a folder in it, which also catches read-only
    file systems and /proc.
    """
    ancestor = path
    while not ancestor.exists() and not ancestor.is_symlink() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RunDirError(f"cannot create run directory {path}: {ancestor} is not a folder; choose another --run-dir")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".gradloop-probe-", dir=ancestor))
    except OSError as exc:
        raise RunDirError(
            f"cannot create run directory {path}: {exc.strerror or exc} in {ancestor}; choose a writable --run-dir"
        ) from None


def make_run_dir(path: Path) -> Path:
    """Create the run directory and claim it by creating run.json exclusively, so that two runs
    started in the same second (same default runs/<timestamp>) cannot write into one folder."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / "run.json").open("x").close()
    except FileExistsError:
        raise RunDirError(f"run directory {path} was taken by another run meanwhile; choose another --run-dir") from None
    except OSError as exc:
        raise RunDirError(f"cannot create run directory {path}: {exc.strerror or exc}") from None
    return path


def versions() -> dict[str, str]:
    return {
        "gradloop": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def train(
    config: TrainConfig, *, out: TextIO | None = None, notify: Callable[[str], None] | None = None, profile: bool = False
) -> Path:
    """Run one experiment and return its run directory; ``profile`` first prints
    where a step's time goes (on a copy of the model: the run is unaffected)."""
    out = out or sys.stdout
    notify = notify or (lambda line: print(line, file=sys.stderr))
    # A multi-worker strategy must exist before any other TensorFlow work.
    strategy = distribute.make_strategy(config.strategy, replicas=config.replicas)
    chief = distribute.is_chief(strategy)
    # Only the chief writes the run directory; other workers write to a scratch folder.
    run_dir = check_new_run_dir(config) if chief else Path(tempfile.mkdtemp(prefix="gradloop-worker-"))
    prepared = prepare_data(config, notify=notify)  # bad data fails before anything is written
    make_run_dir(run_dir)
    (x_train, y_train), (x_val, y_val) = prepared.train, prepared.val
    train_ds = data.make_dataset(x_train, y_train, batch_size=config.batch_size, shuffle=True, seed=config.seed)
    val_ds = data.make_dataset(x_val, y_val, batch_size=config.batch_size, shuffle=False) if len(x_val) else None

    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build_model(config, x_train.shape[1:])
        trainer = Trainer(
            model,
            optimizer=build_optimizer(config, steps_per_epoch=math.ceil(len(x_train) / config.batch_size)),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            options=CompileOptions(steps_per_execution=config.steps_per_execution, jit_compile=config.jit_compile),
            strategy=strategy,
        )
    run_info = {
        "status": "running",
        "config": config.to_dict(),
        "data_source": prepared.source,
        "classes": list(prepared.classes),
        "n_classes": len(prepared.classes),
        "n_train": int(len(x_train)),
        "n_val": int(len(x_val)),
        "loss": "SparseCategoricalCrossentropy(from_logits=True)",
        "strategy": config.strategy,
        "num_replicas": strategy.num_replicas_in_sync,
        "versions": versions(),
        "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    logs.write_json(run_dir / "run.json", run_info)
    print(
        f"gradloop: training {model.name} on {prepared.source}: classes {list(prepared.classes)}, "
        f"{len(x_train):,} train / {len(x_val):,} val samples, {config.epochs} epochs -> {run_dir}",
        file=out,
        flush=True,
    )

    if profile:
        from gradloop.profile import format_profile, profile_phases

        print(format_profile(profile_phases(trainer, train_ds), config.batch_size), file=out, flush=True)
    start = time.perf_counter()
    history = trainer.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.epochs,
        callbacks=[
            logs.Progress(batch_size=config.batch_size, stream=out),
            logs.HistoryFiles(run_dir),
            summaries.TensorBoardSummaries(run_dir / "tensorboard", every_steps=config.summary_every),
        ],
    )
    model.save(run_dir / "model.keras")
    tutorial = logs.write_history(run_dir, history.history)
    plots.plot_history(tutorial, run_dir / "history.png")
    run_info.update(status="finished", seconds=round(time.perf_counter() - start, 3),
                    final={k: v[-1] for k, v in tutorial.items()})
    logs.write_json(run_dir / "run.json", run_info)
    if not chief:
        shutil.rmtree(run_dir, ignore_errors=True)
        return Path(config.run_dir) if config.run_dir else run_dir
    print(f"gradloop: wrote {run_dir}/ (history.json, history.csv, history.png, model.keras, run.json, tensorboard/)", file=out)
    return run_dir
