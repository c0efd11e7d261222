"""``gradloop train`` as a function: config in, run directory out.

    data     the run's splits, scaled, as tf.data pipelines       (gradloop.build, gradloop.data)
    trainer  model, optimizer, loss, metrics, NaN guard            (gradloop.build, gradloop.stopping)
    start    a new run directory, or resume one from its checkpoint (gradloop.rundir, gradloop.checkpoint)
    fit      Trainer.fit with progress, history files, TensorBoard, early stop and checkpoints
    record   model.keras, history.json/.csv/.png, run.json finished  (gradloop.rundir, gradloop.plots)
"""

from __future__ import annotations

import atexit
import contextlib
import math
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, TextIO

import keras
import numpy as np
import tensorflow as tf

from gradloop import __version__, build, checkpoint, cpu, data, distribute, plots, progress, rundir, stopping, summaries
from gradloop import step as step_lib
from gradloop.config import TrainConfig
from gradloop.errors import ConfigError, TrainingError
from gradloop.state import LoopState
from gradloop.trainer import TrainData, Trainer

# What the library's errors advise when a run cannot go on: the CLI's way to do it.
_START_OVER = "start the run again with --overwrite"


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop: checkpoint.StopSignals | None = None,
    out: TextIO | None = None,
    notify: Callable[[str], None] | None = None,
    profile: bool = False,
) -> Path:
    """Run one experiment, or continue one (``resume``), and return its run directory.

    With ``stop`` (the CLI's :class:`~gradloop.checkpoint.StopSignals`), SIGTERM
    and SIGINT end the run after a checkpoint by raising ``checkpoint.Interrupted``.
    ``profile`` first prints where a step's time goes (on a copy of the model:
    the run is unaffected).
    """
    out = out or sys.stdout
    notify = notify or (lambda line: print(line, file=sys.stderr))
    strategy = build.make_strategy(config)  # a multi-worker strategy must exist before any other TensorFlow work
    if stop is not None and config.strategy == "multi_worker":
        stop.catch()  # take SIGTERM back from TensorFlow's coordination service
    chief = distribute.is_chief(strategy)
    resumed = _check_resumable(config, strategy) if resume else None
    path = _run_path(config, chief=chief, resume=resume, overwrite=overwrite)
    prepared = build.prepare_data(config, notify=notify)  # bad data fails before anything is written
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    (x_train, y_train), (x_val, y_val) = prepared.train, prepared.val
    train_ds = data.shuffled_epochs(x_train, y_train, batch_size=config.batch_size, seed=config.seed)
    val_ds = data.make_dataset(x_val, y_val, batch_size=config.batch_size, shuffle=False) if len(x_val) else None
    steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
    guard = stopping.StopOnNonFiniteLoss(steps_per_epoch=steps_per_epoch, hint=f"lower --lr (it was {config.lr:g})")
    trainer = build.build_trainer(config, strategy, x_train.shape[1:], guard.watch(step_lib.train_step), steps_per_epoch)

    if resumed is not None:
        run, saver, state = _resume(config, resumed, path, trainer, train_ds, notify=notify)
        action = f"resuming {trainer.model.name} at epoch {state.epoch + 1} step {state.step}"
    else:
        if overwrite and chief and path.exists():
            shutil.rmtree(path)
        run = rundir.claim(path)
        saver = checkpoint.RunCheckpoint(run / rundir.CHECKPOINTS, trainer, hint=_START_OVER)  # after the old run is gone
        run.start(new_run_info(config, prepared, strategy))
        state, action = None, f"training {trainer.model.name}"
    print(
        f"gradloop: {action} on {prepared.source}: classes {list(prepared.classes)}, "
        f"{len(x_train):,} train / {len(x_val):,} val samples, {config.epochs} epochs -> {path}",
        file=out,
        flush=True,
    )
    if profile:
        from gradloop.profile import format_profile, profile_phases

        print(format_profile(profile_phases(trainer, train_ds(0)), config.batch_size), file=out, flush=True)

    early_stop = stopping.EarlyStopping(run / rundir.BEST_MODEL, patience=config.early_stop)
    callbacks = [  # the guard first: a diverged state must stop before Checkpointing could save it
        guard,
        progress.Progress(batch_size=config.batch_size, stream=out),
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: run.record_epoch(logs or {})),
        summaries.TensorBoardSummaries(
            run / rundir.TENSORBOARD, every_steps=config.summary_every,
            initial_step=state.epoch * steps_per_epoch if state else 0,
        ),
        early_stop,
        checkpoint.Checkpointing(
            saver, every_steps=config.checkpoint_every or None, every_seconds=config.checkpoint_seconds or None, stop=stop
        ),
    ]
    start = time.perf_counter()
    with _ending_recorded(run, config, chief=chief):
        history = trainer.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            callbacks=callbacks,
            initial_state=state,
            end_groups_every=config.checkpoint_every or None,
        )
    _record_finished(run, trainer.model, history.history, early_stop, started=start)
    if not chief:
        return Path(config.run_dir) if config.run_dir else path
    files = ", ".join(sorted(p.name + "/" * p.is_dir() for p in path.iterdir()))
    print(f"gradloop: wrote {path}/ ({files})", file=out)
    return path


