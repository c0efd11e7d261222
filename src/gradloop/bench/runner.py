"""``gradloop bench``'s timing: every chosen variant warmed up, then timed in turns, with paired ratios.

    start a process per peer; each checks that its model gives bench's Keras model's logits
    warm up each variant (trace, then time the same steps once more: how many steps ``seconds`` takes)
    for each round, in turn (reversed every other round): each variant trains its steps; the limit
    peak RSS of each (in-process: above the process as the variant started; peers: their processes too)

A contender is timed in this process (``_InProcess``: :mod:`gradloop.bench.variants`) or in a peer's own
process (``PeerProcess``: :mod:`gradloop.bench.peers`); both answer ``warm_up``, ``plan``, ``run``, ``finish``.
A shared machine's speed swings between rounds, so the ratios are paired: ``gradloop / X`` is the median over
rounds of that round's gradloop rate over that round's X rate, two measurements taken seconds apart rather
than two medians possibly taken at different speeds.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gradloop.app import cpu
from gradloop.bench.limit import limit_flops_per_second
from gradloop.bench.memory import PeakRSS
from gradloop.bench.names import DEFAULT_VARIANTS, PEERS
from gradloop.bench.peers import CHECKED_SAMPLES
from gradloop.bench.protocol import VariantProcess
from gradloop.bench.variants import build_variant
from gradloop.bench.workload import Workload

WARMUP_STEPS = 2 * 32 + 1  # two full groups of 32 steps and a partial one: every function traced


def run_bench(
    work: Workload,
    *,
    variants=DEFAULT_VARIANTS,
    seconds: float = 3.0,
    rounds: int = 3,
    skipped: dict[str, str] | None = None,
    progress: Callable[[str], None] = lambda s: None,
) -> dict:
    """Throughput (samples/s) of each variant, medians over interleaved rounds (the module's pseudo-code);
    ``skipped``: the peers left out and why, passed on to the table."""
    contenders: dict[str, _InProcess | PeerProcess] = {}
    peers = [name for name in variants if name in PEERS]
    files = None
    try:
        if peers:
            files = PeerFiles(work)
            progress(f"starting a process per peer ({', '.join(peers)})")
            contenders.update({name: PeerProcess(name, work, files) for name in peers})
            expected = files.first_logits
            for name in peers:
                contenders[name].check(expected)
        contenders = {name: contenders.get(name) or _InProcess(name, work) for name in variants}  # in their order
        if any(isinstance(contender, _InProcess) for contender in contenders.values()):
            work.dataset(1)  # the data's tensors, shared by the in-process variants: no one variant's memory
            if any(name.startswith("gradloop") for name in contenders):
                _ = (
                    work.in_memory
                )  # gradloop's own copy of them, shared by its variants, made before their memory counts
        for name, contender in contenders.items():
            progress(f"warming up {name}")
            contender.plan(max(WARMUP_STEPS, int(contender.warm_up(WARMUP_STEPS) * seconds)))
        rates: dict[str, list[float]] = {name: [] for name in variants}
        limits: list[float] = []
        for r in range(rounds):
            for name in variants if r % 2 == 0 else reversed(variants):  # no variant always runs first
                progress(f"round {r + 1}/{rounds}: {name}")
                rates[name].append(contenders[name].run())
            progress(f"round {r + 1}/{rounds}: the limit")  # in every round, so it sees the same load
            limits.append(limit_flops_per_second(work) / work.flops_per_sample())
        memory = {name: contender.finish() for name, contender in contenders.items()}
    except BaseException:
        for contender in contenders.values():
            contender.close(kill=True)
        raise
    finally:
        if files is not None:
            files.remove()
    for contender in contenders.values():
        contender.close()
    limit = statistics.median(limits)
    results = {name: statistics.median(v) for name, v in rates.items()}
    return {
        "batch_size": work.batch_size,
        "n_train": int(len(work.x)),
        "model": work.describe(),
        "flops_per_sample": work.flops_per_sample(),
        "onednn_kernels": cpu.onednn_kernels(),
        "limit_samples_per_s": limit,
        "limit_of": "matmuls and convolutions" if work.kind == "cnn" else "matmuls",
        "variants": {
            name: {
                "samples_per_s": results[name],
                "all_rounds": rates[name],
                "share_of_limit": results[name] / limit,
                **memory[name],
            }
            for name in variants
        },
        "ratios": paired_ratios(rates),
        "skipped": dict(skipped or {}),
    }


class _InProcess:
    """A variant timed in this process: ``warm_up`` builds and traces it; ``run`` trains its planned steps once."""

    def __init__(self, name: str, work: Workload) -> None:
        self.name, self.work = name, work
        self.peak_rss_mib: float | None = None

    def warm_up(self, steps: int) -> float:
        """Build and trace the variant on ``steps`` batches, then train them again: steps per second."""
        with PeakRSS() as rss:  # building and tracing count towards the variant's memory
            variant = build_variant(self.name, self.work)
            self._train, self._data = variant.run, variant.data
            dataset = self._data(self.work, steps)
            self._train(dataset)
        self._note(rss.mib)
        start = time.perf_counter()
        self._train(dataset)
        return steps / (time.perf_counter() - start)

    def plan(self, steps: int) -> None:
        self.steps, self.dataset = steps, self._data(self.work, steps)  # built once, outside the timing

    def run(self) -> float:
        """Samples per second over the planned steps."""
        with PeakRSS() as rss:
            start = time.perf_counter()
            self._train(self.dataset)
            elapsed = time.perf_counter() - start
        self._note(rss.mib)
        return self.work.samples(self.steps) / elapsed

    def _note(self, mib: float | None) -> None:
        self.peak_rss_mib = mib if self.peak_rss_mib is None or mib is None else max(self.peak_rss_mib, mib)

    def finish(self) -> dict[str, Any]:
        return {"peak_rss_mib": self.peak_rss_mib, "process_peak_rss_mib": None}

    def close(self, *, kill: bool = False) -> None:
        pass


class PeerFiles:
    """The workload as files for the peer processes: the arrays as .npy (not JSON), and the
    initial weights of bench's Keras model, which every peer starts from."""

    def __init__(self, work: Workload) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="gradloop-bench-")
        self.folder = Path(self._folder.name)
        np.save(self.folder / "x.npy", work.x)
        np.save(self.folder / "y.npy", work.y)
        model = work.model()
        np.savez(self.folder / "weights.npz", *model.get_weights())
        self.first_logits = np.asarray(model(work.x[:CHECKED_SAMPLES]))

    def remove(self) -> None:
        self._folder.cleanup()


