"""A full disk, for real: a small tmpfs the test mounts and fills. A write that finds no space is
one line and exit 1, the latest complete checkpoint stays as it was, no partial file is left under
a final name, and once space is freed the resume ends bit-identical to a run never stopped."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import missing

from gradloop import Trainer, atomic, data
from gradloop.errors import DiskFullError
from gradloop.loop.checkpoint import RunCheckpoint
from gradloop.loop.state import LoopState
from gradloop.run import files as run_files
from gradloop.run import folder as run_folder

RUN = [
    "--dataset",
    "mnist-sample",
    "--classes",
    "0,1",
    "--hidden",
    "8",
    "--batch-size",
    "16",
    "--deterministic",
    "--checkpoint-every",
    "10",
    "--epochs",
    "2",
]


@contextlib.contextmanager
def mounted_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """An empty tmpfs of ``size`` (``8m``) at the new folder ``mount``, unmounted afterwards; the test is
    skipped where this process may not mount one."""
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        missing(
            "tmpfs",
            f"cannot mount a tmpfs to fill ({done.stderr.strip() or 'mount failed'}): needs root with CAP_SYS_ADMIN",
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture
def disk(tmp_path) -> Iterator[Path]:
    """An empty 8 MB tmpfs."""
    with mounted_tmpfs(tmp_path / "disk", "8m") as mount:
        yield mount


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk`` with one file, which :func:`Path.unlink` frees again."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    chunk = 1 << 20
    try:
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                chunk //= 2  # then smaller writes take the last pages
    finally:
        os.close(fd)
    return ballast


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def no_partial_files(run: Path) -> None:
    """Nothing half-written under a final name: no temporary, and no checkpoint file the state does not record."""
    names = [p.name for p in run.rglob("*")]
    assert not [n for n in names if ".partial" in n or ".tmp" in n or "_temp" in n or "tempstate" in n], names
    recorded = set(re.findall(r'"(ckpt-\d+)"', (run / "checkpoints" / "checkpoint").read_text()))
    on_disk = {p.name.split(".")[0] for p in (run / "checkpoints").glob("ckpt-*")}
    assert on_disk <= recorded, (on_disk, recorded)


# --------------------------------------------------------------------- each kind of write, on a full disk


def toy_trainer() -> tuple[Trainer, Callable]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    keras.utils.set_random_seed(1)
    trainer = Trainer(
        keras.Sequential([keras.Input((8,)), keras.layers.Dense(64), keras.layers.Dense(2)]),
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    train = data.shuffled_epochs(x, y, batch_size=16, seed=3)
    trainer.build(train(0))
    return trainer, train


def test_a_checkpoint_that_finds_no_space_leaves_the_latest_one_and_no_part_of_itself(disk):
    trainer, train = toy_trainer()
    ckpt = RunCheckpoint(disk / "checkpoints", trainer)
    ckpt.save(LoopState(epoch=1, step=3, iterator=trainer.make_iterator(train(1)), history={"loss": [0.5]}))
    latest, before = ckpt.latest, snapshot(disk / "checkpoints")
    fill(disk)
    trainer.model.weights[0].assign(trainer.model.weights[0] + 1.0)
    with pytest.raises(DiskFullError) as full:
        ckpt.save(LoopState(epoch=1, step=4, iterator=trainer.make_iterator(train(1)), history={"loss": [0.5]}))
    assert str(full.value) == f"no space left on {disk} while writing checkpoint {disk}/checkpoints/ckpt-2"
    assert ckpt.latest == latest and snapshot(disk / "checkpoints") == before  # untouched, nothing left of ckpt-2
    assert (ckpt.restore(train).epoch, ckpt.restore(train).step) == (1, 3)


def test_a_checkpoint_whose_record_finds_no_space_leaves_no_part_of_itself(disk, monkeypatch):
    """The disk fills after the checkpoint's files are written, as the state file that records it is
    written: the files go too, since the state file on disk does not name them."""
    from gradloop.loop import checkpoint

    trainer, train = toy_trainer()
    ckpt = RunCheckpoint(disk / "checkpoints", trainer)
    ckpt.save(LoopState(epoch=1, step=3, iterator=trainer.make_iterator(train(1)), history={"loss": [0.5]}))
    latest, before = ckpt.latest, snapshot(disk / "checkpoints")
    written = checkpoint._sync_checkpoint
    monkeypatch.setattr(checkpoint, "_sync_checkpoint", lambda save_path: (written(save_path), fill(disk)))
    with pytest.raises(DiskFullError, match=f"while writing checkpoint {disk}/checkpoints/ckpt-2$"):
        ckpt.save(LoopState(epoch=1, step=4, iterator=trainer.make_iterator(train(1)), history={"loss": [0.5]}))
    assert not (disk / "checkpoints" / "ckpt-2.index").exists() and snapshot(disk / "checkpoints") == before
    no_partial_files(disk)
    assert ckpt.latest == latest


def test_a_model_that_finds_no_space_leaves_the_earlier_file(disk):
    trainer, _ = toy_trainer()
    atomic.save_model(trainer.model, disk / run_files.MODEL)
    before = (disk / run_files.MODEL).read_bytes()
    fill(disk)
    with pytest.raises(DiskFullError, match=rf"^no space left on {disk} while writing {disk}/model.keras$"):
        atomic.save_model(trainer.model, disk / run_files.MODEL)
    assert (disk / run_files.MODEL).read_bytes() == before
    assert sorted(p.name for p in disk.iterdir()) == ["ballast", "model.keras"]


def test_a_history_that_finds_no_space_leaves_the_earlier_file(disk):
    run = run_folder.RunDir(disk)
    run.record_epoch({"loss": 0.5, "val_loss": 0.6})
    before = snapshot(disk)
    ballast = fill(disk)
    with pytest.raises(DiskFullError, match=rf"while writing {disk}/history.json$"):
        run.record_epoch({"loss": 0.25, "val_loss": 0.3})
    assert snapshot(disk) == before | {"ballast": ballast.read_bytes()}


def test_the_error_is_an_os_error_naming_the_disk_and_the_quota():
    """EDQUOT (a quota) reads as ENOSPC does, and code that caught the disk's OSError still does."""
    from gradloop import atomic

    error = atomic.disk_full("/tmp/x/history.json", errno.EDQUOT)
    assert isinstance(error, OSError) and error.path == "/tmp/x/history.json"
    assert (
        str(error)
        == f"no space left (disk quota exceeded) on {atomic.mount_point('/tmp')} while writing /tmp/x/history.json"
    )


