"""The sweep's loop, in this process, until no trial is left to start:

    claim a trial (gradloop.sweep.study): an abandoned one, or a new one from Optuna
    its options: the spec's train options and the trial's suggestions (the same again when taken over)
    train it as gradloop train does (gradloop.app.train.train) into SWEEP/trial-NNN, resuming
        from its checkpoint when it has one; PruneOnMetric reports each epoch's metric
    tell the study: complete with the last epoch's metric, pruned, or failed (its error kept)
    then the results (gradloop.sweep.page)

A trial whose run had already ended when its process died is told from its run.json.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import keras
import optuna

from gradloop.app import assemble
from gradloop.app.config import resumed_config
from gradloop.app.train import train
from gradloop.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    GradloopError,
    RunDirError,
    RunInUseError,
    TrainingError,
)
from gradloop.loop.signals import StopSignals
from gradloop.loop.state import validates
from gradloop.run import files as run_files
from gradloop.run import folder as run_folder
from gradloop.run import history as run_history
from gradloop.sweep import page
from gradloop.sweep.spec import Range, SweepSpec
from gradloop.sweep.study import Claim, Storage, Sweep, check_folder

TrialState = optuna.trial.TrialState


def run_sweep(
    spec: SweepSpec,
    *,
    out: str | Path | None = None,
    storage: str | None = None,
    stop: StopSignals | None = None,
    stream: TextIO | None = None,
    notify: Callable[[str], None] = print,
) -> Path:
    """Run the sweep's trials that no other process runs, then write its results; returns the folder."""
    stream = stream or sys.stdout
    folder = Path(out) if out else Path("sweeps") / spec.name
    where = Storage.choose(storage, folder)
    check_folder(folder, spec, where)
    check_metric(spec, notify=notify)
    checked = where.check()  # a database is opened now; nothing has been written yet
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own lines
    # Each trial traces its own model's step: TensorFlow's note that functions were traced again is expected here.
    logging.getLogger("tensorflow").addFilter(
        lambda record: "triggered tf.function retracing" not in record.getMessage()
    )
    sweep = Sweep.open(spec, folder, where, checked)
    print(
        f"gradloop: sweep {folder}: {spec.trials} trials of {', '.join(spec.space)}, {spec.direction} {spec.metric} "
        f"(study in {where.shown})",
        file=stream,
        flush=True,
    )
    while (claim := sweep.claim()) is not None:
        try:
            run_trial(sweep, claim, stop=stop, stream=stream, notify=notify)
        finally:
            claim.release()
            keras.backend.clear_session()  # the next trial's model starts from a clean graph
    with sweep.held():
        results = page.write_results(sweep)
    print(page.format_results(results, folder), file=stream, flush=True)
    return folder


def check_metric(spec: SweepSpec, *, notify: Callable[[str], None]) -> None:
    """The spec's metric is a column of every trial's history (the data says the task, so it is read)."""
    config = spec.config(_first(spec))
    held_out = spec.space.get("val_fraction")
    fractions = (
        [config.val_fraction]
        if held_out is None
        else [held_out.low]
        if isinstance(held_out, Range)
        else held_out.values
    )
    if spec.metric.startswith("val_") and min(fractions) == 0:
        raise ConfigError(
            f"metric {spec.metric} in sweep spec {spec.path} is not recorded by runs whose val_fraction "
            "is 0 (they hold out no validation data); hold out data or use a train_ metric"
        )
    data = assemble.load_data(config, notify=notify)
    metrics = [_history_name(m) for m in assemble.build_metrics(config, data.task)]
    if "metrics" in spec.space:  # each choice records its own
        listed = [
            assemble.build_metrics(spec.config({**_first(spec), "metrics": c}), data.task)
            for c in spec.space["metrics"].values
        ]
        metrics = [m for m in metrics if all(m in map(_history_name, names) for names in listed)]
    recorded = [f"{split}_{name}" for split in ("train", "val") for name in ("loss", *metrics)]
    if spec.metric not in recorded and not _logs_its_own(config, data):
        raise ConfigError(
            f"metric {spec.metric} in sweep spec {spec.path} is not recorded by these runs; "
            f"they record {', '.join(recorded)}"
        )


def _logs_its_own(config: Any, data: Any) -> bool:
    """Whether the trials' model brings its own train_step (built once, here), whose logs name themselves
    (a GAN's val_g_loss): a trial that does not record the metric then fails, naming it."""
    from gradloop.app import models
    from gradloop.loop import keras_steps

    if config.model in assemble.MODELS or str(config.model).endswith(".keras"):
        return False
    task, n = data.task, data.n_outputs if data.task in ("classification", "regression") else None
    model = models.user_model(
        config.model,
        input_shape=data.train.element_shape,
        num_classes=n if task == "classification" else None,
        num_outputs=n if task == "regression" else None,
        model_args=config.model_args,
    )
    return keras_steps.overrides(model, "train_step")


def _history_name(metric: str) -> str:
    return "accuracy" if metric.lower() in ("accuracy", "acc") else metric


def _first(spec: SweepSpec) -> dict[str, Any]:
    return {name: (s.low if isinstance(s, Range) else s.values[0]) for name, s in spec.space.items()}


