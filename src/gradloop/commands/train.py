"""``gradloop train``: one experiment, new or resumed, as :func:`gradloop.app.train.train` runs it.

Its flags are :class:`gradloop.app.config.TrainConfig`'s fields (``cli.add_config_flags``), over a
``--config`` file's values; the other flags (``NON_CONFIG_TRAIN_FLAGS``) say what to do with the config.
Every check that needs no TensorFlow (the flags, the config, the run to resume) runs before it is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path

from gradloop import cli
from gradloop.app import cpu
from gradloop.app.config import TrainConfig, build_config, flag_name, load_yaml, resumed_config
from gradloop.errors import ConfigError, DiskFullError, shortened
from gradloop.run import files as run_files
from gradloop.run import schema as run_schema
from gradloop.run import start as run_start

# Train flags that are not config values: they say what to do with the config.
NON_CONFIG_TRAIN_FLAGS = ("config", "print_config", "profile", "debug", "resume", "overwrite", "trust_code")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("train", help="train a model (default: the reference experiment)")
    parser.add_argument("--config", metavar="FILE.yaml", help="config file; flags override its values")
    experiment = parser.add_argument_group("the experiment (flags override the same keys in a --config file)")
    cli.add_config_flags(experiment)
    _add_callback_flag(experiment)
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --run-dir from its latest checkpoint"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the earlier run in --run-dir")
    parser.add_argument("--profile", action="store_true", help="first show where a step's time goes, by phase")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    cli.add_trust_code(parser)
    return parser


def _add_callback_flag(group) -> None:
    """``--callback``, the one config flag that repeats (each adds a callback), so not built by
    ``cli.add_config_flags``: its help and default come from the field all the same."""
    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == "callbacks")
    flag = field.metadata["flag"]
    group.add_argument(
        flag_name("callbacks"),
        dest="callbacks",
        action="append",
        metavar=flag.metavar,
        help=f"{flag.help} (default: {flag.unset})".replace("%", "%%"),
    )


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The config ``gradloop train`` runs: the flags over the --config file, or, with --resume, the run's own
    config changed only where a resume may. Refuses a --resume without --run-dir, or with --overwrite."""
    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the run in --run-dir and --overwrite replaces it; pass one of them")
    if args.resume and not args.run_dir:
        raise ConfigError("--resume needs --run-dir DIR, the run to continue")
    file_values = load_yaml(args.config) if args.config else {}
    flags = cli.config_flags(args)
    if not args.resume:
        return build_config(file_values, **flags)
    info = run_start.open_to_resume(args.run_dir).info
    if info.get("callback_sources") and not args.trust_code:
        raise ConfigError(
            f"run {args.run_dir} runs callbacks of its own ({shortened(', '.join(info['callback_sources']), 200)}), "
            f"which is running its code: read them, and pass {run_schema.TRUST_CODE} if you trust where the run "
            "came from"
        )
    return resumed_config(info["config"], file_values, **flags)  # the run's own config, changed only where a resume may


def given_keys(args: argparse.Namespace, config: TrainConfig) -> set[str]:
    """The config keys the user set: by flag, or in the --config file to other than the default (a file
    of --print-config holds every key): what a model that brings its own training refuses where
    gradloop's step alone would read them (:mod:`gradloop.app.own_step`)."""
    defaults = TrainConfig(model=config.model, data=config.data)  # --data changes the classes' default
    file_values = load_yaml(args.config) if args.config else {}
    changed = {key for key in file_values if getattr(config, key) != getattr(defaults, key)}
    return changed | {key for key, value in cli.config_flags(args).items() if value is not None}


def run(args: argparse.Namespace) -> int:
    config = train_config(args)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    cpu.import_tensorflow()  # here, after the cheap checks
    from gradloop.app import user_callbacks
    from gradloop.app.interrupted import RunInterrupted
    from gradloop.app.train import train
    from gradloop.loop.signals import StopSignals

    if not args.resume:  # a resume's callbacks are the run's copies, checked when the run started
        user_callbacks.check(config)  # before anything is written
    try:
        with StopSignals() as stop:
            train(
                config,
                resume=args.resume,
                overwrite=args.overwrite,
                stop=stop,
                profile=args.profile,
                given=None if args.resume else given_keys(args, config),
            )
    except RunInterrupted as exc:
        print(
            f"gradloop: interrupted at epoch {exc.epoch + 1} step {exc.step}; "
            f"resume with: {resume_command(config, exc.run_dir or config.run_dir)}",
            file=sys.stderr,
        )
        return cli.signal_exit_code(exc.signum)
    except DiskFullError as exc:  # the job failed, not the input: exit 1, with the way to go on
        if args.debug:
            raise
        run_dir = exc.run_dir or config.run_dir
        resumable = run_dir is not None and (Path(run_dir) / run_files.CHECKPOINTS / "checkpoint").is_file()
        advice = (
            f"resume with: {resume_command(config, run_dir)}" if resumable else "start the run again with --overwrite"
        )
        print(f"gradloop: error: {cli.one_line(exc)}; free space and {advice}", file=sys.stderr)
        return 1
    return 0


def resume_command(config: TrainConfig, run_dir: str | None) -> str:
    """How to continue an interrupted run; a multi-worker run resumes on all its workers at once."""
    from gradloop.commands.launch import WORKERS_ENV

    where = shlex.quote(str(run_dir)) if run_dir else "<the chief's run directory>"
    train = f"train --resume --run-dir {where}"
    if config.strategy != "multi_worker":
        return f"gradloop {train}"
    if workers := os.environ.get(WORKERS_ENV):  # started by gradloop launch, which starts them all again
        return f"gradloop launch --workers {workers} -- {train}"
    return f"gradloop {train} on every worker, with its TF_CONFIG"
