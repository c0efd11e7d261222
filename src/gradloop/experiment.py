"""``gradloop train`` as a function: config in, run directory out.

    data   = load, select classes, split, scale     (gradloop.data)
    model  = build the MLP or CNN, seeded           (gradloop.models)
    optim  = Adam with the schedule, clipping, accumulation, loss scaling  (build_optimizer)
    fit    = Trainer(...).fit(...)                  (gradloop.trainer)
             checkpointed, resumable               (gradloop.checkpoint)
             early stop, best model, NaN guard     (gradloop.stopping)
    record = history.json/.csv/.png, model.keras, run.json  (gradloop.logs, gradloop.plots)
             tensorboard/ event files                       (gradloop.summaries)

run.json's ``status`` says where a run is: ``running`` (or killed), ``interrupted``
(stopped by a signal after a checkpoint), ``finished`` or ``failed`` (diverged).
"""

from __future__ import annotations

import atexit
import contextlib
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
from typing import Callable, Iterator, TextIO

import keras
import numpy as np
import tensorflow as tf

from gradloop import __version__, checkpoint, cpu, data, distribute, logs, models, plots, schedules, stopping, summaries
from gradloop import step as step_lib
from gradloop.config import TrainConfig
from gradloop.errors import ConfigError, DataError, RunDirError, TrainingError
from gradloop.state import LoopState
from gradloop.step import CompileOptions
from gradloop.trainer import TrainData, Trainer


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


def check_new_run_dir(config: TrainConfig, *, overwrite: bool = False) -> Path:
    """The run directory to create; an existing non-empty one is refused so that
    an earlier run's results are never overwritten, unless ``overwrite`` and it
    is a gradloop run (never an arbitrary folder)."""
    path = Path(config.run_dir) if config.run_dir else Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run directory {path} is a file; choose another --run-dir")
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise RunDirError(
                f"run directory {path} already exists and is not empty; choose another --run-dir, "
                "continue it with --resume, or replace it with --overwrite"
            )
        if not (path / "run.json").is_file():
            raise RunDirError(f"{path} is not a gradloop run (no run.json), so --overwrite leaves it alone; choose another --run-dir")
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


