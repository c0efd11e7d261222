"""100 SIGKILLs at random instants, each followed by ``gradloop train --resume``: every run ends
bit for bit as a run never stopped (model.keras, model.best.keras, history.json).

    reference   one real ``python -m gradloop train``, never stopped
    kills       until 100 kills have counted: start the run (or resume it), wait for its start line,
                then SIGKILL it at an instant drawn from a seeded random.Random:
                    time        a random delay after its first progress line (training began)
                    start       a random delay after the start line (in the restore or the tracing:
                                such kills do not count, but must do no harm)
                    checkpoint  the moment a new checkpoint's files appear (mid-write)
                    write       the moment a ``.partial.`` file appears (run.json, history, model files)
                    final       a random delay after the last epoch's line (the final model/history writes)
                a kill counts when it hit a live run that was training: the signal ended the process
                (it had not exited), the run was not finished, and the process had trained (a progress
                line, or a checkpoint past the one it started from); the others are checked alike but
                do not count. A run that finished starts a new run at the next kill.
    resumes     each resume proves it resumed: its start line's epoch and step are those of the
                checkpoint the kill before it left recorded (past step 0 from the second checkpoint on)
    finally     the last run is resumed by a real ``python -m gradloop train --resume``

Python's start-up and TensorFlow's import take about 4 s a process, 100 kills
would take 7 minutes; so the kills are driven by a helper process (this file run
as a script) that imports gradloop and TensorFlow once, without running any of
TensorFlow's ops, and forks one child per start or resume, which runs the CLI's
own ``main`` exactly as ``python -m gradloop`` does (the reference and the last
resume are such real processes, so a forked child's numbers are checked against
them). The seed is printed; ``GRADLOOP_KILL_SEED=N`` repeats a draw of instants
(their timing on a busy machine still varies).
"""

from __future__ import annotations

import importlib
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

SEED_ENV = "GRADLOOP_KILL_SEED"
KILLS = 100
ATTEMPTS = 3 * KILLS  # kills that do not count (the process had exited, or not begun training) included
EPOCHS, STEPS_PER_EPOCH, EVERY = 3, 27, 5
# 833 training digits (0 and 1) in 27 batches of 32 per epoch, a checkpoint every 5 steps: 19 saves a run.
RUN = (
    "--dataset mnist-sample --classes 0,1 --hidden 16 --batch-size 32 --deterministic "
    f"--checkpoint-every {EVERY} --epochs {EPOCHS}"
).split()
# How often each way of aiming a kill is drawn.
MODES = {"time": 40, "start": 10, "checkpoint": 25, "write": 15, "final": 10}
STARTED = ("gradloop: training ", "gradloop: resuming ")
RESUMED_AT = re.compile(r"gradloop: resuming \S+ at epoch (\d+) step (\d+) ")
PROGRESS = re.compile(r"epoch \d+( step \d+/\d+ |/\d+ )")  # a progress line, or an epoch's summary line
CHILD_SECONDS = 120  # a child that neither starts nor ends by then is hung: a failure, not a wait


def checkpoint_position(number: int) -> list[int]:
    """Where a run's checkpoint ``number`` (ckpt-NUMBER) stands, as [epoch, step] (0-based epoch): the first
    is saved as training begins, then one every EVERY steps of an epoch, and one at each epoch's end (as the
    next epoch's step 0). A resume numbers on from the checkpoint it restored, so the map holds across kills."""
    saves = [[0, 0]]
    for epoch in range(EPOCHS):
        saves += [[epoch, step] for step in range(EVERY, STEPS_PER_EPOCH, EVERY)] + [[epoch + 1, 0]]
    return saves[number - 1]


def resumed_at(lines: list[str]) -> list[int] | None:
    """[epoch, step] (0-based epoch) of the start line ``gradloop: resuming mlp at epoch 2 step 10 ...``;
    None for a start line of a new run."""
    match = next((m for m in map(RESUMED_AT.match, lines) if m), None)
    return [int(match[1]) - 1, int(match[2])] if match else None