# --------------------------------------------------------------------- gradloop train, filled mid-run


def gradloop(*argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gradloop", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture(scope="module")
def unstopped(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("full") / "unstopped"
    proc = gradloop("train", *RUN, "--run-dir", str(run))
    err = proc.communicate(timeout=600)[1]
    assert proc.returncode == 0, err
    return run


def weights(path: Path) -> list[np.ndarray]:
    return keras.models.load_model(path, compile=False).get_weights()


def latest_number(run: Path) -> int:
    found = (
        re.search(r'model_checkpoint_path: "ckpt-(\d+)"', (run / "checkpoints" / "checkpoint").read_text())
        if (run / "checkpoints" / "checkpoint").exists()
        else None
    )
    return int(found[1]) if found else 0


@pytest.mark.slow
@pytest.mark.parametrize("when", ["mid-epoch 1", "after epoch 1"])
def test_train_on_a_disk_that_fills_stops_in_one_line_and_resumes_bit_identical(disk, unstopped, when):
    run = disk / "run"
    proc = gradloop("train", *RUN, "--run-dir", str(run))
    ready = (lambda: latest_number(run) >= 3) if when == "mid-epoch 1" else (lambda: (run / "history.json").exists())
    deadline = time.monotonic() + 300
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    ballast = fill(disk)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 1, err
    line = err.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"gradloop: error: no space left on {disk} while writing (checkpoint )?{run}/\S+; "
        rf"free space and resume with: gradloop train --resume --run-dir {run}",
        line,
    ), line
    assert err.count("gradloop: error:") == 1 and "Traceback" not in err
    no_partial_files(run)
    latest = latest_number(run)
    assert latest >= 3

    ballast.unlink()  # space freed
    resumed = gradloop("train", "--resume", "--run-dir", str(run))
    err = resumed.communicate(timeout=600)[1]
    assert resumed.returncode == 0, err
    for model_file in ("model.keras", "model.best.keras"):
        expected, got = weights(unstopped / model_file), weights(run / model_file)
        assert len(got) == len(expected) > 0 and all(np.array_equal(a, b) for a, b in zip(expected, got)), model_file
    expected, got = (json.loads((r / "history.json").read_text()) for r in (unstopped, run))
    assert {k: v for k, v in got.items() if k != "train_time"} == {
        k: v for k, v in expected.items() if k != "train_time"
    }
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
