"""``gradloop train --resume``, end to end: real processes stopped by SIGKILL and
SIGTERM, resumed, and compared bit for bit with a run that was never stopped;
and every way a resume, an overwrite or a divergence is refused or reported."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from gradloop.app import cpu
from gradloop.cli import main

# Small and fast: 833 training digits (0 and 1) in 53 batches of 16 per epoch, a checkpoint every 10 steps.
RUN = [
    "--dataset",
    "mnist-sample",
    "--classes",
    "0,1",
    "--hidden",
    "32",
    "--batch-size",
    "16",
    "--deterministic",
    "--checkpoint-every",
    "10",
]
STEPS = 53


def gradloop(*argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gradloop", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def latest_number(run_dir: Path) -> int:
    try:
        first = (run_dir / "checkpoints" / "checkpoint").read_text().splitlines()[0]
    except (OSError, IndexError):
        return 0
    return int(first.rsplit("-", 1)[1].rstrip('"'))


def stop_when_saved(stops: list[tuple[subprocess.Popen, Path, int]], *, after: int) -> None:
    """Send each process its signal once its checkpoint number ``after`` is the latest: mid-epoch 1.
    The runs are watched together, so that one is not left to finish while another is awaited."""
    deadline = time.monotonic() + 300
    pending = list(stops)
    while pending and time.monotonic() < deadline:
        for proc, run_dir, signum in list(pending):
            if latest_number(run_dir) >= after or proc.poll() is not None:
                proc.send_signal(signum)
                pending.remove((proc, run_dir, signum))
        time.sleep(0.02)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A: never stopped. B: SIGKILLed, resumed. C: SIGTERMed, resumed. D: 1 epoch, extended to 2.
    E and F: as A and B with --jit, the in-memory step groups XLA-compiled."""
    root = tmp_path_factory.mktemp("resume")
    a, b, c, d, e, f = (root / name for name in "ABCDEF")
    first = {
        "A": gradloop("train", *RUN, "--epochs", "2", "--run-dir", str(a)),
        "B": gradloop("train", *RUN, "--epochs", "2", "--run-dir", str(b)),
        "C": gradloop("train", *RUN, "--epochs", "2", "--run-dir", str(c)),
        "D": gradloop("train", *RUN, "--epochs", "1", "--run-dir", str(d)),
        "E": gradloop("train", *RUN, "--jit", "--epochs", "2", "--run-dir", str(e)),
        "F": gradloop("train", *RUN, "--jit", "--epochs", "2", "--run-dir", str(f)),
    }
    # Saved before training, then after steps 10, 20: both stop mid-epoch 1.
    stop_when_saved(
        [(first["B"], b, signal.SIGKILL), (first["C"], c, signal.SIGTERM), (first["F"], f, signal.SIGKILL)], after=3
    )
    done = {name: (proc.wait(timeout=600), *proc.communicate()) for name, proc in first.items()}
    before = {name: json.loads((root / name / "run.json").read_text()) for name in "BCF"}
    second = {
        "B": gradloop("train", "--resume", "--run-dir", str(b)),
        "C": gradloop("train", "--resume", "--run-dir", str(c)),
        "D": gradloop("train", "--resume", "--run-dir", str(d), "--epochs", "2"),
        "F": gradloop("train", "--resume", "--run-dir", str(f)),
    }
    resumed = {name: (proc.wait(timeout=600), *proc.communicate()) for name, proc in second.items()}
    return root, done, before, resumed


def weights(path: Path) -> list[np.ndarray]:
    return keras.models.load_model(path, compile=False).get_weights()


def test_the_first_processes_ended_as_intended(runs):
    root, done, before, _ = runs
    assert done["A"][0] == 0 and done["D"][0] == 0 and done["E"][0] == 0, (done["A"][2], done["D"][2], done["E"][2])
    assert done["B"][0] == done["F"][0] == -signal.SIGKILL
    assert before["B"]["status"] == "running"  # killed: it could not say more
    assert done["C"][0] == 143, done["C"][2]
    epoch, step = before["C"]["interrupted_at"]["epoch"], before["C"]["interrupted_at"]["step"]
    assert before["C"]["status"] == "interrupted" and epoch in (1, 2)
    assert done["C"][2].strip().splitlines()[-1] == (
        f"gradloop: interrupted at epoch {epoch} step {step}; "
        f"resume with: gradloop train --resume --run-dir {root / 'C'}"
    )