def _check_resumable(config: TrainConfig, strategy: tf.distribute.Strategy) -> rundir.RunDir:
    if not config.run_dir:
        raise ConfigError("--resume needs --run-dir DIR, the run to continue")
    return rundir.check_resumable(config.run_dir, epochs=config.epochs, workers=distribute.worker_count(strategy))


def _run_path(config: TrainConfig, *, chief: bool, resume: bool, overwrite: bool) -> Path:
    """Only the chief writes the run directory; other workers write to a scratch folder, gone when they exit."""
    if not chief:
        scratch = Path(tempfile.mkdtemp(prefix="gradloop-worker-"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        return scratch
    if resume:
        return Path(config.run_dir)
    return rundir.check_new(Path(config.run_dir) if config.run_dir else rundir.default_path(), overwrite=overwrite)


def _resume(
    config: TrainConfig, resumed: rundir.RunDir, path: Path, trainer: Trainer, train_ds: TrainData, *,
    notify: Callable[[str], None],
) -> tuple[rundir.RunDir, checkpoint.RunCheckpoint, LoopState]:
    """Restore the run's last checkpoint and note the resume in its run.json. Every worker restores
    the chief's checkpoint (on a file system they share); the others save to scratch (``path``).
    A resume on other kernels than the run's last is said, since it cannot end bit-identical to an
    unstopped run."""
    saver = checkpoint.RunCheckpoint(
        path / rundir.CHECKPOINTS, trainer, restore_from=resumed / rundir.CHECKPOINTS, hint=_START_OVER
    )
    state = saver.restore(train_ds)
    if state.epoch > config.epochs:
        raise ConfigError(f"run {config.run_dir} has done {state.epoch} epochs; pass --epochs {state.epoch} or more")
    kernels = cpu.onednn_kernels()
    before = [resumed.info, *resumed.info.get("resumed", [])][-1].get("onednn_kernels")  # where the run last trained
    if None not in (kernels, before) and kernels != before:
        names = cpu.KERNEL_NAMES
        notify(f"gradloop: note: this run trained on TensorFlow's {names[before]} kernels and resumes on its "
               f"{names[kernels]} kernels, so its numbers will differ in the last bits from a run never stopped; "
               f"set TF_ENABLE_ONEDNN_OPTS={int(before)} to resume on {names[before]}'s")
    run = rundir.RunDir(path, resumed.info)
    run.continue_history(state.history)
    run.resume(config=config.to_dict(), epoch=state.epoch + 1, step=state.step, onednn_kernels=kernels)
    return run, saver, state


@contextlib.contextmanager
def _ending_recorded(run: rundir.RunDir, config: TrainConfig, *, chief: bool) -> Iterator[None]:
    """run.json says why a run ended before its last epoch: ``interrupted`` (resumable) or ``failed``."""
    try:
        yield
    except checkpoint.Interrupted as exc:
        run.interrupted(epoch=exc.epoch + 1, step=exc.step)
        if chief:  # without --run-dir: the runs/<timestamp> it chose (another worker's own folder is scratch)
            exc.run_dir = str(config.run_dir or run.path)
        raise
    except TrainingError as exc:
        run.failed(str(exc))
        raise


def _record_finished(
    run: rundir.RunDir, model: keras.Model, history: dict, early_stop: stopping.EarlyStopping, *, started: float
) -> None:
    """The finished run's files: model.keras, history.json/.csv/.png, and run.json's ``finished``
    (``seconds``: this process's share, from ``started`` to the files written, added to earlier ones')."""
    rundir.save_model(model, run / rundir.MODEL)
    tutorial = run.write_history(history)
    plots.plot_history(tutorial, run / rundir.HISTORY_PNG)
    run.finished(
        epochs_done=len(history.get("loss", [])),
        stopped_early=early_stop.stopped_epoch + 1 if early_stop.stopped_epoch is not None else None,
        seconds=round(run.info.get("seconds", 0) + time.perf_counter() - started, 3),
        final={k: v[-1] for k, v in tutorial.items()},
    )


def new_run_info(config: TrainConfig, prepared: build.PreparedData, strategy: tf.distribute.Strategy) -> dict:
    """run.json of a new run: its resolved config, data and versions."""
    x_train, x_val = prepared.train[0], prepared.val[0]
    return {
        "config": config.to_dict(),
        "data_source": prepared.source,
        "classes": list(prepared.classes),
        "n_classes": len(prepared.classes),
        "n_train": int(len(x_train)),
        "n_val": int(len(x_val)),
        "loss": "SparseCategoricalCrossentropy(from_logits=True)",
        "strategy": config.strategy,
        "workers": distribute.worker_count(strategy),
        "num_replicas": strategy.num_replicas_in_sync,
        "versions": versions(),
        "onednn_kernels": cpu.onednn_kernels(),
    }


def versions() -> dict[str, str]:
    return {
        "gradloop": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
