"""bench and profile: their arithmetic, and that they measure real training."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from gradloop.app import cpu
from gradloop.bench.data_bench import DATA_VARIANTS, format_data_table
from gradloop.bench.memory import PeakRSS
from gradloop.bench.names import DEFAULT_VARIANTS, IN_PROCESS, PEERS, VARIANTS
from gradloop.bench.runner import format_table, paired_ratios, run_bench
from gradloop.bench.variants import build_variant
from gradloop.bench.workload import Workload
from gradloop.cli import main
from gradloop.loop import profiler
from gradloop.loop.trainer import Trainer


def tiny_workload(batch_size: int = 32) -> Workload:
    rng = np.random.default_rng(0)
    x = rng.random((100, 8), dtype=np.float32)
    return Workload(x, (x[:, 0] > 0.5).astype("int64"), batch_size=batch_size, hidden=(16,), n_classes=2)


def test_samples_count_the_partial_batch_of_each_pass():
    work = tiny_workload()  # 100 samples: batches 32, 32, 32, 4 per pass
    assert [work.samples(s) for s in (1, 3, 4, 5, 8, 9)] == [32, 96, 100, 132, 200, 232]
    assert sum(len(y) for _, y in work.dataset(9)) == 232


def test_flops_per_sample_of_the_reference_mlp():
    work = Workload(np.zeros((1, 784), "float32"), np.zeros(1, "int64"), 32, (512, 256, 128), 3)
    forward = 2 * (784 * 512 + 512 * 256 + 256 * 128 + 128 * 3)
    input_gradients = 2 * (512 * 256 + 256 * 128 + 128 * 3)  # none for the data
    assert work.flops_per_sample() == 2 * forward + input_gradients


def test_flops_per_sample_of_bench_cnn():
    work = Workload(np.zeros((1, 28, 28, 1), "float32"), np.zeros(1, "int64"), 128, (), 10, kind="cnn")
    assert [(i, o) for _, i, o in work.shapes()][-2:] == [((5, 5, 64), (1600,)), ((1600,), (10,))]
    forward = [2 * 26 * 26 * 32 * 3 * 3 * 1, 2 * 11 * 11 * 64 * 3 * 3 * 32, 2 * 1600 * 10]  # conv, conv, dense
    assert work.flops_per_sample() == 2 * sum(forward) + sum(forward[1:])  # no input gradient for the first conv


def test_run_bench_times_bench_cnn_against_its_matmuls_and_convolutions():
    rng = np.random.default_rng(0)
    work = Workload(
        rng.random((64, 28, 28, 1), dtype=np.float32),
        rng.integers(0, 10, 64),
        batch_size=16,
        hidden=(),
        n_classes=10,
        kind="cnn",
    )
    result = run_bench(work, variants=("keras spe=32", "gradloop"), seconds=0.05, rounds=1)
    assert result["model"] == "CNN conv32-pool-conv64-pool -> 10" and result["limit_of"] == "matmuls and convolutions"
    assert all(v["share_of_limit"] > 0 for v in result["variants"].values())
    assert "MFLOP/sample in matmuls and convolutions" in format_table(result)


def test_ratios_are_paired_by_round():
    rates = {"gradloop": [10.0, 20.0, 30.0], "keras spe=32": [5.0, 20.0, 10.0]}
    assert paired_ratios(rates) == {"gradloop / keras spe=32": 2.0}  # median of 2, 1, 3


@pytest.mark.parametrize("name", IN_PROCESS)
def test_every_variant_trains_the_same_model(name):
    work = tiny_workload()
    start = work.model().get_weights()
    variant = build_variant(name, work)
    assert len(start) == len(variant.model.get_weights()) > 0
    assert all(np.array_equal(a, b) for a, b in zip(start, variant.model.get_weights()))  # same initial weights
    variant.run(variant.data(work, 5))  # gradloop: its in-memory source; the others: the dataset
    assert all(not np.array_equal(a, b) for a, b in zip(start, variant.model.get_weights()))  # and it trained


def test_run_bench_reports_medians_shares_and_ratios():
    result = run_bench(tiny_workload(), variants=("keras spe=32", "gradloop"), seconds=0.05, rounds=3)
    for v in result["variants"].values():
        assert len(v["all_rounds"]) == 3 and v["samples_per_s"] == pytest.approx(np.median(v["all_rounds"]))
        assert v["share_of_limit"] == pytest.approx(v["samples_per_s"] / result["limit_samples_per_s"])
    ours, theirs = (result["variants"][k]["all_rounds"] for k in ("gradloop", "keras spe=32"))
    assert result["ratios"]["gradloop / keras spe=32"] == pytest.approx(np.median(np.divide(ours, theirs)))
    assert result["onednn_kernels"] is cpu.onednn_kernels() is not None
    assert "gradloop" in format_table(result)
    for kernels, named in [(True, "; oneDNN kernels\n"), (False, "; Eigen kernels\n"), (None, "; kernels unknown\n")]:
        assert named in format_table({**result, "onednn_kernels": kernels})


def test_bench_cli_json_for_two_batch_sizes(capsys):
    argv = [
        "bench",
        "--dataset",
        "mnist-sample",
        "--hidden",
        "16",
        "--batch-size",
        "32,64",
        "--seconds",
        "0.05",
        "--rounds",
        "1",
        "--variants",
        "gradloop,keras spe=32",
        "--json",
    ]
    assert main(argv) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["batch_size"] for r in results] == [32, 64]
    assert all(set(r["variants"]) == {"gradloop", "keras spe=32"} for r in results)


def test_bench_cli_refuses_unknown_variants(capsys):
    assert main(["bench", "--variants", "pytorch"]) == 2
    assert capsys.readouterr().err.startswith("gradloop: error: unknown bench variant 'pytorch'")


def test_the_cli_offers_benchs_variants_and_its_defaults(capsys):
    assert tuple(v for v in IN_PROCESS if v != "gradloop --jit") == DEFAULT_VARIANTS
    assert (*IN_PROCESS, *PEERS) == VARIANTS
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    help_text = " ".join(capsys.readouterr().out.split()).replace("keras- jax", "keras-jax")  # argparse's wrapping
    assert f"subset of: {', '.join(VARIANTS)} (default: {', '.join(DEFAULT_VARIANTS)})" in help_text
    assert main(["bench", "--variants", "gradloop,nope"]) == 2
    assert capsys.readouterr().err.endswith(f"choose from {', '.join(VARIANTS)}\n")


def test_profile_times_every_phase_on_a_copy():
    work = tiny_workload()
    model = work.model()
    trainer = Trainer(
        model,
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    before = [w.copy() for w in model.get_weights()]
    phases = profiler.profile_phases(trainer, work.dataset(4), steps=10, repeats=1)
    assert list(phases) == list(profiler.PHASES) and all(s >= 0 for s in phases.values())
    assert sum(phases.values()) > 0
    assert len(before) == len(model.get_weights()) > 0
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert "samples/s" in profiler.format_profile(phases, 32)


def test_peak_rss_sees_a_freed_allocation():
    with PeakRSS() as before:
        pass
    with PeakRSS() as peak:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        del block
    if peak.mib is None:
        pytest.skip("this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)")
    assert before.mib < 8 and 60 < peak.mib < 80


def test_iterator_release_benchmark_runs():
    script = Path(__file__).parents[2] / "benchmarks" / "iterator_release.py"
    done = subprocess.run(
        [sys.executable, str(script), "--epochs", "1", "--rounds", "2"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines[:2]] == ["release", "training"]
    assert re.fullmatch(r"deleting on the training thread takes \d+\.\d\dx the wall time .*", lines[2])


# --------------------------------------------------------------------- bench --data: streamed vs. in memory

DIGITS_PER_CLASS = 30


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory) -> Path:
    """300 MNIST digits (30 of each class) as PNG files in class folders: 250 train after the 1/6 validation split."""
    from PIL import Image

    from gradloop.data import load_mnist_sample

    raw = load_mnist_sample()
    folder = tmp_path_factory.mktemp("digits")
    for label in range(10):
        (folder / str(label)).mkdir()
        for row in np.flatnonzero(raw.y_train == label)[:DIGITS_PER_CLASS]:
            Image.fromarray(raw.x_train[row]).save(folder / str(label) / f"{row:05d}.png")
    return folder


def test_bench_data_reports_both_ways_their_ratio_memory_and_the_decoded_size(digit_folder, capsys):
    argv = ["bench", "--data", str(digit_folder), "--model", "cnn", "--seconds", "0.5", "--rounds", "1", "--json"]
    assert main(argv) == 0
    [result] = json.loads(capsys.readouterr().out)
    streamed, in_memory = (result["variants"][k] for k in ("streamed", "in memory"))
    assert list(result["variants"]) == list(DATA_VARIANTS)
    for v in (streamed, in_memory):
        assert len(v["all_rounds"]) == 1 and v["samples_per_s"] == v["all_rounds"][0] > 0
        assert 0 < v["setup_peak_rss_mib"] <= v["peak_rss_mib"]  # a high-water mark, read before and after training
    ratio = streamed["samples_per_s"] / in_memory["samples_per_s"]  # one round: its ratio is the median
    assert result["ratios"] == {"streamed / in memory": pytest.approx(ratio)}
    n = 10 * DIGITS_PER_CLASS - round(10 * DIGITS_PER_CLASS / 6)  # train's split: 1/6 held out
    assert (result["n_train"], result["element_shape"], result["batch_size"]) == (n, [28, 28, 1], 32)
    assert result["decoded_bytes"] == n * 28 * 28 * 1 * 4 and result["decoded_mib"] == result["decoded_bytes"] / 2**20
    # Adam's footprint: each weight, its two slots, the step count (int64) and the learning rate (float32)
    assert result["parameters"] == 225_034 and result["footprint_bytes"] == 3 * 4 * 225_034 + 8 + 4
    assert result["baseline_rss_mib"] > 0
    bound = result["decoded_mib"] + result["footprint_mib"] + result["baseline_rss_mib"]
    assert result["rss_bound_mib"] == pytest.approx(bound)
    assert result["streamed_rss_below_bound"] == (streamed["peak_rss_mib"] < bound)
    table = format_data_table(result)
    assert f"decoded images: {n} x 28 x 28 x 1 x 4 bytes = {result['decoded_mib']:.1f} MiB" in table
    assert f"= {bound:.0f} MiB" in table and f"{result['ratios']['streamed / in memory']:.2f}x" in table


def test_both_ways_train_the_same_batches_from_the_same_start(digit_folder):
    from gradloop.app.config import TrainConfig
    from gradloop.bench import worker as bench_worker
    from gradloop.loop.in_memory import as_dataset

    request = {"config": TrainConfig(data=str(digit_folder), model="cnn", batch_size=64).to_dict()}
    streamed, in_memory = (bench_worker.Run.start(v, request) for v in ("streamed", "in memory"))
    assert len(streamed.initial) == len(in_memory.initial) > 0
    assert all(np.array_equal(a, b) for a, b in zip(streamed.initial, in_memory.initial))
    batches = list(zip(streamed.epochs(3), as_dataset(in_memory.epochs(3))))  # in memory: an InMemory epoch
    assert len(batches) == 4  # 250 images: 3 of 64 and one of 58
    for (x_streamed, y_streamed), (x_memory, y_memory) in batches:
        assert np.array_equal(x_streamed, x_memory) and np.array_equal(y_streamed, y_memory)
    assert streamed.train(1, steps=2) > 0
    assert any(not np.array_equal(v.numpy(), w) for v, w in zip(streamed.variables(), streamed.initial))  # it trained
    streamed.reset()
    assert len(streamed.variables()) == len(streamed.initial) > 0
    assert all(np.array_equal(v.numpy(), w) for v, w in zip(streamed.variables(), streamed.initial))


def test_decoding_into_memory_gives_the_pixels_over_255(digit_folder):
    from PIL import Image

    from gradloop.bench.worker import decode
    from gradloop.data.sources import DataSpec, images

    files = images.load(DataSpec(path=str(digit_folder))).train
    x = decode(files)
    assert x.shape == (10 * DIGITS_PER_CLASS, 28, 28, 1) and x.dtype == np.float32
    for row in (0, 151, 299):
        expected = np.asarray(Image.open(files.paths[row]), dtype=np.float32) / 255
        assert np.array_equal(x[row, ..., 0], expected)


def test_bench_data_passes_on_the_workers_error_in_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["bench", "--data", str(tmp_path / "empty"), "--seconds", "0.1", "--rounds", "1"]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # the worker's DataError, raised again in the CLI's process
    assert last.startswith("gradloop: error: ") and str(tmp_path / "empty") in last and "class folders" in last


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--data", "DIR", "--variants", "gradloop"], "--variants picks among the bench's ways to train"),
        (["--data", "DIR", "--peers"], "--peers picks among the bench's ways to train"),
        (["--data", "DIR", "--dataset", "mnist"], "--data reads your own data and --dataset/--data-dir a built-in"),
    ],
)
def test_bench_data_refuses_flags_of_the_other_bench(argv, says, capsys):
    assert main(["bench", *argv]) == 2
    assert capsys.readouterr().err.startswith(f"gradloop: error: {says}")
