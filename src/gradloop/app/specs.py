"""A :class:`~gradloop.app.config.TrainConfig` resolved, once, into the small value each part takes.

    data_spec(config)         -> DataSpec          how the data package reads --data   (gradloop.data.sources)
    builtin_spec(config)      -> BuiltinSpec       which built-in data set, classes, split   (gradloop.data)
    model_spec(config)        -> ModelSpec         what --model builds, before the data's shapes  (gradloop.app.models)
    compile_options(config)   -> CompileOptions    what changes the compiled step              (gradloop.loop)
    run_folder_spec(config)   -> RunFolderSpec     where the run is written, and how it may start there  (gradloop.run)

So the config flows one way, config -> these values -> built objects -> the loop, and no layer below
the application takes the whole config. This module imports no TensorFlow: the CLI resolves a config
before it has imported it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gradloop.app.config import TrainConfig
from gradloop.data.sources import DataSpec

if TYPE_CHECKING:
    from gradloop.loop.compiled import CompileOptions


@dataclass(frozen=True)
class BuiltinSpec:
    """A built-in data set (``dataset`` from ``data_dir``, None: the defaults) and how a run cuts it:
    the ``classes`` it keeps, in their order, and ``val_fraction`` of the training split held out with ``seed``."""

    dataset: str | None
    data_dir: str | None
    classes: str | Sequence[int] | None
    val_fraction: float
    seed: int


@dataclass(frozen=True)
class ModelSpec:
    """What ``--model`` builds, apart from the data's shapes: ``name`` is ``mlp``, ``cnn``, or where the
    user's model comes from (``FILE.py:FUNCTION``, ``package.module:FUNCTION``, ``FILE.keras``);
    ``hidden`` the MLP's layer sizes, ``dtype`` the Keras dtype policy of the built-in models' hidden
    layers, ``args`` the keyword arguments of the user's model function."""

    name: str
    hidden: tuple[int, ...] = ()
    dtype: str | None = None
    args: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class RunFolderSpec:
    """Where a run is written and how it may start there: ``run_dir`` (None: a new runs/<timestamp>),
    ``resume`` the run in it, or start anew (replacing an earlier run when ``overwrite``); ``epochs``
    in all, which a resumed run must not have finished."""

    run_dir: str | None
    resume: bool
    overwrite: bool
    epochs: int


def data_spec(
    config: TrainConfig,
    *,
    path: str | None = None,
    fitted: dict[str, Any] | None = None,
    class_names: tuple[str, ...] | None = None,
) -> DataSpec:
    """How to read ``--data`` (or ``path``, other data of the same kind) for this config; ``fitted`` and
    ``class_names`` (a finished run's ``data`` in run.json) read it as that run did."""
    return DataSpec(
        path=path or config.data,
        target=config.target,
        task=config.task,
        image_size=tuple(config.image_size) if config.image_size else None,
        color_mode=config.color_mode,
        fill=config.fill,
        seed=config.seed,
        fitted=fitted,
        class_names=class_names,
        header=config.header,
    )


def builtin_spec(config: TrainConfig) -> BuiltinSpec:
    """The built-in data set a run without ``--data`` reads, and how it cuts it."""
    return BuiltinSpec(
        dataset=config.dataset,
        data_dir=config.data_dir,
        classes=config.classes,
        val_fraction=config.val_fraction,
        seed=config.seed,
    )


def model_spec(config: TrainConfig, *, source: str | None = None) -> ModelSpec:
    """What ``--model`` builds; ``source`` (where a resumed run keeps its copy of the user's model)
    replaces the name the user gave."""
    return ModelSpec(
        name=source or config.model, hidden=tuple(config.hidden), dtype=config.precision, args=config.model_args
    )


def compile_options(config: TrainConfig) -> CompileOptions:
    """``--steps-per-execution`` and ``--jit``: without ``--jit``, the library's default (XLA where it
    pays: long in-memory runs, no convolutions)."""
    from gradloop.loop.compiled import CompileOptions  # TensorFlow: imported when a trainer is built

    return CompileOptions(
        steps_per_execution=config.steps_per_execution, jit_compile=True if config.jit_compile else None
    )


def run_folder_spec(config: TrainConfig, *, resume: bool, overwrite: bool) -> RunFolderSpec:
    """The run folder's paths and rules: ``--run-dir``, ``--resume`` or ``--overwrite``, ``--epochs``."""
    return RunFolderSpec(run_dir=config.run_dir, resume=resume, overwrite=overwrite, epochs=config.epochs)
