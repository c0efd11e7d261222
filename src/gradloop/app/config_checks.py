"""The checks of a :class:`~gradloop.app.config.TrainConfig` that span several options: what --data
allows (its options only with --data, each of its kind) and the user's callbacks with their arguments.
Each refusal is one :class:`~gradloop.errors.ConfigError`."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from gradloop.app.config_values import absolute, check_choice, shown
from gradloop.data.sources import COLOR_MODES, FILLS, HEADERS, TASKS
from gradloop.errors import ConfigError

if TYPE_CHECKING:
    from gradloop.app.config import TrainConfig

CALLBACK_SPEC = re.compile(r".+:[A-Za-z_][A-Za-z0-9_]*")  # --callback: FILE.py:NAME or package.module:NAME


def check_own_data(config: TrainConfig) -> None:
    """The --data options: only with --data, and each of its kind."""
    from gradloop.app.config import REFERENCE_CLASSES, flag_name  # config.py imports this module

    if config.data is None:
        given = [
            flag_name(k)
            for k in ("target", "task", "image_size", "color_mode", "fill")
            if getattr(config, k) is not None
        ]
        given += ["--header"] * (config.header != "auto")
        if given:
            raise ConfigError(f"{given[0]} applies to --data only; add --data PATH or drop {given[0]}")
        if config.classes is None:
            object.__setattr__(config, "classes", REFERENCE_CLASSES)
    else:
        if isinstance(config.data, os.PathLike):
            object.__setattr__(config, "data", os.fspath(config.data))
        if not isinstance(config.data, str) or not config.data.strip():
            raise ConfigError(f"data must be a path, got {shown(config.data)}")
        object.__setattr__(config, "data", absolute(config.data))  # run.json's data is found from any folder
        if config.dataset is not None or config.data_dir is not None:
            raise ConfigError(
                "--data reads your own data and --dataset/--data-dir a built-in data set; pass one of them"
            )
    if config.task is not None:
        check_choice("task", config.task, TASKS)
    if config.color_mode is not None:
        check_choice("color_mode", config.color_mode, COLOR_MODES)
    if config.fill is not None:
        check_choice("fill", config.fill, FILLS)
    check_choice("header", config.header, HEADERS)
    if config.image_size is not None and (
        len(config.image_size) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 8192 for v in config.image_size)
    ):
        raise ConfigError(f"image_size must be two sizes H,W from 1 to 8192 pixels, got {shown(config.image_size)}")
    for name in ("target", "loss", "optimizer"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"{name} must be a non-empty name, got {shown(value)}")
    if config.metrics is not None and (
        not isinstance(config.metrics, tuple) or not all(isinstance(m, str) and m for m in config.metrics)
    ):
        raise ConfigError(f"metrics must be Keras metric names like accuracy,auc, got {shown(config.metrics)}")
    if config.model_args is not None and (
        not isinstance(config.model_args, dict)
        or not all(isinstance(k, str) and k.isidentifier() for k in config.model_args)
    ):
        raise ConfigError(f"model_args must be a mapping of argument names to values, got {shown(config.model_args)}")


def check_callbacks(config: TrainConfig) -> None:
    """--callback specs, each NAME once, and callback_args naming only those NAMEs."""
    if config.callbacks is not None and (
        not isinstance(config.callbacks, tuple)
        or not all(isinstance(c, str) and CALLBACK_SPEC.fullmatch(c) for c in config.callbacks)
    ):
        raise ConfigError(
            f"callbacks must be FILE.py:NAME or package.module:NAME of Keras callbacks, got {shown(config.callbacks)}"
        )
    names = [spec.rpartition(":")[2] for spec in config.callbacks or ()]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice:
        raise ConfigError(
            f"two callbacks are named {twice}; callback_args gives arguments by NAME, so rename one of them"
        )
    args = config.callback_args
    if args is None:
        return
    if not isinstance(args, dict) or not all(
        isinstance(v, dict) and all(isinstance(k, str) and k.isidentifier() for k in v) for v in args.values()
    ):
        raise ConfigError(
            "callback_args must map each callback's NAME to its keyword arguments, such as "
            f"{{SaveSamples: {{every: 2}}}}, got {shown(args)}"
        )
    unknown = next((name for name in args if name not in names), None)
    if unknown is not None:
        given = ", ".join(names) if names else "none"
        raise ConfigError(
            f"callback_args names {shown(unknown)}, which is no --callback's NAME (they are: {given}); "
            "fix the name or add the --callback"
        )