# --------------------------------------------------------------------- the helper process (this file as a script)


class Child:
    """``gradloop.cli.main(argv)`` in a forked child, its stdout and stderr in one pipe read line by line."""

    def __init__(self, argv: list[str]) -> None:
        read, write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:  # the child: the CLI, then out without running the parent's exit handlers
            os.close(read)
            os.dup2(write, 1)
            os.dup2(write, 2)
            code = 70
            try:
                sys.stdout.reconfigure(line_buffering=True)
                from gradloop import cli

                code = cli.main(argv)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(write)
        self.fd, self.lines, self._partial, self.status = read, [], b"", None
        self.started = time.monotonic()

    def poll(self, timeout: float) -> None:
        """Read what the child wrote within ``timeout`` seconds, and whether it ended."""
        if select.select([self.fd], [], [], timeout)[0]:
            chunk = os.read(self.fd, 65536)
            self._partial += chunk
            *done, self._partial = self._partial.split(b"\n")
            self.lines += [line.decode(errors="replace") for line in done]
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)

    def kill(self) -> int:
        """SIGKILL it (unless it ended), then read what it wrote before; again, nothing more happens."""
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
            self.status = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        if self.fd is not None:
            while select.select([self.fd], [], [], 0)[0] and self._read_more():
                pass
            os.close(self.fd)
            self.fd = None
        return self.status

    def _read_more(self) -> bool:
        chunk = os.read(self.fd, 65536)
        self._partial += chunk
        *done, self._partial = self._partial.split(b"\n")
        self.lines += [line.decode(errors="replace") for line in done]
        return bool(chunk)

    def has(self, prefix: str | tuple[str, ...]) -> bool:
        return any(line.startswith(prefix) for line in self.lines)

    def printed_progress(self) -> bool:
        """Whether it printed a progress or epoch line after its start line: it ran training steps."""
        start = next((i for i, line in enumerate(self.lines) if line.startswith(STARTED)), len(self.lines))
        return any(PROGRESS.match(line) for line in self.lines[start + 1 :])

    def hung(self) -> bool:
        return time.monotonic() - self.started > CHILD_SECONDS


