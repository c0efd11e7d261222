"""A sweep's SPEC.yaml, read and checked before anything runs (no TensorFlow, no Optuna here).

    trials: 20                   trials in all, whichever processes run them
    metric: val_accuracy         a history column: val_loss, val_<metric>, train_loss, train_<metric>,
                                 or any value a model's own train_step logs (val_g_loss)
    direction: maximize          or minimize
    train:                       fixed train options: the keys of a --config file
      dataset: mnist-sample
      epochs: 5
    space:                       the options searched, each a range or a list of choices
      lr: {low: 1.0e-4, high: 1.0e-2, log: true}     an int or float by the option's type
      hidden: [[128], [512, 256, 128]]
    pruning: {startup_trials: 2, warmup_epochs: 1}   optional; false: never prune

Every value a trial could take (each range's ends, each choice) is checked as a config
value, so that a bad one fails now in one line rather than in trial 17.
"""

from __future__ import annotations

import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradloop.app.config import TrainConfig, build_config, config_values
from gradloop.app.config_values import read_yaml_mapping
from gradloop.errors import ConfigError

DIRECTIONS = ("maximize", "minimize")
KEYS = ("trials", "metric", "direction", "train", "space", "pruning")
DEFAULT_PRUNING = {"startup_trials": 2, "warmup_epochs": 1}
# The sweep names each trial's folder; and trials compare options on one data set, which fixes the task and metrics.
NOT_SEARCHED = ("run_dir", "data", "dataset", "data_dir")
MAX_TRIALS = 100_000


@dataclass(frozen=True)
class Range:
    """Numbers from ``low`` to ``high`` (both included), evenly or, with ``log``, evenly in their logarithm."""

    low: float
    high: float
    log: bool
    integer: bool


@dataclass(frozen=True)
class Choices:
    """A list of values. Optuna takes only plain values as choices, so a list or mapping
    (``hidden: [[128], [64, 32]]``) travels as its JSON text, ``"[128]"``."""

    values: tuple[Any, ...]

    @property
    def encoded(self) -> tuple[Any, ...]:
        return tuple(_encode(v) for v in self.values)

    def decode(self, encoded: Any) -> Any:
        return self.values[self.encoded.index(encoded)]


Space = Range | Choices


@dataclass(frozen=True)
class Pruning:
    """Optuna's MedianPruner: stop a trial whose metric at an epoch is worse than the median of the
    earlier trials' at that epoch, once ``startup_trials`` trials have ended, never in its first
    ``warmup_epochs`` epochs (and never at its last: a trial that ran all its epochs is complete)."""

    startup_trials: int
    warmup_epochs: int


@dataclass(frozen=True)
class SweepSpec:
    path: Path
    trials: int
    metric: str
    direction: str
    train: dict[str, Any]  # config values, keys with underscores
    space: dict[str, Space]
    pruning: Pruning | None
    raw: dict[str, Any]  # the spec as read (keys normalised): what a sweep folder records and a rerun must repeat

    @property
    def name(self) -> str:
        return self.path.stem

    def config(self, params: Mapping[str, Any], **more: Any) -> TrainConfig:
        """The trial's config: ``train``, then its ``params`` (decoded values), then ``more``."""
        return build_config({**self.train, **params}, **more)


def read_spec(path: str | Path) -> SweepSpec:
    """Read and check SPEC.yaml; every mistake is a :class:`ConfigError` naming the file and the key."""
    path = Path(path)
    data = read_yaml_mapping(path, what="sweep spec")
    where = f"sweep spec {path}"
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {where}; its keys are {', '.join(KEYS)}")
    for key in ("trials", "metric", "direction", "space"):
        if key not in data:
            raise ConfigError(f"{where} has no {key!r}; a spec needs {', '.join(KEYS[:5])} (pruning is optional)")
    trials = data["trials"]
    if isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= MAX_TRIALS:
        raise ConfigError(f"trials in {where} must be a whole number from 1 to {MAX_TRIALS:,}, got {trials!r}")
    metric = data["metric"]
    if not isinstance(metric, str) or not metric.startswith(("val_", "train_")):
        raise ConfigError(
            f"metric in {where} must be a history column such as val_accuracy, val_loss or val_g_loss, got {metric!r}"
        )
    if data["direction"] not in DIRECTIONS:
        raise ConfigError(f"direction in {where} must be maximize or minimize, got {data['direction']!r}")
    train = data.get("train") or {}
    if not isinstance(train, dict):
        raise ConfigError(f"train in {where} must be a mapping of train options, like 'epochs: 5'")
    train = config_values(train, where=f"{where}'s train")
    if not isinstance(data["space"], dict) or not data["space"]:
        raise ConfigError(
            f"space in {where} must map options to ranges or choices, like 'lr: {{low: 1.0e-4, high: 0.01, log: true}}'"
        )
    space_values = config_values(data["space"], where=f"{where}'s space")
    if "run_dir" in train:
        raise ConfigError(
            f"run_dir in {where}'s train: each trial's run directory is the sweep's to name; "
            "pass --out for the sweep folder"
        )
    space = {name: _space(name, value, where) for name, value in space_values.items()}
    both = sorted(set(space) & set(train))
    if both:
        raise ConfigError(f"{both[0]} is both fixed (train) and searched (space) in {where}; keep it in one of them")
    pruning = _pruning(data.get("pruning", DEFAULT_PRUNING), where)
    spec = SweepSpec(
        path=path,
        trials=trials,
        metric=metric,
        direction=data["direction"],
        train=train,
        space=space,
        pruning=pruning,
        raw={
            "trials": trials,
            "metric": metric,
            "direction": data["direction"],
            "train": train,
            "space": space_values,
            "pruning": data.get("pruning", DEFAULT_PRUNING),
        },
    )
    _check_values(spec, where)
    return spec


