"""``gradloop train`` as a function: config in, run directory out.

data     the run's splits, scaled, as tf.data pipelines       (gradloop.app.assemble, gradloop.app.feed)
trainer  model, optimizer, loss, metrics, NaN guard; checked on one batch (gradloop.app.assemble, .feed)
start    a new run directory, or resume one from its checkpoint (gradloop.run.folder, gradloop.loop.checkpoint)
fit      Trainer.fit with progress, history files, TensorBoard, early stop and checkpoints
record   run.json, model.keras, history.json/.csv/.png         (gradloop.app.run_record)
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import TextIO

import keras
import tensorflow as tf

from gradloop import atomic
from gradloop.app import assemble, cpu, models, own_step, specs, user_callbacks
from gradloop.app.config import MODELS, TrainConfig
from gradloop.app.feed import Feed, check_fits
from gradloop.app.run_record import ending_recorded, new_run_info, record_finished, recorded_classes
from gradloop.app.specs import RunFolderSpec
from gradloop.data.sources import UNLABELED, describe_change, image_cache
from gradloop.data.sources.prepared import RunData
from gradloop.errors import ConfigError, DiskFullError, RunDirError
from gradloop.loop import checkpoint, distribute, in_memory, progress, signals, summaries
from gradloop.loop import step as step_lib
from gradloop.loop.callbacks import checkpointing, early_stopping, nan_guard
from gradloop.loop.keras_steps import ModelStepTrainer
from gradloop.loop.state import LoopState, validates
from gradloop.loop.trainer import Trainer
from gradloop.run import files as run_files
from gradloop.run import folder as run_folder
from gradloop.run import lock as run_lock
from gradloop.run import start as run_start

# What the library's errors advise when a run cannot go on: the CLI's way to do it.
_START_OVER = "start the run again with --overwrite"


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop: signals.StopSignals | None = None,
    out: TextIO | None = None,
    notify: Callable[[str], None] | None = None,
    profile: bool = False,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    given: Collection[str] | None = None,
) -> Path:
    """Run one experiment, or continue one (``resume``), and return its run directory.

    With ``stop`` (the CLI's :class:`~gradloop.loop.signals.StopSignals`), SIGTERM
    and SIGINT end the run after a checkpoint by raising :class:`~gradloop.app.interrupted.RunInterrupted`.
    ``profile`` first prints where a step's time goes (on a copy of the model:
    the run is unaffected). The chief holds the run directory's lock
    (:func:`gradloop.run.lock.lock`) from before it changes anything until it returns.
    ``callbacks`` (a sweep's pruning, say) run after gradloop's own, so an epoch's
    checkpoint and history are written before they see the epoch end. ``given``: the config keys the
    user set (flags, config file), which a model bringing its own training refuses where they would be
    ignored (:func:`gradloop.app.own_step.refuse_replaced`; None: those differing from the defaults).
    """
    with contextlib.ExitStack() as held:  # the run's lock, dropped however training ends
        return _train(
            config,
            held,
            resume=resume,
            overwrite=overwrite,
            stop=stop,
            out=out,
            notify=notify,
            profile=profile,
            callbacks=callbacks,
            given=given,
        )


def _train(
    config: TrainConfig,
    held: contextlib.ExitStack,
    *,
    resume: bool,
    overwrite: bool,
    stop: signals.StopSignals | None,
    out: TextIO | None,
    notify: Callable[[str], None] | None,
    profile: bool,
    callbacks: Sequence[keras.callbacks.Callback],
    given: Collection[str] | None,
) -> Path:
    out = out or sys.stdout
    notify = notify or (lambda line: print(line, file=sys.stderr))
    strategy = assemble.make_strategy(config)  # a multi-worker strategy must exist before any other TensorFlow work
    if stop is not None and config.strategy == "multi_worker":
        stop.catch()  # take SIGTERM back from TensorFlow's coordination service
    chief = distribute.is_chief(strategy)
    folder = specs.run_folder_spec(config, resume=resume, overwrite=overwrite)
    resumed = _check_resumable(folder, strategy) if resume else None
    if resumed is None and config.model not in MODELS:
        models.check_model_source(config.model)
    path = _run_path(folder, chief=chief)
    held.enter_context(_naming_full_disk(folder, path, chief=chief))
    if resume and chief:  # a new run is locked as it is created (_start)
        held.enter_context(run_lock.lock(path))
        # Read again under the lock: a writer that ended meanwhile may have moved the run on.
        resumed = run_start.check_resumable(
            path, epochs=folder.epochs, workers=distribute.worker_count(strategy), writer=False
        )

    data = assemble.load_data(config, notify=notify)  # bad data, model, loss or metric fail before anything is written
    feed = Feed.of(config, data)
    trainer, guard = _trainer(config, strategy, data, feed, model_spec=_model_spec(resumed))
    if isinstance(trainer, ModelStepTrainer):
        own_step.refuse_replaced(config, trainer.model, given if resumed is None else None)
    check_fits(config, data, trainer, feed)
    monitor = own_step.run_monitor(config, trainer, feed.train(0), feed.val)
    saved = own_step.model_files(trainer, notify=notify)
    own = isinstance(trainer, ModelStepTrainer)  # its steps take a tf.data pipeline, whose position resumes
    class_weight = assemble.class_weights(config, data)
    if resumed is not None:
        check_same_data(resumed, data, data_path=config.data, run_dir=folder.run_dir)
        # before the restore: it reads the copy
        feed = Feed.of(config, _decoded_once(config.image_cache, data, path, notify), datasets=own)
        run, saver, state = _resume(config, resumed, data, path, trainer, feed, notify=notify)
    else:
        run, saver, state = _start(
            config,
            data,
            path,
            trainer,
            strategy,
            overwrite=overwrite and chief,
            held=held,
            class_weight=class_weight,
            monitor=monitor,
            saved=saved,
        )
        with ending_recorded(run, config, chief=chief):
            feed = Feed.of(config, _decoded_once(config.image_cache, data, path, notify), datasets=own)
    _announce(config, data, trainer, state, path, out=out)
    if profile:
        from gradloop.loop.profiler import format_profile, profile_phases

        print(
            format_profile(profile_phases(trainer, in_memory.as_dataset(feed.train(0))), config.batch_size),
            file=out,
            flush=True,
        )

    best = _best_model(config, run, monitor, saved)
    start = time.perf_counter()
    with ending_recorded(run, config, chief=chief), _naming_damaged_files(data):
        history = trainer.fit(
            feed.train,
            validation_data=feed.val,
            epochs=config.epochs,
            initial_state=state,
            callbacks=[
                *_callbacks(config, run, saver, guard, best, state, feed, stop, out),
                *user_callbacks.for_run(config, run, resumed=state is not None),  # --callback FILE.py:NAME
                *callbacks,
            ],
            end_groups_every=config.checkpoint_every or None,
            verbose=0,  # its own Progress is among the callbacks
            class_weight=class_weight,
            validation_freq=config.validation_every,
        )
    record_finished(run, trainer, history.history, best, started=start, notify=notify)
    if not chief:
        return Path(folder.run_dir) if folder.run_dir else path
    files = ", ".join(sorted(p.name + "/" * p.is_dir() for p in path.iterdir()))
    print(f"gradloop: wrote {path}/ ({files})", file=out)
    return path


def _trainer(
    config: TrainConfig, strategy: tf.distribute.Strategy, data: RunData, feed: Feed, *, model_spec: str | None
) -> tuple[Trainer, nan_guard.StopOnNonFiniteLoss]:
    """The seeded trainer, its step watched by the NaN guard."""
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    guard = nan_guard.StopOnNonFiniteLoss(
        steps_per_epoch=feed.steps_per_epoch, hint=f"lower --lr (it was {config.lr:g})"
    )
    watched = guard.watch(step_lib.train_step)
    trainer = assemble.build_trainer(
        config, strategy, data, watched, feed.steps_per_epoch, model_spec=model_spec, nan_guard=guard
    )
    if isinstance(trainer, ModelStepTrainer):
        guard.hint = "lower the learning rates the model's compile gives its optimizers"
    return trainer, guard


def _best_model(
    config: TrainConfig, run: run_folder.RunDir, monitor: str | None, saved: dict
) -> early_stopping.BestModelEarlyStopping:
    """Early stopping and the best model on ``monitor`` (val_loss by default); a model that would not load
    from model.keras again keeps its best epoch's weights alone."""
    return early_stopping.BestModelEarlyStopping(
        run / saved["best"],
        patience=config.early_stop,
        monitor=monitor or "val_loss",
        mode=own_step.mode(monitor) if monitor else "min",
        averaged=config.ema is not None,
        weights_only=not saved["serialized"],
    )


def _start(
    config: TrainConfig,
    data: RunData,
    path: Path,
    trainer: Trainer,
    strategy: tf.distribute.Strategy,
    *,
    overwrite: bool,
    held: contextlib.ExitStack,
    class_weight: dict[int, float] | None,
    monitor: str | None,
    saved: dict,
) -> tuple[run_folder.RunDir, checkpoint.RunCheckpoint, None]:
    """A new run directory (an earlier run's replaced when ``overwrite``), its run.json written,
    its lock kept in ``held``."""
    earlier = (
        held.enter_context(run_lock.lock(path)) if overwrite and path.exists() else None
    )  # before deleting a thing
    if earlier is not None:
        run_start.clear(path)
    run = run_start.claim(path, held=earlier)
    held.enter_context(run.lock)
    saver = checkpoint.RunCheckpoint(
        run / run_files.CHECKPOINTS, trainer, hint=_START_OVER
    )  # after the old run is gone
    model_source = models.copy_model_source(config.model, run.path) if config.model not in MODELS else None
    run.start(
        new_run_info(
            config,
            data,
            strategy,
            trainer,
            model_source=model_source,
            class_weight=class_weight,
            monitor=monitor,
            saved=saved,
        )
    )
    run_files.write_text(run / run_files.MODEL_SUMMARY, models.summary_text(trainer.model))
    return run, saver, None


def _announce(
    config: TrainConfig, data: RunData, trainer: Trainer, state: LoopState | None, path: Path, *, out: TextIO
) -> None:
    action = (
        f"resuming {trainer.model.name} at epoch {state.epoch + 1} step {state.step}"
        if state
        else f"training {trainer.model.name}"
    )
    classes = (
        f"classes {list(recorded_classes(config, data))}"
        if data.class_names is not None
        else "no labels"
        if data.task == UNLABELED
        else f"{data.n_outputs} outputs"
    )
    print(
        f"gradloop: {action} ({own_step.parameters(trainer.model):,} parameters) on {data.description}: {classes}, "
        f"{data.train.n:,} train / {data.val.n if data.val is not None else 0:,} val samples, "
        f"{config.epochs} epoch{'s' * (config.epochs != 1)} -> {path}",
        file=out,
        flush=True,
    )


def _callbacks(
    config: TrainConfig,
    run: run_folder.RunDir,
    saver: checkpoint.RunCheckpoint,
    guard: nan_guard.StopOnNonFiniteLoss,
    best: early_stopping.BestModelEarlyStopping,
    state: LoopState | None,
    feed: Feed,
    stop: signals.StopSignals | None,
    out: TextIO,
) -> list[keras.callbacks.Callback]:
    return [  # the guard first: a diverged state must stop before Checkpointing could save it
        guard,
        *([keras.callbacks.SwapEMAWeights()] if config.ema is not None else []),  # validate on the averages
        progress.Progress(batch_size=config.batch_size, stream=out),
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: run.record_epoch(logs or {})),
        summaries.TensorBoardSummaries(
            run / run_files.TENSORBOARD,
            every_steps=config.summary_every,
            initial_step=state.epoch * feed.steps_per_epoch if state else 0,
            hparams=config.to_dict(),
            trial_id=str(run.path),
        ),
        best,
        checkpointing.Checkpointing(
            saver,
            every_steps=config.checkpoint_every or None,
            every_seconds=config.checkpoint_seconds or None,
            stop=stop,
        ),
    ]