class PeerProcess:
    """A :mod:`gradloop.bench.peers` process training one peer: ``run`` asks it to train its planned steps."""

    def __init__(self, name: str, work: Workload, files: PeerFiles) -> None:
        self.name = name
        env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}  # the CPU, as every variant
        if name.startswith("keras-jax"):
            env["KERAS_BACKEND"] = "jax"  # read once, when Keras is imported
        request = {"folder": str(files.folder), "workload": work.settings()}
        self.worker = VariantProcess(name, request, module="gradloop.bench.peers", env=env)

    def check(self, expected: np.ndarray) -> None:
        """Wait for its set-up; refuse a peer whose model does not compute bench's Keras model."""
        reply = self.worker.reply()
        self.framework = reply["framework"]
        logits = np.asarray(reply["first_logits"], np.float32)
        if logits.shape != expected.shape or not np.allclose(logits, expected, rtol=1e-3, atol=1e-4):
            worst = np.max(np.abs(logits - expected)) if logits.shape == expected.shape else "n/a"
            raise RuntimeError(
                f"bench's {self.name} peer computes other logits than bench's Keras model from the "
                f"same weights (largest difference {worst}): its model is not the same"
            )

    def warm_up(self, steps: int) -> float:
        self.worker.ask(steps=steps)  # compiles
        timed = self.worker.ask(steps=steps)
        return timed["steps"] / timed["seconds"]

    def plan(self, steps: int) -> None:
        self.steps = steps

    def run(self) -> float:
        timed = self.worker.ask(steps=self.steps)
        return timed["samples"] / timed["seconds"]

    def finish(self) -> dict[str, Any]:
        last = self.worker.finish()
        return {
            "peak_rss_mib": last["added_rss_mib"],
            "process_peak_rss_mib": last["peak_rss_mib"],
            "framework": self.framework,
        }

    def close(self, *, kill: bool = False) -> None:
        self.worker.close(kill=kill)