def _space(name: str, value: Any, where: str) -> Space:
    if name in NOT_SEARCHED:
        raise ConfigError(
            f"{name} cannot be searched ({where}'s space): "
            + (
                "the sweep names each trial's run directory"
                if name == "run_dir"
                else "a sweep compares options on one data set; put it in train"
            )
        )
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"space {name} in {where} is an empty list of choices; give one or more values")
        encoded = [_encode(v) for v in value]
        if len(set(map(json.dumps, encoded))) < len(encoded):
            raise ConfigError(f"space {name} in {where} lists a choice twice: {value!r}")
        return Choices(tuple(value))
    if not isinstance(value, dict):
        raise ConfigError(
            f"space {name} in {where} must be a range {{low, high, log}} or a list of choices, got {value!r}"
        )
    unknown = [k for k in value if k not in ("low", "high", "log")]
    if unknown or "low" not in value or "high" not in value:
        raise ConfigError(
            f"space {name} in {where} must be {{low: ..., high: ...}} with an optional log: true, got {value!r}"
        )
    kind = number_type(name)
    if kind is None:
        raise ConfigError(f"space {name} in {where} is a range, but {name} is not a number; list its choices instead")
    low, high = (_number(value[k], name, k, where) for k in ("low", "high"))
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"log of space {name} in {where} must be true or false, got {log!r}")
    if kind is int and not all(isinstance(v, int) for v in (low, high)):
        raise ConfigError(
            f"space {name} in {where} takes whole numbers ({name} is an integer), got low {low!r}, high {high!r}"
        )
    if low > high:
        raise ConfigError(f"space {name} in {where} is an empty range: low {low!r} is above high {high!r}")
    if log and low <= 0:
        raise ConfigError(f"space {name} in {where} is searched on a log scale, so low must be > 0, got {low!r}")
    return Range(low=low, high=high, log=log, integer=kind is int)


def _number(value: Any, name: str, key: str, where: str) -> float:
    if isinstance(value, str):  # YAML reads 1e-4 (no dot) as text
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key} of space {name} in {where} must be a finite number, got {value!r}")
    return value


def number_type(option: str) -> type | None:
    """int or float for an option that holds a number (``batch_size``, ``lr``, ``clip_norm``), else None."""
    hint = typing.get_type_hints(TrainConfig)[option]
    kinds = {
        t for t in (typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)) if t is not type(None)
    }
    return kinds.pop() if kinds in ({int}, {float}) else None


def _pruning(value: Any, where: str) -> Pruning | None:
    if value is False:
        return None
    if not isinstance(value, dict) or set(value) - set(DEFAULT_PRUNING):
        raise ConfigError(f"pruning in {where} must be false or {{startup_trials: N, warmup_epochs: N}}, got {value!r}")
    merged = {**DEFAULT_PRUNING, **value}
    for key, n in merged.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"pruning {key} in {where} must be a whole number >= 0, got {n!r}")
    return Pruning(**merged)


def _check_values(spec: SweepSpec, where: str) -> None:
    """Each range's ends and each choice, with the other options at their first value, is a valid config."""
    first = {name: (s.low if isinstance(s, Range) else s.values[0]) for name, s in spec.space.items()}
    for name, space in spec.space.items():
        candidates = (
            (("low", space.low), ("high", space.high))
            if isinstance(space, Range)
            else ((f"choice {v!r}", v) for v in space.values)
        )
        for label, value in candidates:
            try:
                spec.config({**first, name: value})
            except ConfigError as exc:
                raise ConfigError(f"space {name} in {where}, {label}: {exc}") from None


def _encode(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)
