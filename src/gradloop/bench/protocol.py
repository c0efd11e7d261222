"""How bench talks to a process of its own (:mod:`gradloop.bench.worker`, :mod:`gradloop.bench.peers`), both ends:
one JSON request on the command line, then one JSON line in and one out per request, until the input ends.

    bench:    process = VariantProcess(variant, request, module=...); process.reply(); process.ask(**request)
    process:  replies = protocol_stream(); reply(replies, {...}) once set up, then once per line of stdin

A failure in the process is its last reply, ``{"error": message, "kind": exception class}``, raised again in
bench's process as that error (a ``GradloopError`` or an ``OSError``), so the CLI reports it in one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import IO, Any

from gradloop import errors


class VariantProcess:
    """A process running one variant (``module``: :mod:`gradloop.bench.worker` or :mod:`gradloop.bench.peers`):
    a JSON request in, a JSON reply out."""

    def __init__(
        self,
        variant: str,
        request: dict[str, Any],
        *,
        module: str = "gradloop.bench.worker",
        env: dict[str, str] | None = None,
    ) -> None:
        self.variant = variant
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, variant, json.dumps(request)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def ask(self, **request: Any) -> dict[str, Any]:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self.reply()

    def reply(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(
                f"the bench's {self.variant} process ended (exit status {self.process.wait()}) "
                "without answering; its error is above"
            )
        reply = json.loads(line)
        if "error" in reply:
            raise _worker_error(self.variant, reply["kind"], reply["error"])
        return reply

    def finish(self) -> dict[str, Any]:
        """Its last reply (peak RSS, footprint), once it has stopped training for good."""
        return self.ask(stop=True)

    def close(self, *, kill: bool = False) -> None:
        """Wait for it to exit (``kill``: end it now, as when the bench failed or was interrupted)."""
        if kill and self.process.poll() is None:
            self.process.kill()
        try:
            self.process.stdin.close()
        except OSError:  # a broken pipe: it has gone already
            pass
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


def _worker_error(variant: str, kind: str, message: str) -> Exception:
    """A worker's failure, raised here as it would have been raised in this process."""
    known = getattr(errors, kind, None)
    if isinstance(known, type) and issubclass(known, errors.GradloopError):
        return known(message)
    if kind in ("OSError", "FileNotFoundError", "PermissionError", "NotADirectoryError", "IsADirectoryError"):
        return OSError(message)
    return RuntimeError(f"the bench's {variant} process failed: {kind}: {message}")


def protocol_stream() -> IO[str]:
    """The replies' own channel: the original stdout. Anything else printed to stdout goes to stderr."""
    replies = os.fdopen(os.dup(1), "w")
    sys.stdout.flush()
    os.dup2(2, 1)
    return replies


def reply(replies: IO[str], message: dict[str, Any]) -> None:
    replies.write(json.dumps(message) + "\n")
    replies.flush()
