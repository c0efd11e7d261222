"""A user's own Keras callbacks in a CLI run: ``--callback FILE.py:NAME`` (repeatable, or
``package.module:NAME``), with arguments from the config file's ``callback_args``:

    callbacks: [samples.py:SaveSamples]
    callback_args:
      SaveSamples: {every: 2, folder: samples}

NAME is a ``keras.callbacks.Callback`` subclass, or a function returning an instance of one, called as

    NAME(run_dir=Path(the run's folder), **callback_args[NAME])     run_dir only when it declares it

What a callback writes belongs in the run: join its paths to ``run_dir`` (``self.run_dir / folder``).
gradloop never changes the process's working directory, so a bare relative path would land where
gradloop was started, not in the run.

    check(config)                       before anything is written: each file imports, each NAME is a
                                        Callback class or a function, its callback_args fit its parameters
    for_run(config, run, resumed=...)   the callbacks, each built with run_dir; a new run's files copied
                                        into it first (as --model's: user_code.copy_source) and named in
                                        run.json's ``callback_sources``; a resumed run's built from those copies

A copy is ``user_callbacks/NAME/callback_source.py`` with the sibling modules it imports beside it, so a
resume does not need the original. A copy is the run's own code: ``gradloop train --resume`` runs it only
with ``--trust-code`` (:func:`gradloop.commands.train.train_config` refuses otherwise).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from gradloop import user_code
from gradloop.app.config import TrainConfig
from gradloop.errors import ConfigError, RunDirError, shortened
from gradloop.run import files as run_files
from gradloop.run import folder as run_folder

_EXPECTED = "a keras.callbacks.Callback class or a function returning one"
_GIVEN = ("run_dir",)  # what gradloop passes a callback, when it declares it
# The names a callback's copy is beside in its folder: a sibling module of this name would mix with it.
_OWN = (run_files.CALLBACK_SOURCE,)


def check(config: TrainConfig) -> None:
    """Refuse, before a run directory is made, a --callback that cannot be built: its file is missing or does
    not import, NAME is absent or no Callback class or function, or callback_args do not fit its parameters.
    (What a function returns is known only when it is called, by :func:`for_run`.)"""
    for spec in config.callbacks or ():
        _load(spec, spec, _args(config, spec))
        target, _ = user_code.split_spec(spec, what="--callback")
        if target.endswith(".py"):
            user_code.check_copyable(Path(target), own=_OWN, where=f"--callback {spec}")


def for_run(config: TrainConfig, run: run_folder.RunDir, *, resumed: bool) -> list[keras.callbacks.Callback]:
    """The run's own callbacks, each built with ``run_dir=run.path`` from the copies in the run's folder: a new
    run's made now (and named in its run.json), a ``resumed`` one's those its run.json names."""
    if not config.callbacks:
        return []
    # A resumed run's folder is config.run_dir: a multi-worker run's other workers write to scratch (run.path),
    # their RunDir holding the chief's run.json.
    folder = Path(config.run_dir) if resumed else run.path
    sources = _recorded(config, run.info, folder) if resumed else _copy_into(config, run)
    return [
        _build(_located(source, folder), spec, _args(config, spec), run.path)
        for spec, source in zip(config.callbacks, sources)
    ]


def _copy_into(config: TrainConfig, run: run_folder.RunDir) -> list[str]:
    """Copy each --callback file into the run, and name the copies in run.json's ``callback_sources``
    (``package.module:NAME`` stays itself: it must stay installed for a resume)."""
    sources = []
    for spec in config.callbacks:
        target, name = user_code.split_spec(spec, what="--callback")
        if not target.endswith(".py"):
            sources.append(spec)
            continue
        folder = run_files.own_path(run.path, run_files.CALLBACKS) / name
        folder.mkdir(parents=True, exist_ok=True)
        user_code.copy_source(Path(target), folder, run_files.CALLBACK_SOURCE, what="--callback")
        sources.append(f"{run_files.CALLBACKS}/{name}/{run_files.CALLBACK_SOURCE}:{name}")
    run.info["callback_sources"] = sources
    run.write_info()
    return sources


def _recorded(config: TrainConfig, info: dict[str, Any], run_dir: Path) -> list[str]:
    """run.json's ``callback_sources`` (``info``, checked as read: :mod:`gradloop.run.schema`), one per
    callback of the config, by NAME."""
    recorded = info.get("callback_sources") or []
    names = [spec.rpartition(":")[2] for spec in config.callbacks]
    if [source.rpartition(":")[2] for source in recorded] != names:
        raise RunDirError(
            f"{run_dir / run_files.RUN_JSON} names callbacks {shortened(str(recorded), 120)} for its config's "
            f"{shortened(str(list(config.callbacks)), 120)}; the run directory is damaged"
        )
    return recorded


def _located(source: str, run_dir: Path) -> str:
    """A recorded source as load_function takes it: a copy's path inside ``run_dir`` (never through a link
    out of it), or ``package.module:NAME`` as it is."""
    target, _, name = source.rpartition(":")
    return f"{run_files.own_path(run_dir, target)}:{name}" if target.endswith(".py") else source


def _args(config: TrainConfig, spec: str) -> dict[str, Any]:
    return dict((config.callback_args or {}).get(spec.rpartition(":")[2]) or {})


def _load(source: str, spec: str, args: dict[str, Any]) -> Callable[..., Any]:
    """The class or function ``source`` names (``spec``: as the user wrote it, for messages), checked to take
    ``args`` and run_dir by keyword and to need nothing else."""
    where = f"--callback {spec}"
    fn = user_code.load_function(source, what="--callback", expected=_EXPECTED)
    name = spec.rpartition(":")[2]
    if isinstance(fn, type) and not issubclass(fn, keras.callbacks.Callback):
        raise ConfigError(
            f"{where}: {name} is a class but not a keras.callbacks.Callback; subclass keras.callbacks.Callback"
        )
    reserved = [key for key in args if key in (*_GIVEN, "what")]  # what: call_function's own keyword
    if reserved:
        raise ConfigError(
            f"callback_args of {name} sets {reserved[0]}, which gradloop passes itself; remove it from callback_args"
        )
    undeclared = [key for key in args if key not in user_code.accepted(fn, args)]
    if undeclared:
        raise ConfigError(
            f"callback_args of {name}: {undeclared[0]} is no parameter of {spec}; remove it from callback_args, "
            "or add the parameter"
        )
    unset = user_code.missing(fn, [*user_code.accepted(fn, _GIVEN), *args])
    if unset:
        raise ConfigError(
            f"{where} requires {', '.join(unset)}, which gradloop does not pass (it passes run_dir); "
            "give it a default value, or a value in callback_args"
        )
    return fn


def _build(source: str, spec: str, args: dict[str, Any], run_dir: Path) -> keras.callbacks.Callback:
    fn = _load(source, spec, args)
    callback = user_code.call_function(fn, what=f"--callback {spec}", run_dir=run_dir, **args)
    if not isinstance(callback, keras.callbacks.Callback):
        raise ConfigError(
            f"--callback {spec} returned {user_code.describe(callback)}, not a keras.callbacks.Callback; "
            "return an instance of a Callback subclass"
        )
    return callback
