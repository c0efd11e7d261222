"""``gradloop sweep``: the spec, the pruning callback, and real sweeps on mnist-sample that are
killed with SIGKILL and continued, shared by two processes (on the journal file and on a real
PostgreSQL server), and whose best trial, config file and page are checked."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import optuna
import pytest
import tensorflow as tf
from conftest import missing

from gradloop import Trainer, cli
from gradloop.app.config import TrainConfig, build_config, load_yaml
from gradloop.app.train import train
from gradloop.sweep import spec as sweep_spec
from gradloop.sweep.study import STUDY_JOURNAL
from gradloop.sweep.trials import PruneOnMetric, suggest

SPEC = """\
trials: {trials}
metric: val_accuracy
direction: maximize
train:
  dataset: mnist-sample
  epochs: 2
  batch_size: 64
  deterministic: true
  checkpoint_every: 5
space:
  lr: {{low: 1.0e-4, high: 3.0e-2, log: true}}
  hidden: [[16], [32, 16]]
pruning: {pruning}
"""


def write_spec(folder: Path, *, trials: int, pruning: str = "{startup_trials: 1, warmup_epochs: 0}") -> Path:
    path = folder / "tiny.yaml"
    path.write_text(SPEC.format(trials=trials, pruning=pruning))
    return path


def gradloop(*argv: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gradloop", *argv], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def journal_study(folder: Path) -> optuna.Study:
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(folder / STUDY_JOURNAL)))
    (name,) = optuna.get_all_study_names(storage)  # one study, never a second one
    return optuna.load_study(study_name=name, storage=storage)


def started(*logs: str) -> list[int]:
    """The trials the processes started afresh, from their ``starting trial N`` lines."""
    return [int(n) for log in logs for n in re.findall(r"starting trial (\d+) ", log)]


def latest_checkpoint(run_dir: Path) -> int:
    try:
        return int((run_dir / "checkpoints" / "checkpoint").read_text().splitlines()[0].rsplit("-", 1)[1].rstrip('"'))
    except (OSError, IndexError, ValueError):
        return 0


def weights(path: Path) -> list[np.ndarray]:
    return keras.models.load_model(path, compile=False).get_weights()


# --------------------------------------------------------------------- the spec


def test_a_spec_reads_into_typed_ranges_and_choices(tmp_path):
    spec = sweep_spec.read_spec(write_spec(tmp_path, trials=6))
    assert (spec.trials, spec.metric, spec.direction, spec.name) == (6, "val_accuracy", "maximize", "tiny")
    assert spec.space["lr"] == sweep_spec.Range(low=1e-4, high=3e-2, log=True, integer=False)
    hidden = spec.space["hidden"]
    assert hidden.encoded == ("[16]", "[32, 16]") and hidden.decode("[32, 16]") == [32, 16]
    assert spec.pruning == sweep_spec.Pruning(startup_trials=1, warmup_epochs=0)
    assert spec.config({"lr": 0.01, "hidden": [32, 16]}, run_dir="x") == TrainConfig(
        dataset="mnist-sample",
        epochs=2,
        batch_size=64,
        deterministic=True,
        checkpoint_every=5,
        lr=0.01,
        hidden=(32, 16),
        run_dir="x",
    )
    assert sweep_spec.number_type("batch_size") is int and sweep_spec.number_type("clip_norm") is float
    assert sweep_spec.number_type("hidden") is None and sweep_spec.number_type("jit_compile") is None


def test_a_trial_taken_over_gets_the_options_it_was_given(tmp_path):
    spec = sweep_spec.read_spec(write_spec(tmp_path, trials=2))
    study = optuna.create_study(direction="maximize")
    first = study.ask()
    params = suggest(first, spec)
    again = optuna.trial.Trial(study, study.get_trials()[0]._trial_id)  # as another process takes it over
    assert suggest(again, spec) == params and params["hidden"] in ([16], [32, 16])
    assert 1e-4 <= params["lr"] <= 3e-2


def test_the_pruning_callback_stops_a_trial_worse_than_the_median(tmp_path):
    """A real fit of a small model, against a finished trial that scored 1.0 at every epoch: worse at
    epoch 1, it stops there; a trial's last epoch is never pruned (it is complete)."""
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    )
    study.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={0: 1.0, 1: 1.0, 2: 1.0}))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 4)).astype("float32"), rng.integers(0, 3, 64)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    for epochs, expected in ((3, 1), (1, 1)):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        trainer = Trainer(
            model,
            optimizer=keras.optimizers.SGD(1e-3),
            metrics=["accuracy"],
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        trial = study.ask()
        history = trainer.fit(
            data,
            validation_data=data,
            epochs=epochs,
            verbose=0,
            callbacks=[PruneOnMetric(trial, "val_accuracy", epochs=epochs)],
        ).history
        assert len(history["val_accuracy"]) == expected and history["val_accuracy"][0] < 1.0
        assert study.get_trials()[-1].intermediate_values == {0: history["val_accuracy"][0]}


# --------------------------------------------------------------------- a sweep killed and continued


@pytest.fixture(scope="module")
def killed_sweep(tmp_path_factory):
    """6 trials, SIGKILLed in the middle of trial 1 or later, then the same command again."""
    root = tmp_path_factory.mktemp("sweep")
    spec = write_spec(root, trials=6)
    folder = root / "sweeps" / "tiny"
    first = gradloop("sweep", str(spec), cwd=root)
    deadline, killed = time.monotonic() + 240, None
    while time.monotonic() < deadline and first.poll() is None and killed is None:
        for trial in sorted(folder.glob("trial-00[1-5]")):
            if latest_checkpoint(trial) >= 2:  # saved before training and at step 5: mid-epoch 1
                first.send_signal(signal.SIGKILL)
                killed = trial
        time.sleep(0.02)
    code, out, err = finish(first)
    assert code == -signal.SIGKILL, (code, out[-2000:], err[-2000:])
    before = {
        "info": json.loads((killed / "run.json").read_text()),
        "states": {t.number: t.state for t in journal_study(folder).trials},
    }
    second = finish(gradloop("sweep", str(spec), cwd=root))
    return root, spec, folder, killed, before, second, out


@pytest.mark.slow
def test_the_killed_trial_was_left_running(killed_sweep):
    _, _, folder, killed, before, _, _ = killed_sweep
    number = int(killed.name.split("-")[1])
    assert before["info"]["status"] == "running" and before["states"][number] == optuna.trial.TrialState.RUNNING
    assert all(state.is_finished() for n, state in before["states"].items() if n < number)


@pytest.mark.slow
def test_the_rerun_ends_with_all_trials_finished_or_pruned_in_one_study(killed_sweep):
    root, _, folder, killed, before, (code, out, err), first_out = killed_sweep
    assert code == 0, err[-3000:]
    states = [t.state for t in journal_study(folder).trials]
    assert len(states) == 6 and set(states) <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    number = int(killed.name.split("-")[1])
    assert re.findall(r"resuming trial (\d+) ", out) == [str(number)]
    assert sorted(started(first_out, out)) == list(range(6))  # each trial started once, the killed one resumed
    assert re.search(r"gradloop: sweep \S+: 6 of 6 trials \(\d complete(, \d pruned)?\)", out)


@pytest.mark.slow
def test_the_killed_trial_resumed_exactly(killed_sweep, tmp_path):
    """Its weights and history equal those of a run of its config never stopped (for as many epochs
    as it ran: the pruner may have stopped it after the first)."""
    _, _, _, killed, _, _, _ = killed_sweep
    info = json.loads((killed / "run.json").read_text())
    assert info["status"] == "finished" and len(info["resumed"]) == 1 and info["resumed"][0]["step"] > 0
    config = build_config({**info["config"], "run_dir": str(tmp_path / "ref"), "epochs": info["epochs_done"]})
    reference = train(config, out=io.StringIO(), notify=lambda line: None)
    for a, b in zip(weights(killed / "model.keras"), weights(reference / "model.keras")):
        np.testing.assert_array_equal(a, b)
    history, expected = (json.loads((p / "history.json").read_text()) for p in (killed, reference))
    assert {k: v for k, v in history.items() if k != "train_time"} == {
        k: v for k, v in expected.items() if k != "train_time"
    }


@pytest.mark.slow
def test_the_best_trial_is_a_complete_run_with_a_ready_config(killed_sweep, capsys):
    _, _, folder, _, _, _, _ = killed_sweep
    results = json.loads((folder / "results.json").read_text())
    complete = [t for t in results["trials"] if t["state"] == "complete"]
    best = max(complete, key=lambda t: t["value"])
    assert results["best"]["number"] == best["number"] and results["best"]["value"] == best["value"]
    run = Path(best["run_dir"])
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["epochs_done"] == 2
    assert {
        "model.keras",
        "model.best.keras",
        "history.json",
        "history.csv",
        "history.png",
        "checkpoints",
        "tensorboard",
    } <= {p.name for p in run.iterdir()}
    assert best["value"] == json.loads((run / "history.json").read_text())["val_accuracy"][-1]
    config = build_config(load_yaml(folder / "best.yaml"))
    assert config == build_config({k: v for k, v in info["config"].items() if k != "run_dir"})
    assert cli.main(["evaluate", str(run), "--split", "val", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(best["value"], abs=1e-6)


@pytest.mark.slow
def test_the_sweep_page_shows_every_trial(killed_sweep):
    _, _, folder, _, _, _, _ = killed_sweep
    page = (folder / "sweep.html").read_text()
    table = page.split('<table id="trials">')[1].split("</table>")[0]
    assert table.count("<tr>") == 1 + 6 and "<script" not in page
    assert page.count('src="data:image/png;base64,') >= 2  # the curves and the metric per trial
    results = json.loads((folder / "results.json").read_text())
    if sum(t["state"] == "complete" for t in results["trials"]) >= 2:
        assert set(results["importances"]) == {"lr", "hidden"} and sum(
            results["importances"].values()
        ) == pytest.approx(1)
        assert '<table id="importances">' in page


@pytest.mark.slow
def test_running_a_finished_sweep_again_trains_nothing(killed_sweep, capsys, monkeypatch):
    root, spec, folder, _, _, _, _ = killed_sweep
    before = {p: p.stat().st_mtime_ns for p in folder.glob("trial-*/model.keras")}
    monkeypatch.chdir(root)
    assert cli.main(["sweep", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "starting trial" not in out and "resuming trial" not in out and "6 of 6 trials" in out
    assert {p: p.stat().st_mtime_ns for p in folder.glob("trial-*/model.keras")} == before


# --------------------------------------------------------------------- several processes, one sweep


def check_shared(folder: Path, logs: list[str], trials: int, study: optuna.Study) -> None:
    """Every trial ran once, in one of the processes, and the study holds exactly ``trials`` of them."""
    assert sorted(started(*logs)) == list(range(trials)), logs
    assert not any("resuming trial" in log for log in logs)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * trials
    for number in range(trials):
        assert "resumed" not in json.loads((folder / f"trial-{number:03d}" / "run.json").read_text())


@pytest.mark.slow
def test_two_processes_share_one_sweep_without_running_a_trial_twice(tmp_path):
    spec = write_spec(tmp_path, trials=4, pruning="false")
    folder = tmp_path / "shared"
    procs = [gradloop("sweep", str(spec), "--out", str(folder), cwd=tmp_path) for _ in range(2)]
    done = [finish(proc) for proc in procs]
    assert [code for code, _, _ in done] == [0, 0], [err[-2000:] for _, _, err in done]
    check_shared(folder, [out for _, out, _ in done], 4, journal_study(folder))
    print("trials per process:", [len(started(out)) for _, out, _ in done])


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server of Debian's package, in a temporary folder on a free port, for this module;
    skipped where none can start."""
    bin_dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not bin_dirs:
        missing("postgresql", "PostgreSQL is not installed (apt-get install -y postgresql)")
    if importlib.util.find_spec("psycopg") is None:
        missing("postgresql", "psycopg is not installed (pip install 'gradloop[sweep-postgres]')")
    tools = bin_dirs[-1]
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            missing("postgresql", "running as root and there is no postgres user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = Path(tempfile.mkdtemp(prefix="gradloop-pg-"))
    if as_user:
        shutil.chown(data, "postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *argv], capture_output=True, text=True, timeout=120)

    init = run(str(tools / "initdb"), "-D", str(data / "db"), "-U", "postgres", "--auth=trust")
    start = (
        run(
            str(tools / "pg_ctl"),
            "-D",
            str(data / "db"),
            "-l",
            str(data / "log"),
            "-w",
            "start",
            "-o",
            f"-p {port} -k {data} -c listen_addresses=127.0.0.1",
        )
        if init.returncode == 0
        else init
    )
    if start.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        missing("postgresql", f"PostgreSQL did not start: {(start.stderr or start.stdout).strip()[-300:]}")
    try:
        yield f"postgresql://postgres:secret@127.0.0.1:{port}/postgres"
    finally:
        run(str(tools / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop")
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.slow
def test_two_processes_share_one_sweep_through_postgresql(tmp_path, postgres_url):
    """As processes on two machines would: the study in the database, the trials in a shared folder."""
    spec = write_spec(tmp_path, trials=3, pruning="false")
    folder = tmp_path / "shared"
    procs = [
        gradloop("sweep", str(spec), "--out", str(folder), "--storage", postgres_url, cwd=tmp_path) for _ in range(2)
    ]
    done = [finish(proc) for proc in procs]
    assert [code for code, _, _ in done] == [0, 0], [err[-2000:] for _, _, err in done]
    record = json.loads((folder / "sweep.json").read_text())
    assert record["storage"] == postgres_url.replace(":secret@", ":***@")  # the password stays out of the folder
    assert not (folder / STUDY_JOURNAL).exists()
    check_shared(
        folder, [out for _, out, _ in done], 3, optuna.load_study(study_name=record["study"], storage=postgres_url)
    )


def test_a_trial_whose_loss_diverges_fails_and_counts(tmp_path, capsys):
    spec = tmp_path / "wild.yaml"
    spec.write_text(
        "trials: 2\nmetric: val_loss\ndirection: minimize\n"
        "train: {dataset: mnist-sample, epochs: 1, hidden: [8], batch_size: 128}\nspace: {lr: [1.0e+30]}\n"
    )
    assert cli.main(["sweep", str(spec), "--out", str(tmp_path / "s")]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("failed: the training loss became") == 2
    assert "2 of 2 trials (2 failed)" in captured.out and "no trial completed yet" in captured.out
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    assert [t["state"] for t in results["trials"]] == ["failed", "failed"] and results["best"] is None
    assert not (tmp_path / "s" / "best.yaml").exists()


@pytest.mark.slow
def test_sigterm_stops_a_sweep_after_a_checkpoint_and_says_how_to_continue(tmp_path):
    spec = write_spec(tmp_path, trials=1, pruning="false")
    folder = tmp_path / "s"
    proc = gradloop("sweep", str(spec), "--out", str(folder), cwd=tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and latest_checkpoint(folder / "trial-000") < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == 143 and err.strip().splitlines()[-1].endswith(
        f"continue it with: gradloop sweep {spec} --out {folder}"
    ), err[-2000:]
    assert json.loads((folder / "trial-000" / "run.json").read_text())["status"] == "interrupted"
    code, out, err = finish(gradloop("sweep", str(spec), "--out", str(folder), cwd=tmp_path))
    assert code == 0 and "resuming trial 0 " in out and "1 of 1 trials (1 complete)" in out, err[-2000:]


def test_a_trial_whose_last_epoch_is_not_validated_reports_its_last_validation(tmp_path, capsys):
    spec = tmp_path / "every2.yaml"
    spec.write_text(
        "trials: 1\nmetric: val_accuracy\ndirection: maximize\n"
        "train: {dataset: mnist-sample, epochs: 3, validation_every: 2, hidden: [8], batch_size: 128}\n"
        "space: {lr: [1.0e-3]}\n"
    )
    assert cli.main(["sweep", str(spec), "--out", str(tmp_path / "s")]) == 0
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    (trial,) = results["trials"]
    history = json.loads((Path(trial["run_dir"]) / "history.json").read_text())
    assert history["val_accuracy"][2] is None and trial["state"] == "complete"
    assert trial["value"] == history["val_accuracy"][1]
