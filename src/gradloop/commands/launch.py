"""``gradloop launch --workers N -- train ...``: a multi-worker job on one machine.

Each worker is the same ``gradloop train`` command with its own TF_CONFIG on
a free loopback port, exactly what N machines would run (see README). Worker
0 is the chief: its output is shown and it writes the run directory; the
others log to a scratch folder. If any worker fails, the rest are killed
and the launch fails, so a lost peer never leaves the job hanging.

SIGTERM and SIGINT (Ctrl-C) reach the workers through the launch only (they
run in their own session, away from the terminal), each signal once: the
workers then agree to save a checkpoint at the same step and stop, and the
launch exits as they do (143, 130), after the chief printed how to resume.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from gradloop import cli
from gradloop.commands.train import train_config
from gradloop.errors import ConfigError, GradloopError
from gradloop.run import start as run_start


class WorkerFailed(GradloopError):
    """A worker of a launched job exited with an error."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("launch", help="run a multi-worker job as N local processes")
    parser.add_argument("--workers", type=cli.integer, required=True, help="number of worker processes")
    parser.add_argument("train_argv", nargs=argparse.REMAINDER, metavar="-- train ...", help="the train command to run")
    return parser


def run(args: argparse.Namespace) -> int:
    # The workers' own checks would report a bad flag N times, after start-up: check it once, now.
    argv = [*train_argv(args.workers, args.train_argv), "--strategy", "multi_worker"]
    train_args = cli.build_parser().parse_args(argv)
    config = train_config(train_args)
    if train_args.resume:
        run_start.check_resumable(config.run_dir, epochs=config.epochs, workers=args.workers)
    try:
        return launch(args.workers, args.train_argv)
    except WorkerFailed as exc:  # not the user's input: the job failed
        print(f"gradloop: error: {exc}", file=sys.stderr)
        return 1


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held open together so none repeats)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# Tells a launched worker how many were launched, so an interrupted run names the launch that resumes it.
WORKERS_ENV = "GRADLOOP_LAUNCH_WORKERS"


def worker_env(cluster: list[str], index: int) -> dict[str, str]:
    tf_config = {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
    return {**os.environ, "TF_CONFIG": json.dumps(tf_config), WORKERS_ENV: str(len(cluster))}


MAX_WORKERS = 32  # each worker is a whole TensorFlow process on this one machine


def train_argv(workers: int, argv: Sequence[str]) -> list[str]:
    """The checked ``train ...`` arguments that every worker runs."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"--workers must be from 1 to {MAX_WORKERS} on one machine, got {workers}")
    argv = list(argv[1:] if argv and argv[0] == "--" else argv)
    if not argv or argv[0] != "train":
        raise ConfigError("give the command after --, e.g. gradloop launch --workers 2 -- train --epochs 3")
    # argparse also takes --strategy=X and an unambiguous prefix (--strat X): the appended flag would win silently.
    if any(len(name) >= len("--str") and "--strategy".startswith(name) for name in (a.split("=")[0] for a in argv)):
        raise ConfigError("gradloop launch sets --strategy multi_worker itself; drop --strategy")
    return argv


# How a worker ends without failing: done, or stopped by SIGTERM / SIGINT after a checkpoint.
STOPPED_CLEANLY = (0, 128 + signal.SIGTERM, 128 + signal.SIGINT)


def launch(workers: int, argv: Sequence[str], *, poll_seconds: float = 0.2) -> int:
    """Run ``gradloop <argv> --strategy multi_worker`` as ``workers`` local processes;
    returns their exit status (0, or 143 / 130 when a signal stopped them)."""
    argv = train_argv(workers, argv)
    command = [sys.executable, "-m", "gradloop", *argv, "--strategy", "multi_worker"]
    cluster = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    logs = Path(tempfile.mkdtemp(prefix="gradloop-launch-"))
    procs: list[subprocess.Popen] = []
    with ForwardSignals(procs):
        try:
            for index in range(workers):
                out = None if index == 0 else open(logs / f"worker-{index}.log", "w")
                procs.append(
                    subprocess.Popen(
                        command,
                        env=worker_env(cluster, index),
                        stdout=out,
                        stderr=subprocess.STDOUT if out else None,
                        start_new_session=True,
                    )
                )
                if out is not None:
                    out.close()  # the worker has its own copy of the file
                where = "" if index == 0 else f", output in {out.name}"
                print(
                    f"gradloop: launched worker {index} (pid {procs[-1].pid}) on {cluster[index]}{where}",
                    file=sys.stderr,
                )
            while True:
                codes = [p.poll() for p in procs]
                failed = [(i, c) for i, c in enumerate(codes) if c not in (None, *STOPPED_CLEANLY)]
                if failed:
                    index, code = failed[0]
                    where = "above" if index == 0 else f"in {logs / f'worker-{index}.log'}"
                    raise WorkerFailed(
                        f"worker {index} exited with status {code} (its output is {where}); stopped the others"
                    )
                if None not in codes:
                    return max(codes)
                time.sleep(poll_seconds)
        finally:  # a failed worker's peers cannot finish a collective without it: stop them at once
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()


class ForwardSignals:
    """While active, SIGTERM and SIGINT sent to the launch are sent on to each
    running worker: the first makes them save and stop together (see
    gradloop.loop.signals.StopSignals), a second stops them at once. Signals can
    only be handled in the main thread, so elsewhere this does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, procs: list[subprocess.Popen]) -> None:
        self.procs = procs  # the launch's own list, so workers started later are included
        self.received = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> ForwardSignals:
        try:
            self._previous = {s: signal.signal(s, self._forward) for s in self.SIGNALS}
        except ValueError:  # not the main thread
            self._previous = {}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _forward(self, signum: int, frame: object) -> None:
        self.received += 1
        running = [p for p in self.procs if p.poll() is None]
        what = "to save a checkpoint and stop" if self.received == 1 else "to stop at once"
        print(
            f"gradloop: {signal.Signals(signum).name}: telling {len(running)} workers {what}",
            file=sys.stderr,
            flush=True,
        )
        for p in running:
            p.send_signal(signum)
