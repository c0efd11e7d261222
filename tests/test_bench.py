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

from gradloop import bench, cpu, profile
from gradloop.cli import main
from gradloop.trainer import Trainer


def tiny_workload(batch_size: int = 32) -> bench.Workload:
    rng = np.random.default_rng(0)
    x = rng.random((100, 8), dtype=np.float32)
    return bench.Workload(x, (x[:, 0] > 0.5).astype("int64"), batch_size=batch_size, hidden=(16,), n_classes=2)


def test_samples_count_the_partial_batch_of_each_pass():
    work = tiny_workload()  # 100 samples: batches 32, 32, 32, 4 per pass
    assert [work.samples(s) for s in (1, 3, 4, 5, 8, 9)] == [32, 96, 100, 132, 200, 232]
    assert sum(len(y) for _, y in work.dataset(9)) == 232


def test_flops_per_sample_of_the_reference_mlp():
    work = bench.Workload(np.zeros((1, 784), "float32"), np.zeros(1, "int64"), 32, (512, 256, 128), 3)
    forward = 2 * (784 * 512 + 512 * 256 + 256 * 128 + 128 * 3)
    input_gradients = 2 * (512 * 256 + 256 * 128 + 128 * 3)  # none for the data
    assert work.flops_per_sample() == 2 * forward + input_gradients


def test_ratios_are_paired_by_round():
    rates = {"gradloop": [10.0, 20.0, 30.0], "keras spe=32": [5.0, 20.0, 10.0]}
    assert bench.paired_ratios(rates) == {"gradloop / keras spe=32": 2.0}  # median of 2, 1, 3


@pytest.mark.parametrize("name", bench.VARIANTS)
def test_every_variant_trains_the_same_model(name):
    work = tiny_workload()
    start = work.model().get_weights()
    variant = bench.build_variant(name, work)
    assert all(np.array_equal(a, b) for a, b in zip(start, variant.model.get_weights()))  # same initial weights
    variant.run(work.dataset(5))
    assert all(not np.array_equal(a, b) for a, b in zip(start, variant.model.get_weights()))  # and it trained


def test_run_bench_reports_medians_shares_and_ratios():
    result = bench.run_bench(tiny_workload(), variants=("keras spe=32", "gradloop"), seconds=0.05, rounds=3)
    for v in result["variants"].values():
        assert len(v["all_rounds"]) == 3 and v["samples_per_s"] == pytest.approx(np.median(v["all_rounds"]))
        assert v["share_of_limit"] == pytest.approx(v["samples_per_s"] / result["limit_samples_per_s"])
    ours, theirs = (result["variants"][k]["all_rounds"] for k in ("gradloop", "keras spe=32"))
    assert result["ratios"]["gradloop / keras spe=32"] == pytest.approx(np.median(np.divide(ours, theirs)))
    assert result["onednn_kernels"] is cpu.onednn_kernels() is not None
    assert "gradloop" in bench.format_table(result)
    for kernels, named in [(True, "; oneDNN kernels\n"), (False, "; Eigen kernels\n"), (None, "; kernels unknown\n")]:
        assert named in bench.format_table({**result, "onednn_kernels": kernels})


def test_bench_cli_json_for_two_batch_sizes(capsys):
    argv = ["bench", "--dataset", "mnist-sample", "--hidden", "16", "--batch-size", "32,64", "--seconds", "0.05",
            "--rounds", "1", "--variants", "gradloop,keras spe=32", "--json"]
    assert main(argv) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["batch_size"] for r in results] == [32, 64]
    assert all(set(r["variants"]) == {"gradloop", "keras spe=32"} for r in results)


def test_bench_cli_refuses_unknown_variants(capsys):
    assert main(["bench", "--variants", "pytorch"]) == 2
    assert capsys.readouterr().err.startswith("gradloop: error: unknown bench variant 'pytorch'")


def test_the_cli_offers_benchs_variants_and_its_defaults(capsys):
    assert bench.DEFAULT_VARIANTS == tuple(v for v in bench.VARIANTS if v != "gradloop --jit")
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"subset of: {', '.join(bench.VARIANTS)} (default: {', '.join(bench.DEFAULT_VARIANTS)})" in help_text
    assert main(["bench", "--variants", "gradloop,nope"]) == 2
    assert capsys.readouterr().err.endswith(f"choose from {', '.join(bench.VARIANTS)}\n")


def test_profile_times_every_phase_on_a_copy():
    work = tiny_workload()
    model = work.model()
    trainer = Trainer(model, optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    before = [w.copy() for w in model.get_weights()]
    phases = profile.profile_phases(trainer, work.dataset(4), steps=10, repeats=1)
    assert list(phases) == list(profile.PHASES) and all(s >= 0 for s in phases.values())
    assert sum(phases.values()) > 0
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert "samples/s" in profile.format_profile(phases, 32)


def test_peak_rss_sees_a_freed_allocation():
    with bench.PeakRSS() as before:
        pass
    with bench.PeakRSS() as peak:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        del block
    if peak.mib is None:
        pytest.skip("this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)")
    assert before.mib < 8 and 60 < peak.mib < 80


def test_iterator_release_benchmark_runs():
    script = Path(__file__).parents[1] / "benchmarks" / "iterator_release.py"
    done = subprocess.run([sys.executable, str(script), "--epochs", "1", "--rounds", "2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines[:2]] == ["release", "training"]
    assert re.fullmatch(r"deleting on the training thread takes \d+\.\d\dx the wall time .*", lines[2])