def _names(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


def _checkpoint_numbers(run: Path) -> set[int]:
    """Every checkpoint number with a file or folder in checkpoints/, complete or being written."""
    numbers = set()
    for name in _names(run / "checkpoints"):
        if name.startswith("ckpt-"):
            digits = name[5:].split(".")[0].split("_")[0]
            if digits.isdigit():
                numbers.add(int(digits))
    return numbers


def _recorded_checkpoint(run: Path) -> int | None:
    """The number of the checkpoint the state file records as the latest (what a resume restores)."""
    try:
        first = (run / "checkpoints" / "checkpoint").read_text().splitlines()[0]
        return int(first.rsplit("-", 1)[1].rstrip('"'))
    except (OSError, IndexError, ValueError):
        return None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:  # a half-written file: what the atomic writes exist to prevent
        return {"__damaged__": str(exc)}


def _aim(child: Child, run: Path, mode: str, rng: random.Random) -> str:
    """Wait until the instant ``mode`` aims at, or the child's end; say what was waited for."""
    if mode in ("time", "start"):
        delay = rng.uniform(0.0, 1.2)
        while mode == "time" and child.status is None and not child.printed_progress() and not child.hung():
            child.poll(0.002)
        until = time.monotonic() + delay
        while child.status is None and time.monotonic() < until:
            child.poll(min(0.005, max(until - time.monotonic(), 0)))
        return f"{delay:.3f}s after the {'first progress' if mode == 'time' else 'start'} line"
    if mode == "final":
        delay = rng.uniform(0.0, 0.4)
        while child.status is None and not child.has(f"epoch {EPOCHS}/{EPOCHS} ") and not child.hung():
            child.poll(0.002)
        until = time.monotonic() + delay
        while child.status is None and time.monotonic() < until:
            child.poll(min(0.005, max(until - time.monotonic(), 0)))
        return f"{delay:.3f}s after the last epoch's line"
    skip = rng.randint(0, 4 if mode == "checkpoint" else 3)
    if mode == "checkpoint":
        seen = _checkpoint_numbers(run)
        events = 0
        while child.status is None and not child.hung():
            new = _checkpoint_numbers(run) - seen
            if new:
                seen |= new
                events += 1
                if events > skip:
                    break
            child.poll(0.0005)
        return f"the appearance of new checkpoint {events} (skipping {skip})"
    seen_partial = False
    events = 0
    while child.status is None and not child.hung():
        partial = any(".partial." in name for name in _names(run))
        if partial and not seen_partial:
            events += 1
            if events > skip:
                break
        seen_partial = partial
        child.poll(0.0005)
    return f"the appearance of partial file {events} (skipping {skip})"


def _state(run: Path) -> dict:
    """What a kill left on the disk: the checkpoints, partial files, and the run's own account."""
    numbers = _checkpoint_numbers(run)
    recorded = _recorded_checkpoint(run)
    info = _read_json(run / "run.json") if (run / "run.json").is_file() and (run / "run.json").stat().st_size else None
    return {
        "recorded_checkpoint": recorded,
        "mid_checkpoint": any(n > (recorded or 0) for n in numbers)
        or any("_temp" in n for n in _names(run / "checkpoints")),
        "partial_files": sorted(n for n in _names(run) if ".partial." in n),
        "status": info.get("status") if isinstance(info, dict) else None,
        "epochs_done": info.get("epochs_done") if isinstance(info, dict) else None,
        "run_json_damaged": isinstance(info, dict) and "__damaged__" in info,
        "model_written": (run / "model.keras").is_file(),
        "history": _read_json(run / "history.json"),
    }


def drive(root: Path, seed: int, kills: int) -> dict:
    """The kills of the module docstring; returns what each found and left."""
    from gradloop.app import cpu

    cpu.import_tensorflow()  # as the CLI does, once: the children inherit it
    for module in ("gradloop.cli", "gradloop.loop.checkpoint", "gradloop.commands.evaluate", "gradloop.app.train"):
        importlib.import_module(module)  # here, once, not in each child

    rng = random.Random(seed)
    records, runs, run, counted = [], [], None, 0
    while counted < kills and len(records) < ATTEMPTS:
        if run is None:
            run = root / f"run-{len(runs)}"
            runs.append(str(run))
            argv = ["train", *RUN, "--run-dir", str(run)]
        else:
            argv = ["train", "--resume", "--run-dir", str(run)]
        mode = rng.choices(list(MODES), weights=list(MODES.values()))[0]
        start_checkpoint = _recorded_checkpoint(run)  # what a resume restores
        child = Child(argv)
        while child.status is None and not child.has(STARTED) and not child.hung():
            child.poll(0.002)
        record = {
            "kill": len(records) + 1,
            "run": str(run),
            "argv": argv[1:2],
            "mode": mode,
            "resumed_from": start_checkpoint if argv[1] == "--resume" else None,
        }
        if not child.has(STARTED):
            child.kill()
            tail = child.lines[-3:]
            if child.status == 2 and any("has no checkpoint to resume from" in line for line in tail):
                # killed after its start line but before its first checkpoint: the advice is --overwrite
                child = Child(["train", *RUN, "--run-dir", str(run), "--overwrite"])
                while child.status is None and not child.has(STARTED) and not child.hung():
                    child.poll(0.002)
                record["restarted"] = True
            if not child.has(STARTED):
                child.kill()
                records.append({**record, "error": f"did not start (exit {child.status}): {child.lines[-3:]}"})
                break
        record["resumed_at"] = resumed_at(child.lines)
        record["aimed_at"] = _aim(child, run, mode, rng)
        record["seconds_after_start"] = round(time.monotonic() - child.started, 3)
        finished, hung = child.status == 0, child.hung()
        record["exit"] = child.kill()
        record["finished_first"] = finished
        if child.status not in (0, -signal.SIGKILL) or hung:
            record["error"] = f"{'hung, ' if hung else ''}exit {child.status}: {child.lines[-3:]}"
        record.update(_state(run))
        trained = child.printed_progress() or (record["recorded_checkpoint"] or 0) > (start_checkpoint or 0)
        record["counts"] = record["exit"] == -signal.SIGKILL and record["status"] != "finished" and trained
        counted += record["counts"]
        records.append(record)
        if "error" in record:
            break
        if finished or record["status"] == "finished":  # killed as it exited, its run.json already final: done
            run = None
    last = None
    if run is not None and "error" not in records[-1]:  # a real process, as a user would type it, ends the last run
        last = {"run": str(run), "resumed_from": _recorded_checkpoint(run)}
        done = subprocess.run(
            [sys.executable, "-m", "gradloop", "train", "--resume", "--run-dir", str(run)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode == 2 and "has no checkpoint to resume from" in done.stderr:  # killed before its first
            done = subprocess.run(
                [sys.executable, "-m", "gradloop", "train", *RUN, "--run-dir", str(run), "--overwrite"],
                capture_output=True,
                text=True,
                timeout=600,
            )
            last["restarted"] = True
        last.update(exit=done.returncode, stderr=done.stderr[-2000:], resumed_at=resumed_at(done.stdout.splitlines()))
    return {"runs": runs, "kills": records, "last_resume": last}


if __name__ == "__main__":
    root_arg, seed_arg, kills_arg, out_arg = sys.argv[1:5]
    result = drive(Path(root_arg), int(seed_arg), int(kills_arg))
    Path(out_arg).write_text(json.dumps(result, indent=1))
    sys.exit(0)


# --------------------------------------------------------------------- the test

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def weights(path: Path) -> list[np.ndarray]:
    return keras.models.load_model(path, compile=False).get_weights()


def same_history(got: dict, expected: dict, *, prefix: bool = False) -> bool:
    """Equal, ``train_time`` (the clock) aside; with ``prefix``, ``got``'s epochs are ``expected``'s first ones."""
    if set(got) - {"train_time"} != set(expected) - {"train_time"}:
        return False
    return all(
        got[key] == expected[key][: len(got[key]) if prefix else None] for key in expected if key != "train_time"
    )


def check_resumed(start: dict, where: str) -> None:
    """A resume (a kill's record, or the last resume's) proves it resumed: its start line's [epoch, step] is
    where the checkpoint recorded before it stands, past step 0 from the second checkpoint on; with none
    recorded it started the run again (or, were only the state file lost, resumed from the first)."""
    number, at = start["resumed_from"], start["resumed_at"]
    if number is None:
        assert start.get("restarted") or at == [0, 0], f"{where}: no checkpoint was recorded, yet it resumed at {at}"
        return
    assert at == checkpoint_position(number), (
        f"{where}: resumed at [epoch, step] {at}, not where checkpoint {number} stands: {checkpoint_position(number)}"
    )
    assert (at != [0, 0]) == (number > 1), f"{where}: resumed at {at} from checkpoint {number}"


@pytest.mark.slow
def test_100_random_kills_each_resumed_end_bit_identical_to_an_unstopped_run(tmp_path):
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**32))
    again = f"seed {seed} (repeat it with {SEED_ENV}={seed})"
    print(f"random kills: {again}")
    started = time.monotonic()
    reference = subprocess.Popen(
        [sys.executable, "-m", "gradloop", "train", *RUN, "--run-dir", str(tmp_path / "reference")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    out = tmp_path / "kills.json"
    driver = subprocess.run(
        [sys.executable, __file__, str(tmp_path), str(seed), str(KILLS), str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert reference.wait(timeout=600) == 0, reference.stderr.read()
    assert driver.returncode == 0 and out.is_file(), f"{again}: the kill driver failed: {driver.stderr[-3000:]}"
    result = json.loads(out.read_text())
    kills, runs = result["kills"], result["runs"]
    expected_history = json.loads((tmp_path / "reference" / "history.json").read_text())

    for record in kills:
        aimed = f"{record['mode']}: {record.get('aimed_at')}"
        where = f"{again}, kill {record['kill']} ({aimed}, run {Path(record['run']).name})"
        assert "error" not in record, f"{where}: {record['error']}"
        assert not record["run_json_damaged"] and not (
            isinstance(record["history"], dict) and "__damaged__" in record["history"]
        ), where
        assert record["history"] is None or same_history(record["history"], expected_history, prefix=True), (
            f"{where}: history.json after the kill is not the unstopped run's first epochs: {record['history']}"
        )
        if record["argv"] == ["--resume"]:
            check_resumed(record, where)
    counted = [r for r in kills if r["counts"]]
    assert len(counted) == KILLS, f"{again}: {len(counted)} of {len(kills)} kills hit a live run that was training"
    last = result["last_resume"]
    if last is not None:
        assert last["exit"] == 0, f"{again}, the resume after kill {len(kills)}: {last['stderr']}"
        check_resumed(last, f"{again}, the resume after kill {len(kills)}")

    expected = {name: weights(tmp_path / "reference" / name) for name in ("model.keras", "model.best.keras")}
    for run in map(Path, runs):
        which = [r["kill"] for r in kills if r["run"] == str(run)]
        where = f"{again}, run {run.name} (kills {which[0]} to {which[-1]})"
        info = json.loads((run / "run.json").read_text())
        assert info["status"] == "finished" and info["epochs_done"] == EPOCHS, f"{where}: {info['status']}"
        for name, reference_weights in expected.items():
            got = weights(run / name)
            assert len(got) == len(reference_weights) > 0 and all(
                np.array_equal(a, b) for a, b in zip(reference_weights, got)
            ), f"{where}: {name} differs from the unstopped run's"
        assert same_history(json.loads((run / "history.json").read_text()), expected_history), (
            f"{where}: history differs"
        )
        assert not [p.name for p in run.rglob("*.partial.*")], f"{where}: partial files left behind"

    seconds = time.monotonic() - started
    ended = sum(r["exit"] != -signal.SIGKILL or r["status"] == "finished" for r in kills)
    mid_checkpoint = sum(r["mid_checkpoint"] for r in counted)
    final = sum(r["epochs_done"] == EPOCHS for r in counted)
    partial = sum(bool(r["partial_files"]) for r in counted)
    resumes = [r for r in kills if r["argv"] == ["--resume"]] + ([last] if last is not None else [])
    past_start = sum(r["resumed_at"] not in (None, [0, 0]) for r in resumes)
    print(
        f"random kills: {again}: {KILLS} kills of a live run that was training, and {len(kills) - KILLS} that did "
        f"not count ({ended} after the process had ended or its run finished, {len(kills) - KILLS - ended} before "
        f"training began); {mid_checkpoint} during a checkpoint's write, {partial} during a file's write, {final} "
        f"after the last epoch (the final writes); {len(resumes)} resumes, each at its checkpoint's epoch and step "
        f"({past_start} past step 0); {len(runs)} runs, each ended bit-identical; {seconds:.0f} s"
    )
    # Aimed kills land mid-write often; the floors only guard against aiming (or resuming) that stopped working.
    assert mid_checkpoint >= 3 and final >= 2 and partial >= 2, f"{again}: too few kills landed mid-write"
    assert past_start >= KILLS // 2, f"{again}: only {past_start} of {len(resumes)} resumes went on past step 0"