def _check_resumable(folder: RunFolderSpec, strategy: tf.distribute.Strategy) -> run_folder.RunDir:
    if not folder.run_dir:
        raise ConfigError("--resume needs --run-dir DIR, the run to continue")
    return run_start.check_resumable(
        folder.run_dir,
        epochs=folder.epochs,
        workers=distribute.worker_count(strategy),
        writer=distribute.is_chief(strategy),
    )  # the other workers read it as the chief locks it


def _run_path(folder: RunFolderSpec, *, chief: bool) -> Path:
    """Only the chief writes the run directory; other workers write to a scratch folder, gone when they exit."""
    if not chief:
        scratch = Path(tempfile.mkdtemp(prefix="gradloop-worker-"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        return scratch
    if folder.resume:
        return Path(folder.run_dir)
    return run_start.check_new(
        Path(folder.run_dir) if folder.run_dir else run_start.default_path(), overwrite=folder.overwrite
    )


def _model_spec(resumed: run_folder.RunDir | None) -> str | None:
    """Where a resumed run's own model comes from: the copy of the user's file in its folder."""
    source = resumed.info.get("model_source") if resumed is not None else None
    if source == models.MODEL_INITIAL or str(source).startswith(f"{run_files.MODEL_SOURCE}:"):
        return str(resumed / source)
    return source  # package.module:FUNCTION, importable as it was


def check_same_data(resumed: run_folder.RunDir, data: RunData, *, data_path: str | None, run_dir: str | None) -> None:
    """A resume needs the data its run started on (run.json's fingerprint): ``data_path`` (--data) as
    read now, the run in ``run_dir``."""
    then = resumed.info.get("data", {}).get("fingerprint")
    if then and then != data.fingerprint:
        raise RunDirError(
            f"the data in {data_path} changed since run {run_dir} started "
            f"({describe_change(then, data.fingerprint)}); "
            "a resume needs the same data: put it back, or start a new run"
        )


def _decoded_once(cache_mode: str, data: RunData, path: Path, notify: Callable[[str], None]) -> RunData:
    """An image folder's training and validation images decoded once into the run's cache/ (--image-cache)."""
    if cache_mode == "off" or data.kind != "images":
        return data
    return image_cache.decode_once(data, run_files.own_path(path, run_files.CACHE), notify=notify)


def _resume(
    config: TrainConfig,
    resumed: run_folder.RunDir,
    data: RunData,
    path: Path,
    trainer: Trainer,
    feed: Feed,
    *,
    notify: Callable[[str], None],
) -> tuple[run_folder.RunDir, checkpoint.RunCheckpoint, LoopState]:
    """Restore the run's last checkpoint and note the resume in its run.json. Every worker restores
    the chief's checkpoint (on a file system they share); the others save to scratch (``path``,
    whose own RunDir then holds the chief's run.json). A resume on other kernels than the run's
    last is said, since it cannot end bit-identical to an unstopped run."""
    saver = checkpoint.RunCheckpoint(
        path / run_files.CHECKPOINTS, trainer, restore_from=resumed / run_files.CHECKPOINTS, hint=_START_OVER
    )
    state = saver.restore(feed.train, notify=lambda line: notify(f"gradloop: note: {line}"))
    if state.epoch > config.epochs:
        raise ConfigError(f"run {config.run_dir} has done {state.epoch} epochs; pass --epochs {state.epoch} or more")
    kernels = cpu.onednn_kernels()
    before = [resumed.info, *resumed.info.get("resumed", [])][-1].get("onednn_kernels")  # where the run last trained
    if None not in (kernels, before) and kernels != before:
        names = cpu.KERNEL_NAMES
        notify(
            f"gradloop: note: this run trained on TensorFlow's {names[before]} kernels and resumes on its "
            f"{names[kernels]} kernels, so its numbers will differ in the last bits from a run never stopped; "
            f"set TF_ENABLE_ONEDNN_OPTS={int(before)} to resume on {names[before]}'s"
        )
    run = run_folder.RunDir(path, resumed.info)
    run.continue_history(state.history, validated=functools.partial(validates, validation_freq=config.validation_every))
    run.resume(config=config.to_dict(), epoch=state.epoch + 1, step=state.step, onednn_kernels=kernels)
    return run, saver, state


@contextlib.contextmanager
def _naming_full_disk(folder: RunFolderSpec, path: Path, *, chief: bool) -> Iterator[None]:
    """A write that found the disk full is one DiskFullError naming the run to resume (without --run-dir:
    the runs/<timestamp> chosen), TensorFlow's own (an event file's) included."""
    try:
        yield
    except tf.errors.OpError as exc:
        full = atomic.no_space_in(exc.message)
        if full is None or full[0] is None:
            raise
        error = atomic.disk_full(*full)
        error.run_dir = str(folder.run_dir or path) if chief else None
        raise error from None
    except DiskFullError as exc:
        if chief:
            exc.run_dir = str(folder.run_dir or path)
        raise


@contextlib.contextmanager
def _naming_damaged_files(data: RunData) -> Iterator[None]:
    """An image that fails to decode mid-epoch (its header looked fine) is named in one line:
    TensorFlow's error names no file."""
    try:
        yield
    except tf.errors.InvalidArgumentError:
        for split in (data.train, data.val):
            if hasattr(split, "check_decodable"):
                split.check_decodable()  # raises DataError naming the file
        raise