@pytest.mark.parametrize(("name", "unstopped"), [("B", "A"), ("C", "A"), ("D", "A"), ("F", "E")])
def test_a_stopped_and_resumed_run_is_bit_identical_to_an_unstopped_one(runs, name, unstopped):
    root, _, _, resumed = runs
    code, out, err = resumed[name]
    assert code == 0, err
    assert out.startswith("gradloop: resuming mlp at epoch ")
    for model_file in ("model.keras", "model.best.keras"):
        expected, got = weights(root / unstopped / model_file), weights(root / name / model_file)
        assert len(got) == len(expected) == 4 and all(np.array_equal(a, b) for a, b in zip(expected, got)), model_file
    expected, got = (json.loads((root / run / "history.json").read_text()) for run in (unstopped, name))
    assert set(got) == set(expected) and len(got["val_loss"]) == 2
    for key in set(expected) - {"train_time"}:  # train_time is the clock, which no resume can repeat
        assert got[key] == expected[key], key
    info = json.loads((root / name / "run.json").read_text())
    assert info["status"] == "finished" and info["epochs_done"] == 2 and info["config"]["epochs"] == 2
    assert (
        len(info["resumed"]) == 1
        and info["resumed"][0]["onednn_kernels"] is info["onednn_kernels"] is cpu.onednn_kernels() is not None
    )


def test_the_jit_runs_step_groups_ran_on_xla_and_trained_as_the_graphs(runs):
    root = runs[0]
    graph, xla = weights(root / "A" / "model.keras"), weights(root / "E" / "model.keras")
    assert len(graph) == len(xla) > 0
    assert not all(np.array_equal(a, b) for a, b in zip(graph, xla))  # XLA rounds otherwise: it did run
    assert all(np.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(graph, xla))


def test_the_kills_landed_mid_epoch(runs):
    root, _, _, _ = runs
    positions = [json.loads((root / name / "run.json").read_text())["resumed"][0] for name in "BCF"]
    assert all(p["epoch"] in (1, 2) for p in positions), positions
    assert any(p["step"] % STEPS != 0 for p in positions), positions  # at least one inside an epoch


# ----------------------------------------------------------------- refusals: one line, exit 2, nothing changed


def refused(capsys, *argv: str, code: int = 2) -> str:
    assert main(list(argv)) == code
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("gradloop: error: "), err
    return err[len("gradloop: error: ") :]


@pytest.fixture
def finished_run(runs) -> Path:
    run = runs[0] / "A"
    snapshot = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    yield run
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == snapshot  # never touched


def test_resuming_a_finished_run_says_so(finished_run, capsys):
    assert refused(capsys, "train", "--resume", "--run-dir", str(finished_run)) == (
        f"run {finished_run} already finished 2 epochs; nothing to resume (pass --epochs above 2 to train it further)"
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--hidden", "64"], "--hidden 64 differs from the run's 32"),
        (["--batch-size", "32"], "--batch-size 32 differs from the run's 16"),
        (["--classes", "0-4"], "--classes 0,1,2,3,4 differs from the run's 0,1"),
        (["--seed", "7"], "--seed 7 differs from the run's 42"),
        (["--dataset", "fashion_mnist"], "--dataset fashion_mnist differs from the run's mnist-sample"),
        (["--lr", "0.01"], "--lr 0.01 differs from the run's 0.0001"),
    ],
)
def test_flags_that_change_the_model_or_data_are_refused(finished_run, capsys, flags, message):
    err = refused(capsys, "train", "--resume", "--run-dir", str(finished_run), "--epochs", "3", *flags)
    assert err.startswith(message + "; a resumed run keeps its model, data and training settings")


def test_repeating_the_runs_own_flags_is_fine_until_the_finished_check(finished_run, capsys):
    err = refused(
        capsys, "train", "--resume", "--run-dir", str(finished_run), "--hidden", "32", "--seed", "42", "--deterministic"
    )
    assert err.startswith(f"run {finished_run} already finished 2 epochs")


def test_a_new_run_into_an_existing_one_is_refused(finished_run, capsys):
    assert refused(capsys, "train", *RUN, "--run-dir", str(finished_run)) == (
        f"run directory {finished_run} already exists and is not empty; choose another --run-dir, "
        "continue it with --resume, or replace it with --overwrite"
    )


def test_nothing_to_resume(tmp_path, capsys):
    empty, foreign = tmp_path / "empty", tmp_path / "foreign"
    empty.mkdir()
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert refused(capsys, "train", "--resume", "--run-dir", str(tmp_path / "nope")) == (
        f"run directory {tmp_path / 'nope'} does not exist, so there is nothing to resume; drop --resume to start it"
    )
    assert refused(capsys, "train", "--resume", "--run-dir", str(empty)).startswith(f"run directory {empty} is empty")
    assert refused(capsys, "train", "--resume", "--run-dir", str(foreign)).startswith(
        f"{foreign} is not a gradloop run (no run.json)"
    )
    assert refused(capsys, "train", "--overwrite", "--run-dir", str(foreign)).startswith(
        f"{foreign} is not a gradloop run (no run.json), so --overwrite leaves it alone"
    )
    assert (foreign / "notes.txt").read_text() == "mine"
    assert refused(capsys, "train", "--resume") == "--resume needs --run-dir DIR, the run to continue"
    assert refused(capsys, "train", "--resume", "--overwrite", "--run-dir", str(empty)).startswith(
        "--resume continues the run in --run-dir and --overwrite replaces it"
    )


