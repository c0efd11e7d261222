"""The experiment's configuration: one typed, frozen dataclass, validated once.

Precedence is ``defaults < --config FILE.yaml < command-line flags``. The
defaults are the reference experiment of the tutorial (MNIST classes 0, 1, 2;
MLP 512-256-128; Adam 1e-4; batch 32; 10 epochs; 1/6 held out).

Each field is also a ``gradloop train`` flag, described once, on the field
(:class:`Flag`); the CLI builds the flag from the field's name, type, default
and that description, so a default or a choice is never written twice.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gradloop.app.config_checks import check_callbacks, check_own_data
from gradloop.app.config_values import (
    check_choice,
    check_class_weight,
    check_int,
    is_number,
    names,
    parse_class_names,
    parse_float,
    parse_int_list,
    read_yaml_mapping,
    shown,
)
from gradloop.data import DATASETS, parse_classes
from gradloop.data.sources import COLOR_MODES, FILLS, HEADERS, TASKS
from gradloop.errors import ConfigError
from gradloop.loop.accepted import LR_SCHEDULES, MAX_INT32  # the library's own, read without TensorFlow

MODELS = ("mlp", "cnn")  # built in; also FILE.py:FUNCTION, package.module:FUNCTION or FILE.keras
REFERENCE_CLASSES = (0, 1, 2)  # the tutorial's digits, when no --data (which keeps all its classes)
STRATEGIES = ("default", "mirrored", "multi_worker")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
IMAGE_CACHE = ("auto", "off")  # gradloop.data.sources.image_cache: decode an image folder once, or every epoch
# --model: a built-in, FILE.py:FUNCTION or package.module:FUNCTION, or a saved FILE.keras
MODEL_SPEC = re.compile(r"(?:.+\.keras|.+:[A-Za-z_][A-Za-z0-9_]*)")
DEFAULT_EPOCHS = 10  # also the run whose XLA choice bench's "gradloop" variant makes
MAX_SEED = 2**32 - 1  # numpy's legacy seed, which keras.utils.set_random_seed sets, takes no more
# 0.4 GB of float32 weights, 1.6 GB with gradients and Adam's slots: far more than MNIST needs, and a
# typo one digit longer would exhaust memory (or meet the OOM killer, which leaves no message at all).
MAX_MLP_WEIGHTS = 10**8
# Each CPU replica traces the step again, so start-up grows with their number: past a few per core, a
# run can spend minutes tracing before its first step.
MAX_CPU_REPLICAS = 16
# null means "the default" for these keys; for the others it is a mistake
_NULLABLE = (
    "dataset",
    "data_dir",
    "run_dir",
    "replicas",
    "decay_steps",
    "clip_norm",
    "classes",
    "data",
    "target",
    "task",
    "image_size",
    "color_mode",
    "fill",
    "loss",
    "metrics",
    "optimizer",
    "model_args",
    "callbacks",
    "callback_args",
    "class_weight",
    "ema",
    "monitor",
)


@dataclass(frozen=True)
class Flag:
    """How a :class:`TrainConfig` field reads as a ``gradloop train`` flag.

    The CLI takes the rest from the field: the flag ``--field-name``, its type
    (int, float, text; a bool is a switch that turns the option on) and the
    help's "(default: ...)" from the field's default.
    """

    help: str
    name: str = ""  # the flag, where it is not --field-name
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    # True: argparse refuses any other value ("invalid choice: ..."); False: the config's own check does
    # ("... must be one of ..."), as for a value from a --config file.
    parser_checks_choices: bool = True
    unset: str = ""  # what a default of None means, for the help
    # False: no flag built from the field: a --config file key only (a mapping has no flag syntax), or a
    # flag its command adds itself (--callback, which repeats)
    cli: bool = True


def _option(default: Any, help: str, **flag: Any) -> Any:
    """A field with its flag: ``seed: int = _option(42, "the random seed", metavar="N")``."""
    return dataclasses.field(default=default, metadata={"flag": Flag(help, **flag)})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a ``gradloop train`` run computes.

    Each field's help, beside it, says what it means (``gradloop train --help``
    shows them all); steps count batches. ``classes`` are kept in the user's
    order: ``classes[i]`` becomes label ``i``. The training options are used
    by :mod:`gradloop.loop.schedules` and :func:`gradloop.app.assemble.build_optimizer`;
    checkpoints by step or by time add to those at each epoch's end.
    """

    data: str | None = _option(
        None,
        "your own data: a CSV file (with --target), an .npz or a folder of .npy files, a folder with a "
        "sub-folder of images per class, or FILE.py:FUNCTION / package.module:FUNCTION",
        metavar="PATH",
        unset="a built-in --dataset",
    )
    target: str | None = _option(
        None,
        "the CSV column to predict (by position, 0, 1, ..., in a file without a header row)",
        metavar="COLUMN",
        unset="none: the table has no labels",
    )
    header: str = _option(
        "auto",
        "whether a CSV's first row names the columns: auto reads it as data when it has a number above "
        "every column of numbers",
        choices=HEADERS,
        parser_checks_choices=False,
    )
    task: str | None = _option(
        None,
        "what the model predicts",
        choices=TASKS,
        parser_checks_choices=False,
        unset="classification, or regression for targets with non-integer numbers",
    )
    image_size: tuple[int, ...] | None = _option(
        None,
        "resize images to H,W pixels",
        metavar="H,W",
        unset="the images' own size when they all agree",
    )
    color_mode: str | None = _option(
        None,
        "image channels",
        choices=COLOR_MODES,
        parser_checks_choices=False,
        unset="what the images are",
    )
    image_cache: str = _option(
        "auto",
        "an image folder's pixels: auto decodes them once into the run's cache/ folder (when half the free "
        "disk holds them; deleted when the run finishes) and reads them from there every epoch; off decodes the "
        "files every epoch",
        choices=IMAGE_CACHE,
    )
    fill: str | None = _option(
        None,
        "missing CSV cells: the training column's mean, zero, or drop the row",
        choices=FILLS,
        parser_checks_choices=False,
        unset="an error naming the row and column",
    )
    dataset: str | None = _option(
        None,
        "the data set to train on",
        choices=DATASETS,
        parser_checks_choices=False,
        unset="full MNIST if cached or downloadable, else the bundled mnist-sample",
    )
    data_dir: str | None = _option(
        None,
        "folder of the four IDX files (.gz or not) or a Keras-style mnist.npz",
        metavar="DIR",
        unset="the data set's own files, cached or downloaded",
    )
    classes: tuple[int | str, ...] | None = _option(
        None,
        "classes to keep, e.g. 0,1,2, 0-4 or all (of --data: names or indices); in this order they become "
        "labels 0, 1, ...",
        unset="0,1,2 of a built-in --dataset, all of --data",
    )
    model: str = _option(
        "mlp",
        "the network: mlp, cnn (sized from the data), FILE.py:FUNCTION or package.module:FUNCTION "
        "returning a keras.Model, or a saved FILE.keras",
        metavar="MODEL",
    )
    model_args: dict | None = _option(None, "keyword arguments for a --model FUNCTION", cli=False, unset="none")
    callbacks: tuple[str, ...] | None = _option(
        None,
        "a keras.callbacks.Callback of yours to run with gradloop's own: FILE.py:NAME or package.module:NAME, a "
        "Callback class or a function returning one; repeat the flag for more. It gets run_dir, the run's folder, "
        "when it declares it: write there (the working directory stays where gradloop started)",
        name="--callback",
        metavar="FILE.py:NAME",
        unset="none",
        cli=False,  # commands.train adds it: the flag repeats
    )
    callback_args: dict | None = _option(
        None, "keyword arguments for each --callback, under its NAME", cli=False, unset="none"
    )
    loss: str | None = _option(
        None,
        "a Keras loss by name",
        metavar="NAME",
        unset="sparse categorical cross-entropy on logits, or mean squared error for regression",
    )
    metrics: tuple[str, ...] | None = _option(
        None,
        "Keras metrics by name, comma-separated",
        metavar="NAMES",
        unset="accuracy, or mae for regression",
    )
    optimizer: str = _option("adam", "a Keras optimizer by name (with --lr and the schedule)", metavar="NAME")
    hidden: tuple[int, ...] = _option((512, 256, 128), "MLP hidden layer sizes", metavar="SIZES")
    epochs: int = _option(DEFAULT_EPOCHS, "passes over the training data", metavar="N")
    batch_size: int = _option(32, "samples per step", metavar="N")
    lr: float = _option(1e-4, "Adam learning rate; the peak rate of a schedule")
    lr_schedule: str = _option("constant", "how the rate changes as training goes on", choices=LR_SCHEDULES)
    warmup_steps: int = _option(0, "ramp the rate up linearly over N steps first", metavar="N")
    decay_steps: int | None = _option(
        None,
        "cosine: steps to decay to 0; exponential/step: steps per --decay-rate",
        metavar="N",
        unset="the rest of training for cosine, an epoch for exponential/step",
    )
    decay_rate: float = _option(0.9, "factor per --decay-steps for exponential/step", metavar="R")
    clip_norm: float | None = _option(None, "clip the gradient to global norm C", metavar="C", unset="no clipping")
    accumulate_steps: int = _option(1, "average the gradients of N batches per update", metavar="N")
    precision: str = _option(
        "float32", "Keras dtype policy; mixed_float16 uses dynamic loss scaling", choices=PRECISIONS
    )
    val_fraction: float = _option(1 / 6, "share of the training data held out for validation", metavar="F")
    seed: int = _option(42, "seed for the split, shuffling and initial weights", metavar="N")
    steps_per_execution: int = _option(32, "training steps per compiled call", metavar="N")
    jit_compile: bool = _option(
        False,
        "XLA-compile every group of steps (and each step on streamed data); without it, only long runs "
        "on in-memory data of models without convolutions",
        name="--jit",
    )
    strategy: str = _option(
        "default",
        "default: one device; mirrored: all GPUs, or --replicas CPU devices; multi_worker: TF_CONFIG's cluster",
        choices=STRATEGIES,
        parser_checks_choices=False,
    )
    replicas: int | None = _option(
        None,
        "with --strategy mirrored and no GPU: split the CPU into N devices",
        metavar="N",
        unset="the CPU as one device",
    )
    summary_every: int = _option(32, "TensorBoard batch summaries every N steps", metavar="N")
    run_dir: str | None = _option(None, "output folder", metavar="DIR", unset="runs/<timestamp>")
    deterministic: bool = _option(False, "op determinism: reruns and resumes are bit-identical")
    checkpoint_every: int = _option(1000, "also checkpoint every STEPS steps of an epoch; 0: off", metavar="STEPS")
    checkpoint_seconds: float = _option(300.0, "also checkpoint every S seconds; 0: off", metavar="S")
    early_stop: int = _option(0, "stop after PATIENCE epochs without a better --monitor; 0: off", metavar="PATIENCE")
    monitor: str | None = _option(
        None,
        "the logged value early stopping and the best model watch, e.g. val_accuracy or d_loss",
        metavar="KEY",
        unset="val_loss; for a model with its own train_step, else its first logged loss",
    )
    validation_every: int = _option(1, "validate every N-th epoch (Keras' validation_freq)", metavar="N")
    class_weight: str | dict | None = _option(
        None,
        "weigh training samples by their class: balanced (n_samples / (n_classes * count), as scikit-learn's); "
        "a --config file may map classes (names or indices) to weights instead",
        metavar="balanced",
        unset="every sample weighs 1",
    )
    ema: float | None = _option(
        None,
        "keep an exponential moving average of the weights with this decay, e.g. 0.999: validation, "
        "model.keras and model.best.keras use the averaged weights",
        metavar="DECAY",
        unset="off",
    )

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        check_int("steps_per_execution", self.steps_per_execution, minimum=1, maximum=MAX_INT32)
        check_int("summary_every", self.summary_every, minimum=1)
        check_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        check_int("accumulate_steps", self.accumulate_steps, minimum=1)
        if self.decay_steps is not None:
            check_int("decay_steps", self.decay_steps, minimum=1)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if not is_number(self.decay_rate) or not 0 < self.decay_rate <= 1:
            raise ConfigError(f"decay_rate must be a number in (0, 1], got {shown(self.decay_rate)}")
        if self.clip_norm is not None and (not is_number(self.clip_norm) or self.clip_norm <= 0):
            raise ConfigError(
                f"clip_norm must be a finite number > 0 (a global gradient norm), got {shown(self.clip_norm)}"
            )
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("image_cache", self.image_cache, IMAGE_CACHE)
        if not is_number(self.lr) or self.lr <= 0:
            raise ConfigError(f"lr must be a finite number > 0 such as 1e-4, got {shown(self.lr)}")
        if not is_number(self.val_fraction) or not 0 <= self.val_fraction < 1:
            raise ConfigError(
                "val_fraction must be a number in [0, 1) such as 0.1 (0: no validation), "
                f"got {shown(self.val_fraction)}"
            )
        if self.dataset is not None:
            check_choice("dataset", self.dataset, DATASETS)
        if self.model not in MODELS and not (isinstance(self.model, str) and MODEL_SPEC.fullmatch(self.model)):
            raise ConfigError(
                "model must be mlp, cnn, FILE.py:FUNCTION, package.module:FUNCTION or FILE.keras, "
                f"got {shown(self.model)}"
            )
        check_own_data(self)
        if not self.hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ConfigError(
                f"hidden must be one or more positive layer sizes like 512,256,128, got {shown(self.hidden)}"
            )
        if self.model == "mlp" and self.data is None and (weights := mlp_weights(self.hidden)) > MAX_MLP_WEIGHTS:
            raise ConfigError(
                f"hidden {','.join(map(str, self.hidden))} makes an MLP of {weights:,} weights, over the "
                f"limit of {MAX_MLP_WEIGHTS:,} (memory would run out); use smaller layers"
            )
        check_choice("strategy", self.strategy, STRATEGIES)
        if self.replicas is not None:
            check_int("replicas", self.replicas, minimum=1, maximum=MAX_CPU_REPLICAS)
            if self.strategy != "mirrored":
                raise ConfigError(
                    "replicas applies to --strategy mirrored only; add --strategy mirrored or drop --replicas"
                )
        for name in ("jit_compile", "deterministic"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {shown(getattr(self, name))}")
        check_int("checkpoint_every", self.checkpoint_every, minimum=0)
        check_int("early_stop", self.early_stop, minimum=0)
        if not is_number(self.checkpoint_seconds) or self.checkpoint_seconds < 0:
            raise ConfigError(
                f"checkpoint_seconds must be a number >= 0 (0: off), got {shown(self.checkpoint_seconds)}"
            )
        check_int("validation_every", self.validation_every, minimum=1)
        if self.ema is not None and (not is_number(self.ema) or not 0 < self.ema < 1):
            raise ConfigError(f"ema must be a decay in (0, 1) such as 0.999, got {shown(self.ema)}")
        check_class_weight(self.class_weight)
        check_callbacks(self)
        if self.monitor is not None and (not isinstance(self.monitor, str) or not self.monitor.strip()):
            raise ConfigError(f"monitor must be a logged key such as val_loss, got {shown(self.monitor)}")
        watched = self.monitor or "val_loss"
        if self.early_stop and not self.val_fraction and watched.startswith("val_"):
            raise ConfigError(
                f"early_stop watches {watched}, but val_fraction is 0; hold out data, --monitor a training key "
                "or drop early_stop"
            )
        for name in ("dataset", "data_dir", "run_dir"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, value := os.fspath(value))  # kept as str: run.json is JSON
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"{name} must be a non-empty name or path, got {shown(value)}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON/YAML-friendly dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def to_yaml(self) -> str:
        """The config as a ``--config`` file: ``gradloop train --config`` on it gives this config back."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


def mlp_weights(hidden: tuple[int, ...], n_inputs: int = 28 * 28, n_outputs: int = 10) -> int:
    """Weights and biases of the MLP that ``hidden`` describes, from ``n_inputs`` features (a flat 28x28
    image by default) to ``n_outputs`` logits or values: the one count the config and the model builder check."""
    sizes = (n_inputs, *hidden, n_outputs)
    return sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
CONFIG_KEYS = frozenset(_FIELDS)  # the --config file's keys, and the train flags' destinations


def flag_name(key: str) -> str:
    """The ``gradloop train`` flag of a config key: ``--batch-size`` for batch_size, ``--jit`` for jit_compile."""
    return _FIELDS[key].metadata["flag"].name or "--" + key.replace("_", "-")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config file into a dict of known keys (dashes or underscores)."""
    return config_values(read_yaml_mapping(path), where=str(path))


def config_values(data: Mapping[Any, Any], *, where: str) -> dict[str, Any]:
    """``data`` as config values: each key known (dashes or underscores), null only where it means the default."""
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in _FIELDS:
            raise ConfigError(f"unknown key {shown(key)} in {where}; known keys: {', '.join(sorted(_FIELDS))}")
        if value is None and name not in _NULLABLE:
            raise ConfigError(f"{shown(key)} in {where} is empty (null); give it a value or delete the line")
        out[name] = value
    return out


def build_config(file_values: Mapping[str, Any] | None = None, **flags: Any) -> TrainConfig:
    """Merge file values and flags (flags that are None are 'not given') into a checked config."""
    values: dict[str, Any] = dict(file_values or {})
    values.update({k: v for k, v in flags.items() if v is not None})
    unknown = set(values) - set(_FIELDS)
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
    if values.get("classes") is not None:
        values["classes"] = (
            parse_class_names(values["classes"]) if values.get("data") else parse_classes(values["classes"])
        )
    if isinstance(values.get("callbacks"), (str, list)):  # one spec, or a list of them, from a --config file
        values["callbacks"] = tuple(
            [values["callbacks"]] if isinstance(values["callbacks"], str) else values["callbacks"]
        )
    for key in ("image_size", "metrics"):
        if values.get(key) is not None:
            values[key] = parse_int_list(key, values[key]) if key == "image_size" else names(key, values[key])
    if "hidden" in values:
        values["hidden"] = parse_int_list("hidden", values["hidden"])
    for key in (
        "lr",
        "val_fraction",
        "decay_rate",
        "clip_norm",
        "checkpoint_seconds",
        "ema",
    ):  # YAML reads 1e-4 (no dot) as a string
        if isinstance(values.get(key), str):
            values[key] = parse_float(key, values[key])
    for key in ("data_dir", "run_dir", "dataset"):  # a number in YAML is a name too
        if isinstance(values.get(key), int) and not isinstance(values[key], bool):
            values[key] = str(values[key])
    return TrainConfig(**values)


# What a resumed run may change: when it stops, how often it saves and where it reads its images from,
# never what it computes.
RESUMABLE = ("epochs", "checkpoint_every", "checkpoint_seconds", "summary_every", "image_cache")


def resumed_config(saved: Mapping[str, Any], file_values: Mapping[str, Any] | None = None, **flags: Any) -> TrainConfig:
    """The config of a run to resume: its saved config, with only ``RESUMABLE`` keys changed.

    A flag that repeats the saved value is fine; one that changes the model,
    the data or the training is refused, naming it.
    """
    run_dir = flags.get("run_dir")
    base = build_config({k: v for k, v in saved.items() if k != "run_dir"}, run_dir=run_dir)
    asked = build_config({**base.to_dict(), **(file_values or {})}, **flags)
    for name in _FIELDS:
        mine, theirs = getattr(asked, name), getattr(base, name)
        if name not in RESUMABLE and mine != theirs:
            raise ConfigError(
                f"{flag_name(name)} {_show(mine)} differs from the run's {_show(theirs)}; a resumed run keeps its "
                f"model, data and training settings (only {', '.join(map(flag_name, RESUMABLE))} may "
                "change): drop the flag, or start a new run"
            )
    if asked.epochs != base.epochs and base.lr_schedule == "cosine" and base.decay_steps is None:
        raise ConfigError(
            f"--epochs {asked.epochs} would change the run's cosine schedule, which decays over its "
            f"{base.epochs} epochs; keep --epochs {base.epochs} (runs meant to be extended set --decay-steps)"
        )
    return asked


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return "unset" if value is None else shown(value).strip("'")