def read_run_to_resume(run_dir: str | Path) -> dict:
    """The run.json of a run directory to resume; refused when it is no run."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirError(f"run directory {path} does not exist, so there is nothing to resume; drop --resume to start it")
    if not any(path.iterdir()):
        raise RunDirError(f"run directory {path} is empty, so there is nothing to resume; drop --resume to start it")
    return logs.read_run_json(
        path, missing=f"{path} is not a gradloop run (no run.json); pass --run-dir the folder of a gradloop train"
    )


def check_resumable(config: TrainConfig, *, workers: int = 1) -> dict:
    """The run.json of the run to resume; refused when there is nothing to resume,
    or when a multi-worker run would resume on another number of ``workers``."""
    if not config.run_dir:
        raise ConfigError("--resume needs --run-dir DIR, the run to continue")
    path = Path(config.run_dir)
    info = read_run_to_resume(path)
    if not (path / "checkpoints" / "checkpoint").is_file():
        raise RunDirError(f"run {path} has no checkpoint to resume from; start it again with --overwrite")
    done, status = info.get("epochs_done", 0), info.get("status")
    if status == "failed":
        raise RunDirError(f"run {path} failed, so there is nothing to resume: {info.get('error', 'see run.json')}")
    if status == "finished" and info.get("stopped_early") is not None:
        raise RunDirError(f"run {path} stopped early after {done} epochs (val_loss stopped improving); nothing to resume")
    if status == "finished" and config.epochs <= done:
        raise RunDirError(
            f"run {path} already finished {done} epochs; nothing to resume (pass --epochs above {done} to train it further)"
        )
    # Another worker count would see the same global batches (DATA sharding) but sum them in another order,
    # untested: refused, so that a resume stays exact. (An older run.json has no "workers": one replica each.)
    trained = info.get("workers", info.get("num_replicas", 1))
    if info.get("strategy") == "multi_worker" and trained != workers:
        raise ConfigError(
            f"run {path} trained on {trained} workers but this resume has {workers}; a multi-worker run resumes on "
            f"as many workers as it trained on (gradloop launch --workers {trained}, or a TF_CONFIG of {trained})"
        )
    return info


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
    # A multi-worker strategy must exist before any other TensorFlow work.
    strategy = distribute.make_strategy(config.strategy, replicas=config.replicas)
    if stop is not None and config.strategy == "multi_worker":
        stop.catch()  # take SIGTERM back from TensorFlow's coordination service
    chief = distribute.is_chief(strategy)
    run_info = check_resumable(config, workers=distribute.worker_count(strategy)) if resume else None
    run_dir = _run_dir(config, chief=chief, resume=resume, overwrite=overwrite)
    prepared = prepare_data(config, notify=notify)  # bad data fails before anything is written
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    (x_train, y_train), (x_val, y_val) = prepared.train, prepared.val
    train_ds = data.shuffled_epochs(x_train, y_train, batch_size=config.batch_size, seed=config.seed)
    val_ds = data.make_dataset(x_val, y_val, batch_size=config.batch_size, shuffle=False) if len(x_val) else None
    steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
    guard = stopping.StopOnNonFiniteLoss(steps_per_epoch=steps_per_epoch, hint=f"lower --lr (it was {config.lr:g})")
    trainer = build_trainer(config, strategy, x_train.shape[1:], guard.watch(step_lib.train_step), steps_per_epoch)

    if resume:
        saver, state = _resume(config, run_dir, trainer, train_ds, run_info, notify=notify)
        action = f"resuming {trainer.model.name} at epoch {state.epoch + 1} step {state.step}"
    else:
        if overwrite and chief and run_dir.exists():
            shutil.rmtree(run_dir)
        make_run_dir(run_dir)
        saver = checkpoint.RunCheckpoint(run_dir / "checkpoints", trainer)  # after the old run is gone
        state, run_info, action = None, new_run_info(config, prepared, strategy), f"training {trainer.model.name}"
    logs.write_json(run_dir / "run.json", run_info)
    print(
        f"gradloop: {action} on {prepared.source}: classes {list(prepared.classes)}, "
        f"{len(x_train):,} train / {len(x_val):,} val samples, {config.epochs} epochs -> {run_dir}",
        file=out,
        flush=True,
    )
    if profile:
        from gradloop.profile import format_profile, profile_phases

        print(format_profile(profile_phases(trainer, train_ds(0)), config.batch_size), file=out, flush=True)

    best = stopping.KeepBestModel(run_dir / "model.best.keras", patience=config.early_stop)
    callbacks = [  # the guard first: a diverged state must stop before Checkpointing could save it
        guard,
        logs.Progress(batch_size=config.batch_size, stream=out),
        logs.HistoryFiles(run_dir, state.history if state else None),
        summaries.TensorBoardSummaries(
            run_dir / "tensorboard", every_steps=config.summary_every,
            initial_step=state.epoch * steps_per_epoch if state else 0,
        ),
        best,
        checkpoint.Checkpointing(
            saver, every_steps=config.checkpoint_every or None, every_seconds=config.checkpoint_seconds or None, stop=stop
        ),
    ]
    start = time.perf_counter()
    with _ending_recorded(run_dir, run_info, config, chief=chief):
        history = trainer.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            callbacks=callbacks,
            initial_state=state,
            callback_every=config.checkpoint_every or None,
        )
    _record_finished(run_dir, trainer.model, history.history, run_info, best, started=start)
    if not chief:
        return Path(config.run_dir) if config.run_dir else run_dir
    files = ", ".join(sorted(p.name + "/" * p.is_dir() for p in run_dir.iterdir()))
    print(f"gradloop: wrote {run_dir}/ ({files})", file=out)
    return run_dir


def build_trainer(
    config: TrainConfig,
    strategy: tf.distribute.Strategy,
    input_shape: tuple[int, ...],
    train_step: step_lib.StepFn,
    steps_per_epoch: int,
) -> Trainer:
    """The reference experiment's model, optimizer, loss and metric, built in the strategy's scope."""
    with strategy.scope():
        return Trainer(
            build_model(config, input_shape),
            optimizer=build_optimizer(config, steps_per_epoch=steps_per_epoch),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            train_step=train_step,
            options=CompileOptions(steps_per_execution=config.steps_per_execution, jit_compile=config.jit_compile),
            strategy=strategy,
        )


def _run_dir(config: TrainConfig, *, chief: bool, resume: bool, overwrite: bool) -> Path:
    """Only the chief writes the run directory; other workers write to a scratch folder, gone when they exit."""
    if not chief:
        scratch = Path(tempfile.mkdtemp(prefix="gradloop-worker-"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        return scratch
    return Path(config.run_dir) if resume else check_new_run_dir(config, overwrite=overwrite)


def _resume(
    config: TrainConfig, run_dir: Path, trainer: Trainer, train_ds: TrainData, run_info: dict, *,
    notify: Callable[[str], None],
) -> tuple[checkpoint.RunCheckpoint, LoopState]:
    """Restore the run's last checkpoint and note the resume in ``run_info``. Every worker restores
    the chief's checkpoint (on a file system they share); the others save to scratch. A resume on
    other kernels than the run's last is said, since it cannot end bit-identical to an unstopped run."""
    saver = checkpoint.RunCheckpoint(run_dir / "checkpoints", trainer, restore_from=Path(config.run_dir) / "checkpoints")
    state = saver.restore(train_ds)
    if state.epoch > config.epochs:
        raise ConfigError(f"run {config.run_dir} has done {state.epoch} epochs; pass --epochs {state.epoch} or more")
    kernels = cpu.onednn_kernels()
    before = [run_info, *run_info.get("resumed", [])][-1].get("onednn_kernels")  # where the run last trained
    if None not in (kernels, before) and kernels != before:
        names = cpu.KERNEL_NAMES
        notify(f"gradloop: note: this run trained on TensorFlow's {names[before]} kernels and resumes on its "
               f"{names[kernels]} kernels, so its numbers will differ in the last bits from a run never stopped; "
               f"set TF_ENABLE_ONEDNN_OPTS={int(before)} to resume on {names[before]}'s")
    run_info.setdefault("resumed", []).append(
        {"at": _now(), "epoch": state.epoch + 1, "step": state.step, "onednn_kernels": kernels}
    )
    run_info.update(status="running", config=config.to_dict())
    run_info.pop("interrupted_at", None)
    return saver, state


