"""Durable writes, seen in the system calls of a real ``gradloop train`` (strace): every file of the
run is fsynced under a temporary name, renamed, and its folder fsynced; every checkpoint's files are
fsynced before the rename of the state file that records it as the latest."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import missing

from gradloop.run import files as run_files

SYSCALL = re.compile(r"^\d+ +(?P<call>\w+)\((?P<args>.*?)(?:\) += |\s*<unfinished)")


def traced(tmp_path: Path, *argv: str) -> list[tuple[str, list[str]]]:
    """Run ``argv`` under strace; the fsync and rename calls in order, as (call, [paths])."""
    if shutil.which("strace") is None:
        missing("strace", "strace is not installed (apt-get install strace)")
    log = tmp_path / "strace.log"
    done = subprocess.run(
        ["strace", "-f", "-y", "-qq", "-o", str(log), "-e", "trace=fsync,fdatasync,rename,renameat,renameat2", *argv],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0 and "PTRACE" in done.stderr.upper():
        missing("strace", f"strace cannot trace here: {done.stderr.strip().splitlines()[0]}")
    assert done.returncode == 0, done.stderr
    calls = []
    for line in log.read_text().splitlines():
        match = SYSCALL.match(line)
        if match and "resumed>" not in line:
            calls.append((match["call"], re.findall(r'<([^<>]+)>|"([^"]+)"', match["args"])))
    return [(call, [a or b for a, b in paths]) for call, paths in calls]


def test_write_atomically_syncs_the_file_renames_it_and_syncs_the_folder(tmp_path):
    path = tmp_path / "run.json"
    calls = traced(
        tmp_path,
        sys.executable,
        "-c",
        f"from gradloop.run import files as run_files; run_files.write_json({str(path)!r}, {{'a': 1}})",
    )
    assert [c for c in calls if any(str(tmp_path) in p for p in c[1])] == [
        ("fsync", [str(tmp_path / "run.partial.json")]),
        ("rename", [str(tmp_path / "run.partial.json"), str(path)]),
        ("fsync", [str(tmp_path)]),
    ]


@pytest.mark.slow
def test_every_file_a_run_writes_is_durable_before_it_counts(tmp_path):
    run = tmp_path / "run"
    calls = traced(
        tmp_path,
        sys.executable,
        "-m",
        "gradloop",
        "train",
        "--dataset",
        "mnist-sample",
        "--classes",
        "0,1",
        "--hidden",
        "8",
        "--epochs",
        "1",
        "--checkpoint-every",
        "20",
        "--run-dir",
        str(run),
    )
    calls = [(call, paths) for call, paths in calls if any(p.startswith(str(run)) for p in paths)]
    synced: set[str] = set()
    finals, written = set(), []  # final names renamed into place; checkpoints TensorFlow has written
    for i, (call, paths) in enumerate(calls):
        if call.startswith("f"):
            synced.add(paths[0])
            continue
        source, target = paths
        if "_temp/" in target:
            continue  # TensorFlow assembling a checkpoint
        if Path(target).name.startswith("ckpt-"):
            written.append(target.split(".data-")[0])  # its data file is in place; its state file must wait
            continue
        finals.add(Path(target).name)
        assert ("fsync", [str(Path(target).parent)]) in calls[i + 1 : i + 4], (
            f"{Path(target).parent} not fsynced after {target}"
        )
        if Path(target).name == "checkpoint":
            # TensorFlow renames its state file in unsynced, and again after sweeping old checkpoints: fsynced
            # right after (a crash before that leaves a checkpoint file that restore finds by its name).
            assert ("fsync", [target]) in calls[i + 1 : i + 4], "the checkpoint state file is not fsynced"
            for prefix in written:  # every checkpoint it can record was fsynced before
                assert {f"{prefix}.index", f"{prefix}.data-00000-of-00001"} <= synced, (
                    f"{prefix} recorded before an fsync"
                )
        else:
            assert source in synced, f"{source} renamed to {target} before an fsync"
            synced.discard(source)
    assert len(written) >= 3, written
    assert {
        run_files.RUN_JSON,
        run_files.HISTORY_JSON,
        run_files.HISTORY_CSV,
        run_files.HISTORY_PNG,
        run_files.MODEL,
        run_files.BEST_MODEL,
        "checkpoint",
    } <= finals, finals
    for prefix in (p.with_suffix("") for p in (run / "checkpoints").glob("ckpt-*.index")):
        assert {f"{prefix}.index", f"{prefix}.data-00000-of-00001"} <= synced, prefix