def paired_ratios(rates: dict[str, list[float]]) -> dict[str, float]:
    """``gradloop / X``: the median over rounds of the two rates measured in that round."""
    ours = rates.get("gradloop")
    if ours is None:
        return {}
    return {f"gradloop / {name}": paired_ratio(ours, theirs) for name, theirs in rates.items() if name != "gradloop"}


def paired_ratio(ours: list[float], theirs: list[float]) -> float:
    """The median over rounds of ``ours[r] / theirs[r]``: two rates measured seconds apart."""
    return statistics.median(a / b for a, b in zip(ours, theirs))


def kernels_named(onednn: bool | None) -> str:
    """TensorFlow's CPU kernels as the tables name them: oneDNN's, Eigen's, or unknown."""
    return "kernels unknown" if onednn is None else f"{cpu.KERNEL_NAMES[onednn]} kernels"


def format_table(result: dict) -> str:
    """``run_bench``'s result as the table ``gradloop bench`` prints."""
    variants = result["variants"]
    width = max(len("variant"), *map(len, variants)) + 2
    lines = [
        f"{result['model']}, batch {result['batch_size']}, {result['n_train']:,} training samples; "
        f"limit {result['limit_samples_per_s']:,.0f} samples/s ({result['flops_per_sample'] / 1e6:.2f} MFLOP/sample "
        f"in {result['limit_of']}); "
        f"{kernels_named(result['onednn_kernels'])}",
        f"{'variant':<{width}}{'samples/s':>10}{'range':>16}{'share of limit':>16}{'peak RSS MiB':>14}"
        f"{'process MiB':>13}{'gradloop is':>13}",
    ]
    for name, v in variants.items():
        low, high = min(v["all_rounds"]), max(v["all_rounds"])
        ratio = result["ratios"].get(f"gradloop / {name}")
        lines.append(
            f"{name:<{width}}{v['samples_per_s']:>10,.0f}{f'{low:,.0f}-{high:,.0f}':>16}"
            f"{v['share_of_limit']:>15.1%}{_mib(v['peak_rss_mib']):>14}"
            f"{_mib(v.get('process_peak_rss_mib'), ''):>13}{'' if ratio is None else f'{ratio:.2f}x':>13}"
        )
    rounds = len(next(iter(variants.values()))["all_rounds"])
    lines.append(
        f"samples/s: median of {rounds} rounds, and the slowest and fastest; gradloop is: median of the "
        f"{rounds} per-round ratios"
    )
    lines.append(
        "peak RSS: above the process as the variant started (this process: TensorFlow, the data and the "
        "variants before it; a peer's: its framework and the data); process: a peer's whole process"
    )
    frameworks: dict[str, list[str]] = {}
    for name, v in variants.items():
        if "framework" in v:
            frameworks.setdefault(v["framework"], []).append(name)
    if frameworks:
        lines.append(
            "peers, each in a process of its own, on the CPU: "
            + "; ".join(f"{', '.join(names)}: {framework}" for framework, names in frameworks.items())
        )
    if result.get("skipped"):
        lines.append("skipped: " + "; ".join(f"{name}: {why}" for name, why in result["skipped"].items()))
    return "\n".join(lines)


def _mib(value: float | None, missing: str = "n/a") -> str:
    return missing if value is None else f"{value:.0f}"
