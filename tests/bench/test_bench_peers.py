"""bench's peers: Keras on JAX, JAX and PyTorch loops, each in a process of its own, training for real."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from gradloop import errors
from gradloop.bench.names import PEERS, choose_variants
from gradloop.bench.runner import PeerFiles, PeerProcess, format_table
from gradloop.bench.workload import Workload
from gradloop.cli import main
from gradloop.data import load_mnist_sample


def digits(n: int, *, images: bool = False, batch_size: int = 32, hidden=(32,)) -> Workload:
    """``n`` real MNIST digits of all ten classes, shuffled, for the MLP (or, ``images``, bench's CNN)."""
    raw = load_mnist_sample()
    rows = np.random.default_rng(0).permutation(len(raw.y_train))[:n]
    x = raw.x_train[rows].astype(np.float32) / 255
    x = x[..., np.newaxis] if images else x.reshape(n, -1)
    return Workload(
        x,
        raw.y_train[rows].astype(np.int64),
        batch_size=batch_size,
        hidden=hidden,
        n_classes=10,
        kind="cnn" if images else "mlp",
    )


def start_peer(name: str, work: Workload, files: PeerFiles) -> PeerProcess:
    peer = PeerProcess(name, work, files)
    peer.check(files.first_logits)  # the same logits as bench's Keras model from the same weights, or it raises
    return peer


@pytest.fixture(scope="module")
def mlp_files():
    work = digits(1024)
    files = PeerFiles(work)
    yield work, files
    files.remove()


@pytest.mark.parametrize("name", PEERS)
def test_each_peer_trains_the_bench_model_and_reports_its_rate_and_memory(name, mlp_files):
    work, files = mlp_files
    peer = start_peer(name, work, files)
    try:
        runs = [peer.worker.ask(steps=96) for _ in range(3)]  # 288 steps of 32: 9 epochs of 32 full batches
        last = peer.finish()
    finally:
        peer.close()
    for run in runs:
        assert run["steps"] == 96 and run["samples"] == 96 * 32 and run["seconds"] > 0
    first, trained = runs[0], runs[-1]
    assert trained["loss"] < 0.8 * first["loss"], runs  # a broken step or update would not learn (2.2 -> 1.5)
    assert trained["accuracy"] > max(0.5, first["accuracy"] + 0.2), runs  # 10 classes: chance is 0.1 (-> 0.65)
    assert 0 < last["peak_rss_mib"] < last["process_peak_rss_mib"]  # the framework's own memory comes on top
    assert peer.framework.split()[0] in ("keras", "jax", "torch")


def test_a_keras_jax_peer_imports_neither_tensorflow_nor_torch(mlp_files):
    """Keras' own seeding imports TensorFlow wherever it is installed: the JAX peer must not seed through it."""
    work, files = mlp_files
    code = (
        "import json, sys\n"
        "from gradloop.bench import peers as bench_peers\n"
        "bench_peers.import_framework('keras-jax spe=32')\n"
        "work, weights = bench_peers.read_workload(json.loads(sys.argv[1]))\n"
        "bench_peers.build_peer('keras-jax spe=32', work, weights).train(32)\n"
        "print(json.dumps([m for m in ('tensorflow', 'torch', 'jax') if m in sys.modules]))"
    )
    request = json.dumps({"folder": str(files.folder), "workload": work.settings()})
    done = subprocess.run([sys.executable, "-c", code, request], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == ["jax"]


@pytest.mark.parametrize("name", ["jax jit", "torch"])
def test_the_layout_sensitive_peers_build_bench_cnn(name):
    """JAX and torch rebuild the CNN from Keras' weights (torch in its own layouts); the set-up's logits check
    proves the same function, and a few steps run."""
    work = digits(64, images=True, batch_size=16)
    files = PeerFiles(work)
    try:
        peer = start_peer(name, work, files)
        try:
            assert peer.worker.ask(steps=4)["samples"] == 64
        finally:
            peer.close(kill=True)
    finally:
        files.remove()


def test_a_peer_whose_model_differs_is_refused(mlp_files):
    work, files = mlp_files
    peer = PeerProcess("jax jit", work, files)
    try:
        with pytest.raises(RuntimeError, match="jax jit peer computes other logits than bench's Keras model"):
            peer.check(files.first_logits + 0.01)
    finally:
        peer.close(kill=True)


def test_bench_times_the_peers_beside_gradloop_with_paired_ratios(capsys):
    argv = [
        "bench",
        "--dataset",
        "mnist-sample",
        "--hidden",
        "16",
        "--seconds",
        "0.05",
        "--rounds",
        "2",
        "--variants",
        "gradloop,jax scan",
        "--json",
    ]
    assert main(argv) == 0
    [result] = json.loads(capsys.readouterr().out)
    ours, peer = result["variants"]["gradloop"], result["variants"]["jax scan"]
    assert peer["samples_per_s"] > 0 and len(peer["all_rounds"]) == 2
    assert result["ratios"]["gradloop / jax scan"] == pytest.approx(
        np.median(np.divide(ours["all_rounds"], peer["all_rounds"]))
    )
    assert ours["process_peak_rss_mib"] is None and peer["process_peak_rss_mib"] > peer["peak_rss_mib"] > 0
    assert peer["framework"].startswith("jax ") and result["skipped"] == {}
    table = format_table(result)
    assert "jax scan" in table and f"{result['ratios']['gradloop / jax scan']:.2f}x" in table
    assert "peers, each in a process of its own, on the CPU: jax scan: jax " in table


HIDE = "import sys; sys.modules.update(dict.fromkeys({packages}, None)); "  # an import of them fails, as if missing


def test_a_missing_peer_named_is_one_line_and_the_others_are_skipped(monkeypatch):
    for package in ("jax", "torch"):
        monkeypatch.setitem(sys.modules, package, None)  # hidden: importing it fails, as if not installed
    with pytest.raises(errors.ConfigError) as refused:
        choose_variants(["gradloop", "torch"])
    assert str(refused.value) == (
        "bench variant 'torch' needs torch, which is not installed; install the peers "
        "with: pip install 'gradloop[peers]'"
    )
    variants, skipped = choose_variants(["gradloop"], peers=True)
    assert variants == ("gradloop",)
    assert skipped == {
        name: f"{package} is not installed (pip install 'gradloop[peers]')" for name, package in PEERS.items()
    }
    table = format_table(
        {
            "model": "MLP",
            "batch_size": 32,
            "n_train": 1,
            "limit_samples_per_s": 1.0,
            "flops_per_sample": 1,
            "limit_of": "matmuls",
            "onednn_kernels": True,
            "ratios": {},
            "variants": {
                "gradloop": {"samples_per_s": 1.0, "all_rounds": [1.0], "share_of_limit": 1.0, "peak_rss_mib": 1.0}
            },
            "skipped": skipped,
        }
    )
    assert "skipped: keras-jax spe=1: jax is not installed (pip install 'gradloop[peers]'); " in table


def test_the_cli_refuses_a_missing_peer_in_one_line():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            HIDE.format(packages=["torch"])
            + "from gradloop.cli import main; sys.exit(main(['bench', '--variants', 'gradloop,torch']))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "gradloop: error: bench variant 'torch' needs torch, which is not installed; install the "
        "peers with: pip install 'gradloop[peers]'\n"
    )


def test_a_peer_process_without_its_package_answers_the_same_error(tmp_path):
    request = json.dumps({"folder": str(tmp_path), "workload": digits(32).settings()})
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            HIDE.format(packages=["jax"]) + "from gradloop.bench.peers import main; sys.exit(main())",
            "jax jit",
            request,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and done.stderr == ""  # no traceback: the bench raises the reply as the CLI's error
    assert json.loads(done.stdout) == {
        "error": "bench variant 'jax jit' needs jax, which is not installed; install the peers with: "
        "pip install 'gradloop[peers]'",
        "kind": "ConfigError",
    }
