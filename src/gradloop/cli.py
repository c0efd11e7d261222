"""The ``gradloop`` command line: the parser's shared pieces and ``main``'s exit codes.

Each subcommand is a module of :mod:`gradloop.commands` with ``add_parser(subparsers)``
(its flags) and ``run(args) -> int`` (its body); ``build_parser()`` asks each for its
parser and ``main`` runs the one named. A command module imports TensorFlow inside
``run``, so that ``--help`` and a bad flag answer at once. Exit status:

    0    done
    2    a user error: one line, ``gradloop: error: <what is wrong and how to fix it>``
    1    the job failed: the loss diverged (one line naming the step), a worker failed,
         or a bug in gradloop (or TensorFlow): one line naming the exception
    130  interrupted (Ctrl-C); during training, after a checkpoint, with the resume command
    143  stopped by SIGTERM after a checkpoint, with the resume command

``--debug`` (before or after the command) shows the traceback instead of the
one line, for both kinds of error.
"""

from __future__ import annotations

import argparse
import dataclasses
import fractions
import os
import sys
import types
import typing
from collections.abc import Collection, Sequence
from typing import Any

from gradloop import __version__
from gradloop.app.config import CONFIG_KEYS, TrainConfig, flag_name
from gradloop.errors import DiskFullError, GradloopError, TrainingError, shortened
from gradloop.run import schema as run_schema


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, not usage + message."""

    def error(self, message: str) -> None:
        if message.endswith(": expected one argument"):  # '--lr -1e-3': argparse took the value for a flag
            flag = message.removeprefix("argument ").split(":")[0].split("/")[-1]
            message += f" (give it a value; one starting with '-' is written {flag}=VALUE)"
        self.exit(2, f"gradloop: error: {one_line(message)}; see '{self.prog} --help'\n")


def one_line(text: object) -> str:
    """Collapse a message onto one line, so that stderr carries exactly one error line."""
    return " ".join(str(text).split())


def to_stderr(line: str) -> None:
    """The commands' ``notify``: progress and notes go to stderr, results to stdout."""
    print(line, file=sys.stderr)


def _quoted(text: str) -> str:
    return repr(shortened(text, 40))


def integer(text: str) -> int:
    """A flag's whole number, refused in the parser's one line."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {_quoted(text)}") from None


def number(text: str) -> float:
    """A flag's number, refused in the parser's one line."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number like 0.001 or 1e-4, got {_quoted(text)}") from None


def _add_debug(parser: argparse.ArgumentParser, default: object) -> None:
    # On the top parser and every command, so that both 'gradloop --debug train' and 'gradloop train
    # --debug' work; SUPPRESS on the commands keeps them from resetting the top-level value.
    parser.add_argument(
        "--debug", action="store_true", default=default, help="show the traceback of an error instead of one line"
    )


def add_trust_code(parser: argparse.ArgumentParser) -> None:
    """``--trust-code``, one definition for every command that loads a run's model or data: a run folder
    may come from someone else."""
    parser.add_argument(
        run_schema.TRUST_CODE,
        dest="trust_code",
        action="store_true",
        help="run the run's own code if its model or data needs it (its model_source.py, a custom "
        "layer, a Lambda layer, a data function); only for runs from people you trust",
    )


# What a flag turns its text into, by the type of its field; a bool field is a switch instead.
_READERS = {int: integer, float: number, str: None, tuple: None}  # the config parses tuples: "512,256,128"


def add_config_flags(parser: Any, keys: Collection[str] = CONFIG_KEYS) -> None:
    """A flag on ``parser`` (or argument group) for each :class:`TrainConfig` field named in ``keys``,
    built from the field: its name (``--batch-size``, or its ``Flag.name``), type, choices, and its
    default, which the help states. Each flag defaults to None, "not given", so that a --config file's
    value stands unless the flag is given."""
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        if field.name not in keys or not field.metadata["flag"].cli:
            continue
        flag, kind = field.metadata["flag"], _flag_type(hints[field.name])
        if kind is bool:  # a switch that turns the option on: its default is off
            parser.add_argument(
                flag_name(field.name), dest=field.name, action="store_const", const=True, help=flag.help
            )
            continue
        checked = flag.choices if flag.parser_checks_choices and flag.choices else None
        listed = "{" + ",".join(flag.choices) + "}" if flag.choices and not checked else None  # as argparse would
        text = f"{flag.help} (default: {_default_text(field.default, flag.unset)})"
        parser.add_argument(
            flag_name(field.name),
            dest=field.name,
            type=_READERS[kind],
            choices=checked,
            metavar=flag.metavar or listed,
            help=text.replace("%", "%%"),
        )


def config_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The config values among ``args`` (None: not given), as :func:`gradloop.app.config.build_config` takes them."""
    return {k: v for k, v in vars(args).items() if k in CONFIG_KEYS}


def _flag_type(annotation: Any) -> type:
    """The type a field's flag reads: ``int | None`` -> int (None: not given), ``tuple[int, ...]`` -> tuple."""
    if isinstance(annotation, types.UnionType):  # the first type is the flag's (str | dict: a dict comes from a file)
        annotation = next(t for t in typing.get_args(annotation) if t is not type(None))
    return typing.get_origin(annotation) or annotation


def _default_text(value: Any, unset: str) -> str:
    """A default as the help shows it: 512,256,128 for a tuple; 0.0001, 300 or 1/6 for a float; ``unset`` for None."""
    if value is None:
        return unset
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if not isinstance(value, float):
        return str(value)
    text = f"{value:g}"
    if float(text) != value:  # 0.166667 is not 1/6
        ratio = fractions.Fraction(value).limit_denominator(1000)
        text = str(ratio) if float(ratio) == value else repr(value)
    return text


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: each command module adds its parser, which runs the module's ``run``."""
    from gradloop.commands import bench, compare, evaluate, export, launch, lr_find, predict, report, runs, sweep, train

    parser = Parser(prog="gradloop", description="A correct, fast, resumable custom training loop for TF/Keras.")
    parser.add_argument("--version", action="version", version=f"gradloop {__version__}")
    _add_debug(parser, False)
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in (train, evaluate, launch, bench, report, export, predict, runs, compare, lr_find, sweep):
        command = module.add_parser(subparsers)
        command.set_defaults(run=module.run)
        _add_debug(command, argparse.SUPPRESS)
    return parser


def signal_exit_code(signum: int) -> int:
    """128 + the signal number, as a shell reports a process the signal ended: 143, 130."""
    return 128 + signum


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("gradloop: interrupted", file=sys.stderr)
        return 130
    except GradloopError as exc:
        if args.debug:
            raise
        print(f"gradloop: error: {one_line(exc)}", file=sys.stderr)
        return 1 if isinstance(exc, (TrainingError, DiskFullError)) else 2  # 1: diverged or disk full, not a bad input
    except OSError as exc:  # the machine, not gradloop: a full disk, a vanished folder
        if args.debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(
            f"gradloop: error: {where}{one_line(exc.strerror or exc)}; check the path and free space", file=sys.stderr
        )
        return 2
    except Exception as exc:  # a bug: say so in one line, the traceback is one flag away
        if args.debug:
            raise
        print(
            f"gradloop: internal error: {type(exc).__name__}: {one_line(exc)[:500]}; "
            "rerun with --debug for the traceback and report it",
            file=sys.stderr,
        )
        return 1