@contextlib.contextmanager
def _ending_recorded(run_dir: Path, run_info: dict, config: TrainConfig, *, chief: bool) -> Iterator[None]:
    """run.json says why a run ended before its last epoch: ``interrupted`` (resumable) or ``failed``."""
    try:
        yield
    except checkpoint.Interrupted as exc:
        run_info.update(status="interrupted", interrupted_at={"epoch": exc.epoch + 1, "step": exc.step})
        logs.write_json(run_dir / "run.json", run_info)
        if chief:  # without --run-dir: the runs/<timestamp> it chose (another worker's own folder is scratch)
            exc.run_dir = str(config.run_dir or run_dir)
        raise
    except TrainingError as exc:
        run_info.update(status="failed", error=str(exc))
        logs.write_json(run_dir / "run.json", run_info)
        raise


def _record_finished(
    run_dir: Path, model: keras.Model, history: dict, run_info: dict, best: stopping.KeepBestModel, *, started: float
) -> None:
    """The finished run's files: model.keras, history.json/.csv/.png, and run.json's ``finished``
    (``seconds``: this process's share, from ``started`` to the files written, added to earlier ones')."""
    save_model(model, run_dir / "model.keras")
    tutorial = logs.write_history(run_dir, history)
    plots.plot_history(tutorial, run_dir / "history.png")
    run_info.update(
        status="finished",
        epochs_done=len(history.get("loss", [])),
        stopped_early=best.stopped_epoch + 1 if best.stopped_epoch is not None else None,
        seconds=round(run_info.get("seconds", 0) + time.perf_counter() - started, 3),
        final={k: v[-1] for k, v in tutorial.items()},
    )
    logs.write_json(run_dir / "run.json", run_info)


def new_run_info(config: TrainConfig, prepared: PreparedData, strategy: tf.distribute.Strategy) -> dict:
    """run.json of a new run: its resolved config, data and versions."""
    x_train, x_val = prepared.train[0], prepared.val[0]
    return {
        "status": "running",
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
        "started": _now(),
    }


def save_model(model: keras.Model, path: Path) -> None:
    """Save under a temporary name, then rename: a killed save never leaves half a model."""
    tmp = path.with_name(path.stem + ".partial.keras")
    model.save(tmp)
    os.replace(tmp, path)


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")
