"""One option's value, checked or parsed, for :mod:`gradloop.app.config`: each refusal is one
:class:`~gradloop.errors.ConfigError` naming the option, the value (cut short) and the rule.

    check_int, check_choice, check_class_weight, is_number   checks
    parse_int_list, parse_class_names, names, parse_float     text (a flag, a YAML value) to a value
    read_yaml_mapping                                         a YAML file's mapping, its errors in one line
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml

from gradloop.errors import ConfigError, shortened


def check_class_weight(value: Any) -> None:
    """``balanced``, or a mapping of class (name or index) to a finite weight >= 0."""
    if value is None or value == "balanced":
        return
    if (
        not isinstance(value, dict)
        or not value
        or not all(
            isinstance(k, (int, str)) and not isinstance(k, bool) and is_number(v) and v >= 0 for k, v in value.items()
        )
    ):
        raise ConfigError(
            "class_weight must be balanced, or (in a --config file) a mapping of classes to weights >= 0 such as "
            f"{{cat: 2.0, dog: 0.5}}, got {shown(value)}"
        )


def check_int(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum and value > maximum):
        rule = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise ConfigError(f"{name} must be an integer {rule}, got {shown(value)}")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {shown(value)}")


def is_number(value: Any) -> bool:
    """A finite real number (a 400-digit YAML integer overflows a float, so it is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def shown(value: Any, limit: int = 60) -> str:
    return shortened(repr(value), limit)


def parse_int_list(name: str, value: Any) -> tuple[int, ...]:
    """``"512,256,128"`` or ``[512, 256, 128]`` -> ``(512, 256, 128)``."""
    items = value.split(",") if isinstance(value, str) else value
    if isinstance(items, int) and not isinstance(items, bool):
        items = [items]
    try:
        return tuple(as_int(v) for v in items)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be comma-separated integers like 512,256,128, got {shown(value)}") from None


def as_int(v: Any) -> int:
    if isinstance(v, (bool, float)):
        raise ValueError(v)
    return int(str(v).strip())


def read_yaml_mapping(path: str | Path, *, what: str = "config file") -> dict[Any, Any]:
    """The mapping a YAML file holds (an empty file: ``{}``); ``what`` names the file in errors."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}; check the path") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text; pass a YAML file like 'epochs: 5'") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None)
        why = f" ({shown(problem, 120)[1:-1]})" if problem else ""
        raise ConfigError(f"{what} {path} is not valid YAML{at}{why}; fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of keys to values, like 'epochs: 5'")
    return data


def absolute(data: str) -> str:
    """``--data`` with its file made absolute (``FILE.py:FUNCTION`` too); ``package.module:FUNCTION`` as it is."""
    target, _, name = data.rpartition(":")
    if target and name.isidentifier() and not os.path.exists(data):
        return f"{os.path.abspath(target)}:{name}" if target.endswith(".py") else data
    return os.path.abspath(data)


def parse_class_names(spec: Any) -> tuple[int | str, ...] | None:
    """``--classes`` of your own data: names or indices (checked against the data when it is read); None for all."""
    if isinstance(spec, str) and spec.strip().lower() == "all":
        return None
    items = spec.split(",") if isinstance(spec, str) else spec
    if isinstance(items, (int, str)) and not isinstance(items, bool):
        items = [items]
    if (
        not isinstance(items, (list, tuple))
        or not items
        or any(isinstance(c, bool) or not isinstance(c, (int, str)) for c in items)
    ):
        raise ConfigError(f"classes must be class names or indices like cat,dog or 0,1, got {shown(spec)}")
    return tuple(c.strip() if isinstance(c, str) else c for c in items)


def names(key: str, value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in items) or not items:
        raise ConfigError(f"{key} must be names like accuracy,auc, got {shown(value)}")
    return tuple(v.strip() for v in items)


def parse_float(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {shown(text)}") from None
