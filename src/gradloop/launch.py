"""``gradloop launch --workers N -- train ...``: a multi-worker job on one machine.

Each worker is the same ``gradloop train`` command with its own TF_CONFIG on
a free loopback port, exactly what N machines would run (see README). Worker
0 is the chief: its output is shown and it writes the run directory; the
others log to a scratch folder. If any worker fails, the rest are stopped
and the launch fails, so a lost peer never leaves the job hanging.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from gradloop.errors import ConfigError, GradloopError


class WorkerFailed(GradloopError):
    """A worker of a launched job exited with an error."""


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


def worker_env(cluster: list[str], index: int) -> dict[str, str]:
    tf_config = {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
    return {**os.environ, "TF_CONFIG": json.dumps(tf_config)}


MAX_WORKERS = 32  # each worker is a whole TensorFlow process on this one machine


def train_argv(workers: int, argv: Sequence[str]) -> list[str]:
    """The checked ``train ...`` arguments that every worker runs."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"--workers must be from 1 to {MAX_WORKERS} on one machine, got {workers}")
    argv = list(argv[1:] if argv and argv[0] == "--" else argv)
    if not argv or argv[0] != "train":
        raise ConfigError("give the command after --, e.g. gradloop launch --workers 2 -- train --epochs 3")
    if "--strategy" in argv:
        raise ConfigError("gradloop launch sets --strategy multi_worker itself; drop --strategy")
    return argv


def launch(workers: int, argv: Sequence[str], *, poll_seconds: float = 0.2, grace_seconds: float = 10.0) -> int:
    """Run ``gradloop <argv> --strategy multi_worker`` as ``workers`` local processes."""
    argv = train_argv(workers, argv)
    command = [sys.executable, "-m", "gradloop", *argv, "--strategy", "multi_worker"]
    cluster = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    logs = Path(tempfile.mkdtemp(prefix="gradloop-launch-"))
    procs: list[subprocess.Popen] = []
    for index in range(workers):
        out = None if index == 0 else open(logs / f"worker-{index}.log", "w")
        procs.append(subprocess.Popen(command, env=worker_env(cluster, index), stdout=out,
                                      stderr=subprocess.STDOUT if out else None))
        print(f"gradloop: launched worker {index} (pid {procs[-1].pid}) on {cluster[index]}", file=sys.stderr)
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                index, code = failed[0]
                _stop(procs, grace_seconds)
                where = "above" if index == 0 else f"in {logs / f'worker-{index}.log'}"
                raise WorkerFailed(f"worker {index} exited with status {code} (its output is {where}); stopped the others")
            if all(c == 0 for c in codes):
                return 0
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        _stop(procs, grace_seconds)
        raise


def _stop(procs: list[subprocess.Popen], grace_seconds: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