def suggest(trial: optuna.Trial, spec: SweepSpec) -> dict[str, Any]:
    """The trial's option values; Optuna hands back a value it suggested before, so a trial taken
    over gets the same ones."""
    params = {}
    for name, space in spec.space.items():
        if isinstance(space, Range) and space.integer:
            params[name] = trial.suggest_int(name, int(space.low), int(space.high), log=space.log)
        elif isinstance(space, Range):
            params[name] = trial.suggest_float(name, float(space.low), float(space.high), log=space.log)
        else:
            params[name] = space.decode(trial.suggest_categorical(name, list(space.encoded)))
    return params


def run_trial(
    sweep: Sweep, claim: Claim, *, stop: StopSignals | None, stream: TextIO, notify: Callable[[str], None]
) -> None:
    trial, spec = claim.trial, sweep.spec
    path = sweep.trial_dir(trial.number)
    params = suggest(trial, spec)
    shown = "  ".join(f"{k}={page.format_value(v)}" for k, v in params.items())
    run = _read_run(path)
    status = run.info.get("status") if run else None
    resume = status in ("running", "interrupted") and (path / run_files.CHECKPOINTS / "checkpoint").is_file()
    doing = "resuming" if resume else "continuing" if status in ("finished", "failed") else "starting"
    print(f"gradloop: sweep: {doing} trial {trial.number} ({path}): {shown}", file=stream, flush=True)
    if status == "failed":  # its process died after the run failed, before the study heard
        return _fail(sweep, trial, run.info.get("error", "the run failed"), notify)
    if status != "finished":
        config = (
            resumed_config(run.info["config"], run_dir=str(path)) if resume else spec.config(params, run_dir=str(path))
        )
        pruning = PruneOnMetric(trial, spec.metric, epochs=config.epochs, validation_every=config.validation_every)
        try:
            train(
                config,
                resume=resume,
                overwrite=not resume and path.exists(),
                stop=stop,
                out=stream,
                notify=notify,
                callbacks=[pruning],
            )
        except RunInUseError:  # another process holds the trial's run: not the trial's fault
            raise
        # this trial's options or run, not the sweep's
        except (TrainingError, ConfigError, DataError, RunDirError, CheckpointError) as exc:
            return _fail(sweep, trial, str(exc), notify)
    run = run_folder.RunDir.open(path)
    _tell(sweep, trial, run, stream)


def _tell(sweep: Sweep, trial: optuna.Trial, run: run_folder.RunDir, stream: TextIO) -> None:
    """Complete with the metric of the last validated epoch (the model.keras that ``evaluate``
    reads), or pruned when the run stopped before its epochs without an early stop of its own
    (only the pruner stops it so)."""
    metric = sweep.spec.metric
    history = run.read_history()
    values = [v for v in history.get(metric) or [] if v is not None]  # epochs without validation hold null
    done, epochs = run.info.get("epochs_done", len(history.get("train_loss", values))), run.info["config"]["epochs"]
    if done < epochs and run.info.get("stopped_early") is None:
        sweep.study.tell(trial, state=TrialState.PRUNED)
        last = f": {metric} {values[-1]:.4f}" if values else ""
        print(f"gradloop: sweep: trial {trial.number} pruned after epoch {done}{last}", file=stream, flush=True)
        return
    if not values:
        return _fail(sweep, trial, f"the run recorded no {metric}", lambda line: print(line, file=stream, flush=True))
    sweep.study.tell(trial, values[-1])
    print(f"gradloop: sweep: trial {trial.number} complete: {metric} {values[-1]:.4f}", file=stream, flush=True)


def _fail(sweep: Sweep, trial: optuna.Trial, error: str, notify: Callable[[str], None]) -> None:
    trial.set_user_attr("error", error)
    sweep.study.tell(trial, state=TrialState.FAIL)
    notify(f"gradloop: sweep: trial {trial.number} failed: {error}")


def _read_run(path: Path) -> run_folder.RunDir | None:
    """The trial's run, if it got as far as writing its run.json."""
    try:
        return run_folder.RunDir.open(path)
    except GradloopError:
        return None


class PruneOnMetric(keras.callbacks.Callback):
    """Report the trial's ``metric`` (a history column) to Optuna at each epoch's end (Optuna's step:
    the epoch's index from 0), and stop training when its pruner says so; never at the last of
    ``epochs``, where nothing is left to save. A resumed trial first reports the epochs of its
    checkpoint that the study has not heard of (its process died between the two)."""

    def __init__(self, trial: optuna.Trial, metric: str, *, epochs: int, validation_every: int = 1) -> None:
        super().__init__()
        self.trial, self.epochs, self.validation_every = trial, epochs, validation_every
        self.key = metric.removeprefix("train_")  # the Keras name in the logs: loss, accuracy, val_loss, ...

    def on_train_begin(self, logs=None) -> None:
        validated = functools.partial(validates, validation_freq=self.validation_every)
        history = run_history.aligned_history(
            self.model.history.history, validated
        )  # val_ lists: validated epochs only
        values = history.get(self.key, [])
        frozen = next(t for t in self.trial.study.get_trials(deepcopy=False) if t.number == self.trial.number)
        for epoch, value in enumerate(values):
            if value is not None and epoch not in frozen.intermediate_values:
                self.trial.report(float(value), epoch)
        self._prune_after(len(values))

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        value = (logs or {}).get(self.key)
        if value is not None:
            self.trial.report(float(value), epoch)
            self._prune_after(epoch + 1)

    def _prune_after(self, done: int) -> None:
        if 0 < done < self.epochs and self.trial.should_prune():
            self.model.stop_training = True
