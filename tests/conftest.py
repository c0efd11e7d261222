"""Shared test set-up: quiet TensorFlow on the CLI's kernels, the real MNIST test set when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from gradloop.app import cpu  # noqa: E402

cpu.use_onednn()  # the kernels the CLI runs, here too, before any test imports TensorFlow

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


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

    from gradloop.app.train import train
    from gradloop.app.config import TrainConfig

    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    config = TrainConfig(dataset="mnist-sample", hidden=(64,), epochs=2, run_dir=str(run_dir))
    return train(config, out=io.StringIO(), notify=lambda line: None)
