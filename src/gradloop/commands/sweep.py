"""``gradloop sweep SPEC.yaml``: the command line of :mod:`gradloop.sweep`, an Optuna search over train's
options in which each trial is a run directory. Running the same command again continues the sweep."""

from __future__ import annotations

import argparse
import shlex
import sys

from gradloop import cli
from gradloop.app import cpu


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("sweep", help="search train options with Optuna; each trial is a run directory")
    parser.add_argument("spec", metavar="SPEC.yaml", help="trials, metric, direction, train (fixed options), space")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="the sweep folder (default sweeps/<SPEC's name>); run the same command again to continue it",
    )
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="the study's storage: a journal file, or a PostgreSQL/MySQL URL "
        "for several machines (default DIR/study.journal)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from gradloop.sweep import spec as sweep_spec

    spec = sweep_spec.read_spec(args.spec)  # before TensorFlow: a bad SPEC is one line at once
    cpu.import_tensorflow()
    from gradloop.app.interrupted import RunInterrupted
    from gradloop.loop.signals import StopSignals
    from gradloop.sweep import trials

    try:
        with StopSignals() as stop:
            trials.run_sweep(spec, out=args.out, storage=args.storage, stop=stop, notify=cli.to_stderr)
    except RunInterrupted as exc:
        print(
            f"gradloop: sweep interrupted in {exc.run_dir} at epoch {exc.epoch + 1} step {exc.step}; "
            f"continue it with: {_again(args)}",
            file=sys.stderr,
        )
        return cli.signal_exit_code(exc.signum)
    return 0


def _again(args: argparse.Namespace) -> str:
    """The command that continues the sweep: this one."""
    words = (
        "gradloop",
        "sweep",
        args.spec,
        *(("--out", args.out) if args.out else ()),
        *(("--storage", args.storage) if args.storage else ()),
    )
    return " ".join(shlex.quote(word) for word in words)