@pytest.mark.parametrize(
    "flags",
    [
        ["--checkpoint-every", "-1"],
        ["--checkpoint-seconds", "nan"],
        ["--early-stop", "-2"],
        ["--early-stop", "2", "--val-fraction", "0"],
    ],
)
def test_bad_checkpoint_and_stopping_flags(tmp_path, capsys, flags):
    refused(capsys, "train", "--dataset", "mnist-sample", "--run-dir", str(tmp_path / "r"), *flags)
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------- overwrite, divergence


def test_overwrite_replaces_an_earlier_run(runs, tmp_path, capsys):
    run = tmp_path / "again"
    shutil.copytree(runs[0] / "D", run)
    assert (
        main(
            [
                "train",
                "--dataset",
                "mnist-sample",
                "--classes",
                "0,1",
                "--hidden",
                "8",
                "--epochs",
                "1",
                "--run-dir",
                str(run),
                "--overwrite",
            ]
        )
        == 0
    )
    info = json.loads((run / "run.json").read_text())
    assert info["config"]["hidden"] == [8] and "resumed" not in info
    assert len(json.loads((run / "history.json").read_text())["val_loss"]) == 1
    assert latest_number(run) == 2  # before training and at the end of the one epoch: nothing of the old run


def test_a_diverging_run_stops_naming_the_step_and_cannot_be_resumed(tmp_path, capsys):
    run = tmp_path / "nan"
    err = refused(
        capsys,
        "train",
        "--dataset",
        "mnist-sample",
        "--classes",
        "0,1",
        "--hidden",
        "8",
        "--lr",
        "1e30",
        "--run-dir",
        str(run),
        code=1,
    )
    assert err.startswith("the training loss became ") and " at step " in err
    assert err.endswith(
        "the weights diverged, so training stopped without saving them; lower --lr (it was 1e+30) and start a new run"
    )
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed" and info["error"] == err
    assert (
        refused(capsys, "train", "--resume", "--run-dir", str(run))
        == f"run {run} failed, so there is nothing to resume: {err}"
    )


@pytest.mark.parametrize("damage", ["truncate data", "garbage index"])
def test_a_damaged_checkpoint_is_one_line_and_kept(tmp_path, capsys, damage):
    run_dir = tmp_path / "run"
    base = ["train", "--dataset", "mnist-sample", "--classes", "0,1", "--hidden", "8", "--run-dir", str(run_dir)]
    assert main([*base, "--epochs", "1"]) == 0
    targets = []
    for index in (run_dir / "checkpoints").glob("ckpt-*.index"):  # every one: a damaged latest alone falls back
        target = index.with_suffix(".data-00000-of-00001") if damage == "truncate data" else index
        target.write_bytes(target.read_bytes()[:100] if damage == "truncate data" else b"not a checkpoint index")
        targets.append(target)
    before = [target.read_bytes() for target in targets]
    capsys.readouterr()
    assert main(["train", "--resume", "--epochs", "2", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gradloop: error: cannot restore checkpoint") and "\n" not in err, err
    assert err.endswith("start the run again with --overwrite")  # the CLI's advice, passed to the library
    assert [target.read_bytes() for target in targets] == before


def test_a_run_without_run_dir_names_its_own_folder_when_interrupted(tmp_path):
    """The resume line must name the runs/<timestamp> folder the run chose, not 'None'."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradloop", "train", *RUN, "--epochs", "50"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        chosen = list((tmp_path / "runs").glob("*/checkpoints/checkpoint"))
        if chosen and latest_number(chosen[0].parent.parent) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert err.strip().splitlines()[-1].endswith(f"resume with: gradloop train --resume --run-dir runs/{run_dir.name}")
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"


def test_a_resume_on_other_kernels_says_it_cannot_end_bit_identical(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "mnist-sample", "--hidden", "8", "--epochs", "1", "--run-dir", str(run)]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["onednn_kernels"] is cpu.onednn_kernels() is not None
    (run / "run.json").write_text(json.dumps({**info, "onednn_kernels": not info["onednn_kernels"]}))  # as if elsewhere
    capsys.readouterr()
    assert main(["train", "--resume", "--run-dir", str(run), "--epochs", "2"]) == 0
    names = {True: "oneDNN", False: "Eigen"}
    now, then = names[cpu.onednn_kernels()], names[not cpu.onednn_kernels()]
    assert (
        f"gradloop: note: this run trained on TensorFlow's {then} kernels and resumes on its {now} kernels, so its "
        f"numbers will differ in the last bits from a run never stopped; "
        f"set TF_ENABLE_ONEDNN_OPTS={int(not cpu.onednn_kernels())} to resume on {then}'s"
    ) in capsys.readouterr().err.splitlines()
    assert json.loads((run / "run.json").read_text())["resumed"][0]["onednn_kernels"] is cpu.onednn_kernels()
