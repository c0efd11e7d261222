"""Shared test set-up: quiet TensorFlow on the CLI's kernels, the real MNIST test set when present, and
:func:`missing`, which skips a test whose component is not installed, or fails it where CI installed it."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from gradloop.app import cpu  # noqa: E402

cpu.use_onednn()  # the kernels the CLI runs, here too, before any test imports TensorFlow

REPO = Path(__file__).resolve().parents[1]
# tests/ mirrors the package (tests/loop/ for gradloop/loop/, ...), and test modules share helpers by module
# name (``from test_trainer import toy_model``) across those folders: every folder is importable from any.
_FOLDERS = (REPO / "tests", *sorted((REPO / "tests").glob("*/")))
sys.path[:0] = [str(folder) for folder in _FOLDERS if folder.name != "__pycache__"]
sys.path.append(str(REPO / "examples"))  # the examples users train are the models tests train (guide_gan)
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"

# The files that take minutes, longest first (from ``pytest --durations``), dealt out before every other file:
# pytest-xdist hands a worker one file at a time in collection order (README's command turns off its own
# order, most tests first, which dealt the 100-kill test last and left the other worker idle for its minutes).
SLOWEST_FIRST = (
    "test_random_kills.py",
    "app/test_own_data.py",
    "loop/test_distribute.py",
    "sweep/test_sweep.py",
    "commands/test_cli_errors.py",
    "loop/test_in_memory.py",
    "loop/test_keras_contract.py",
    "commands/test_resume.py",
    "commands/test_cli.py",
    "run/test_disk_full.py",
    "bench/test_bench_peers.py",
    "loop/test_custom_train_step.py",
    "run/test_lock.py",
    "bench/test_bench.py",
)

# What .ci/run installs for some tests (or, for tmpfs, needs root for), named as .ci/run names them.
COMPONENTS = ("fashion-mnist", "chromium", "postgresql", "strace", "tmpfs")
CI_EXPECTS = "GRADLOOP_CI_EXPECTS"  # .ci/run's list of the components it installed, separated by spaces


def missing(component: str, reason: str) -> NoReturn:
    """A test needs ``component`` and it is not here: skip with ``reason`` on a machine without it, fail
    where ``GRADLOOP_CI_EXPECTS`` lists it (.ci/run installed it, so its absence is a broken install that
    a skip would hide behind a green run).

        if shutil.which("strace") is None:
            missing("strace", "strace is not installed (apt-get install strace)")
    """
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}: one of {', '.join(COMPONENTS)}")
    if component in os.environ.get(CI_EXPECTS, "").split():
        pytest.fail(
            f"{reason}; CI installs {component} and expects it ({CI_EXPECTS}={os.environ[CI_EXPECTS]!r})", pytrace=False
        )
    pytest.skip(reason)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files of ``SLOWEST_FIRST`` first, in its order; every other file after them, as collected."""
    rank = {REPO / "tests" / name: i for i, name in enumerate(SLOWEST_FIRST)}
    gone = [str(path) for path in rank if not path.exists()]
    if gone:  # a file moved or renamed would silently lose its place
        raise pytest.UsageError(f"SLOWEST_FIRST names no file at {', '.join(gone)}")
    items.sort(key=lambda item: rank.get(item.path, len(rank)))  # stable: a file's tests keep their order


@pytest.fixture
def shared_mnist() -> Path:
    """The real MNIST test set (IDX) beside the repo; tests skip without it."""
    if not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST test set not found at {SHARED_MNIST}")
    return SHARED_MNIST


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished run directory: 2 epochs of a small MLP on the bundled MNIST sample (a few seconds).
    Tests write their outputs elsewhere (``out=tmp_path``) or into their own subfolder of it."""
    import io

    from gradloop.app.config import TrainConfig
    from gradloop.app.train import train

    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    config = TrainConfig(dataset="mnist-sample", hidden=(64,), epochs=2, run_dir=str(run_dir))
    return train(config, out=io.StringIO(), notify=lambda line: None)
