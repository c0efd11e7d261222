"""A damaged checkpoint is not the end: ``--resume`` skips a latest checkpoint that cannot be read
(truncated, one flipped byte, a garbage index, missing files, a garbage state file) for the newest
that reads correctly, says so in one line, and ends bit-identical to a run never stopped; only when
none reads is it an error."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest

from gradloop.cli import main

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
]
DATA = ".data-00000-of-00001"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """(a run of 2 epochs never stopped, a run of 1 epoch: its last checkpoints at steps 40, 50 and the epoch's end)."""
    root = tmp_path_factory.mktemp("damaged")
    assert main(["train", *RUN, "--epochs", "2", "--run-dir", str(root / "unstopped")]) == 0
    assert main(["train", *RUN, "--epochs", "1", "--run-dir", str(root / "one")]) == 0
    return root / "unstopped", root / "one"


def checkpoints(run: Path) -> list[Path]:
    """The run's checkpoint prefixes, newest first."""
    prefixes = (p.with_suffix("") for p in (run / "checkpoints").glob("ckpt-*.index"))
    return sorted(prefixes, key=lambda p: int(p.name.split("-")[1]), reverse=True)


def flip_a_byte(prefix: Path) -> None:
    data = bytearray(Path(f"{prefix}{DATA}").read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, in the middle of the weights: only the CRC32C can tell
    Path(f"{prefix}{DATA}").write_bytes(bytes(data))


def truncate(prefix: Path) -> None:
    data = Path(f"{prefix}{DATA}")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])


def garbage_index(prefix: Path) -> None:
    Path(f"{prefix}.index").write_bytes(b"not a checkpoint index" * 20)


def delete_data(prefix: Path) -> None:
    Path(f"{prefix}{DATA}").unlink()


# damage -> (how many of the newest checkpoints it is done to, what the note says of each skipped one)
CASES: dict[str, tuple[Callable[[Path], None], int, str]] = {
    "one flipped byte in the data": (flip_a_byte, 1, "Checksum does not match"),
    "truncated data": (truncate, 1, ""),
    "garbage index": (garbage_index, 1, ""),
    "data file missing": (delete_data, 1, ""),
    "the two newest flipped": (flip_a_byte, 2, "Checksum does not match"),
}


def weights(path: Path) -> list[np.ndarray]:
    return keras.models.load_model(path, compile=False).get_weights()


def assert_bit_identical(run: Path, unstopped: Path) -> None:
    for model_file in ("model.keras", "model.best.keras"):
        expected, got = weights(unstopped / model_file), weights(run / model_file)
        assert len(got) == len(expected) == 4 and all(np.array_equal(a, b) for a, b in zip(expected, got)), model_file
    expected, got = (json.loads((r / "history.json").read_text()) for r in (unstopped, run))
    assert {k: v for k, v in got.items() if k != "train_time"} == {
        k: v for k, v in expected.items() if k != "train_time"
    }


def test_tensorflow_checks_every_tensors_crc32c_on_restore(runs, tmp_path):
    """A flipped bit that leaves the file's size and layout alone is caught: the bundle's per-tensor
    CRC32C is verified when a tensor is read (or the fallback could not tell a flip at all)."""
    import tensorflow as tf

    run = tmp_path / "run"
    shutil.copytree(runs[1], run)
    newest = checkpoints(run)[0]
    flip_a_byte(newest)
    reader = tf.train.load_checkpoint(str(newest))
    with pytest.raises(tf.errors.OpError, match="Checksum does not match"):
        for key, dtype in reader.get_variable_to_dtype_map().items():
            if dtype != tf.variant:
                reader.get_tensor(key)


@pytest.mark.parametrize("case", list(CASES))
def test_resume_skips_a_damaged_latest_checkpoint_and_ends_bit_identical(runs, tmp_path, capsys, case):
    damage, count, why = CASES[case]
    unstopped, one = runs
    run = tmp_path / "run"
    shutil.copytree(one, run)
    newest = checkpoints(run)
    for prefix in newest[:count]:
        damage(prefix)
    capsys.readouterr()
    assert main(["train", "--resume", "--epochs", "2", "--run-dir", str(run)]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "skipped" in line]
    assert len(notes) == 1, notes
    skipped = ", ".join(p.name for p in newest[:count])
    assert re.fullmatch(
        rf"gradloop: note: skipped {newest[0].name} \(.*{why}.*\)(, {newest[1].name} \(.*\))?, which "
        rf"cannot be read; resuming from {newest[count].name}, the newest checkpoint that reads "
        rf"correctly \(epoch 1 step \d+\)",
        notes[0],
    ), (skipped, notes[0])
    assert_bit_identical(run, unstopped)


@pytest.mark.parametrize(
    "state, why",
    [
        (b"\x00garbage{{", "cannot be read"),
        ('model_checkpoint_path: "ckpt-\xff"\n'.encode("latin-1"), "cannot be read"),  # not UTF-8: TensorFlow raises
        (None, "is missing"),
    ],
    ids=["garbage", "not utf-8", "missing"],
)
def test_a_garbage_or_missing_state_file_finds_the_checkpoints_by_name(runs, tmp_path, capsys, state, why):
    unstopped, one = runs
    run = tmp_path / "run"
    shutil.copytree(one, run)
    if state is None:
        (run / "checkpoints" / "checkpoint").unlink()
    else:
        (run / "checkpoints" / "checkpoint").write_bytes(state)
    capsys.readouterr()
    assert main(["train", "--resume", "--epochs", "2", "--run-dir", str(run)]) == 0
    err = capsys.readouterr().err
    assert (
        f"gradloop: note: {run}/checkpoints/checkpoint {why}, so the checkpoints were found by their names; "
        f"resuming from {checkpoints(one)[0].name}, the newest checkpoint that reads correctly (epoch 2 step 0)"
    ) in err
    assert_bit_identical(run, unstopped)


def test_when_no_checkpoint_reads_it_is_one_line_and_nothing_changes(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs[1], run)
    for prefix in checkpoints(run):
        flip_a_byte(prefix)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--resume", "--epochs", "2", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    newest = checkpoints(run)
    assert err == (
        f"gradloop: error: cannot restore checkpoint {newest[0]} (OpError: TensorBundle at {newest[0].name} shard 0 "
        f"({{size}} bytes): Checksum does not match) nor the older {newest[1].name} (the same), {newest[2].name} "
        "(the same); they are damaged or from another model: start the run again with --overwrite\n"
    ).replace("{size}", re.search(r"\((\d+) bytes\)", err)[1])
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
